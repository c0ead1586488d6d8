/* `svccomm checkpublisher [--max-queue-size N] [--max-delay S] [--max-parked P] [--json]`: a health
 * check for the relay, for container probes and monitoring. Healthy unless more than N rows
 * (default 0) have been due for longer than S seconds (default 10), or more than P rows
 * (default 0) are parked: a parked row is an event that is not being delivered, and waits for
 * a person. A database that cannot be reached has its own exit code (3): the health of the
 * relay is then unknown, which a probe may want to treat differently. */
#include <limits.h>
#include <stdio.h>

#include "cli/cli.h"
#include "outbox/relay_sql.h"
#include "pg/conn.h"
#include "util/error.h"
#include "util/json_out.h"

enum { OPT_MAX_QUEUE_SIZE, OPT_MAX_DELAY, OPT_MAX_PARKED, OPT_JSON, N_OPTS };

static const struct svc_opt opts[N_OPTS] = {
    [OPT_MAX_QUEUE_SIZE] = {"max-queue-size", SVC_OPT_INT, "N",
                            "rows allowed to be late (integer >= 0, default 0)", .min = 0,
                            .max = LONG_MAX},
    [OPT_MAX_DELAY] = {"max-delay", SVC_OPT_SECONDS, "S",
                       "seconds a due row may wait before it counts as late (>= 0, default 10)"},
    [OPT_MAX_PARKED] = {"max-parked", SVC_OPT_INT, "P",
                        "parked rows allowed (integer >= 0, default 0)", .min = 0, .max = LONG_MAX},
    [OPT_JSON] = {"json", SVC_OPT_FLAG, NULL, "print one JSON object"},
};
_Static_assert(N_OPTS <= SVC_CLI_MAX_OPTS, "too many options");

static int run(struct svc_cli_ctx *ctx)
{
	const struct svc_optval *opt = ctx->opt;
	long max_size = opt[OPT_MAX_QUEUE_SIZE].set ? opt[OPT_MAX_QUEUE_SIZE].num : 0;
	double max_delay = opt[OPT_MAX_DELAY].set ? opt[OPT_MAX_DELAY].seconds : 10;
	long max_parked = opt[OPT_MAX_PARKED].set ? opt[OPT_MAX_PARKED].num : 0;
	long late = 0, due = 0, parked = 0;
	double oldest = 0;
	struct svc_relay_sql q;
	struct svc_pg pg;
	int rc;

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
	if (opt[OPT_JSON].set) {
		printf("{\"table\":");
		svc_json_put_str(stdout, ctx->config->outbox_table);
		if (rc != 0) {
			printf(",\"healthy\":null,\"error\":");
			svc_json_put_str(stdout, svc_pg_error(&pg));
		} else {
			printf(
			    ",\"healthy\":%s,\"late\":%ld,\"due\":%ld,\"oldest_due_seconds\":%.3f,"
			    "\"parked\":%ld,\"max_queue_size\":%ld,\"max_delay\":%g,\"max_parked\":"
			    "%ld",
			    late > max_size || parked > max_parked ? "false" : "true", late, due,
			    oldest, parked, max_size, max_delay, max_parked);
		}
		printf("}\n");
	}
	if (rc != 0) {
		fprintf(stderr, "svccomm checkpublisher: cannot check: %s\n", svc_pg_error(&pg));
		rc = SVC_EXIT_UNREACHABLE;
	} else if (opt[OPT_JSON].set) {
		rc = late > max_size || parked > max_parked ? SVC_EXIT_FAILURE : SVC_EXIT_OK;
	} else if (late > max_size || parked > max_parked) {
		printf("publisher unhealthy: %ld row(s) due for more than %g s (allowed %ld); "
		       "%ld due in total, oldest due %.1f s ago, %ld parked (allowed %ld)\n",
		       late, max_delay, max_size, due, oldest, parked, max_parked);
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

const struct svc_cmd svc_cmd_checkpublisher = {
    .name = "checkpublisher",
    .run = run,
    .needs = SVC_NEEDS_SETTINGS,
    .summary = "exit 1 when outbox rows wait too long or are parked (health check)",
    .opts = opts,
    .n_opts = N_OPTS,
    .description =
        "Prints \"publisher healthy\" and exits 0 unless more than N outbox rows (default 0) have\n"
        "been due for longer than S seconds (default 10) or more than P rows (default 0) are\n"
        "parked (they are not delivered and wait for a person); then prints the counts and\n"
        "exits 1. With --json it prints one object instead: healthy, late, due,\n"
        "oldest_due_seconds, parked and the limits (healthy null and error when the database\n"
        "cannot be read).\n",
    .exit_codes =
        "Exit codes: 0 healthy, 1 unhealthy, 2 usage or configuration error, 3 the database\n"
        "cannot be reached or the outbox table read (health unknown).",
};
