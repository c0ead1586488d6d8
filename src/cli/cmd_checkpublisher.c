/* `svccomm checkpublisher [--max-queue-size N] [--max-delay S]`: a health check for the relay,
 * for container probes and monitoring. Healthy unless more than N rows (default 0) have been
 * due for longer than S seconds (default 10). Parked rows are reported but do not count: they
 * wait for a person, not for the relay. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "outbox/relay_sql.h"
#include "pg/conn.h"
#include "util/error.h"

static const char usage[] =
    "usage: svccomm [--settings FILE] checkpublisher [--max-queue-size N] [--max-delay S]\n\n"
    "Prints \"publisher healthy\" and exits 0 unless more than N outbox rows (default 0) have\n"
    "been due for longer than S seconds (default 10); then prints the counts and exits 1.\n\n"
    "  --max-queue-size N  rows allowed to be late (integer >= 0)\n"
    "  --max-delay S       seconds a due row may wait before it counts as late (>= 0)\n\n"
    "Exit codes: 0 healthy, 1 unhealthy or the database cannot be reached, 2 usage error.\n";

static int parse_long(const char *s, long *out)
{
	char *end;

	errno = 0;
	*out = strtol(s, &end, 10);
	return errno == 0 && end != s && *end == '\0' && *out >= 0 ? 0 : -1;
}

static int parse_double(const char *s, double *out)
{
	char *end;

	errno = 0;
	*out = strtod(s, &end);
	return errno == 0 && end != s && *end == '\0' && isfinite(*out) && *out >= 0 ? 0 : -1;
}

int svc_cmd_checkpublisher(int argc, char **argv, struct svc_cli_ctx *ctx)
{
	struct svc_relay_sql q;
	struct svc_pg pg;
	long max_size = 0, late = 0, due = 0, parked = 0;
	double max_delay = 10, oldest = 0;
	int rc;

	if (svc_cli_wants_help(argc, argv)) {
		fputs(usage, stdout);
		return SVC_EXIT_OK;
	}
	for (int i = 1; i < argc; i++) {
		const char *opt = argv[i], *val = NULL;
		size_t olen = strcspn(opt, "=");

		if (opt[olen] == '=')
			val = opt + olen + 1;
		else if (i + 1 < argc)
			val = argv[i + 1];
		if (olen == 16 && strncmp(opt, "--max-queue-size", olen) == 0) {
			if (!val || parse_long(val, &max_size) != 0) {
				fprintf(stderr,
				        "svccomm checkpublisher: --max-queue-size: expected "
				        "an integer >= 0\n");
				return SVC_EXIT_USAGE;
			}
		} else if (olen == 11 && strncmp(opt, "--max-delay", olen) == 0) {
			if (!val || parse_double(val, &max_delay) != 0) {
				fprintf(stderr, "svccomm checkpublisher: --max-delay: expected a "
				                "number of seconds >= 0\n");
				return SVC_EXIT_USAGE;
			}
		} else {
			fprintf(stderr, "svccomm checkpublisher: unexpected argument '%s'\n%s", opt,
			        usage);
			return SVC_EXIT_USAGE;
		}
		if (opt[olen] != '=')
			i++;
	}
	if (!ctx->config->database_url || !*ctx->config->database_url) {
		fprintf(stderr, "svccomm: %s: DATABASE_URL: required by checkpublisher, not set\n",
		        ctx->settings_path ? ctx->settings_path : "settings.lua");
		return SVC_EXIT_USAGE;
	}
	if (svc_relay_sql_init(&q, ctx->config->outbox_table) != 0) {
		fprintf(stderr, "svccomm checkpublisher: OUTBOX_TABLE: not a valid table name\n");
		return SVC_EXIT_USAGE;
	}
	svc_pg_init(&pg);
	rc = svc_pg_connect(&pg, ctx->config->database_url, "svccomm-checkpublisher");
	if (rc == 0)
		rc = svc_relay_health(&pg, &q, max_delay, &late, &due, &oldest, &parked);
	if (rc != 0) {
		fprintf(stderr, "svccomm checkpublisher: %s\n", svc_pg_error(&pg));
		rc = SVC_EXIT_FAILURE;
	} else if (late > max_size) {
		printf("publisher unhealthy: %ld row(s) due for more than %g s (allowed %ld); "
		       "%ld due in total, oldest due %.1f s ago, %ld parked\n",
		       late, max_delay, max_size, due, oldest, parked);
		rc = SVC_EXIT_FAILURE;
	} else {
		printf("publisher healthy\n");
		if (parked > 0)
			fprintf(stderr,
			        "svccomm checkpublisher: %ld parked row(s) need attention "
			        "(parked_at IS NOT NULL, see last_error)\n",
			        parked);
		rc = SVC_EXIT_OK;
	}
	svc_pg_release(&pg);
	svc_relay_sql_release(&q);
	return rc;
}
