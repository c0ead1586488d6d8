/* `svccomm migrate`: creates or upgrades the outbox and inbox tables (outbox/migrate.c). */
#include <libpq-fe.h>
#include <stdio.h>

#include "cli/cli.h"
#include "outbox/migrate.h"
#include "pg/conn.h"
#include "util/error.h"
#include "util/secret.h"

static int run(struct svc_cli_ctx *ctx)
{
	const struct svc_config *cfg = ctx->config;
	char err[4096], masked[1024];
	PGconn *conn;
	int rc;

	if (!cfg->database_url) {
		fprintf(stderr, "svccomm migrate: %s: DATABASE_URL: required by migrate, not set\n",
		        cfg->path);
		return SVC_EXIT_USAGE;
	}
	conn = svc_pg_open(cfg->database_url, "svccomm migrate", err, sizeof(err));
	if (!conn) {
		fprintf(stderr, "svccomm migrate: cannot connect to %s: %s\n",
		        svc_secret_mask(cfg->database_url, masked, sizeof(masked)), err);
		return SVC_EXIT_FAILURE;
	}
	rc = svc_migrate(conn, cfg->outbox_table, cfg->inbox_table, err, sizeof(err));
	PQfinish(conn);
	if (rc < 0) {
		fprintf(stderr, "svccomm migrate: %s\n", err);
		return SVC_EXIT_FAILURE;
	}
	if (rc > 0)
		printf("migrated: applied %d migration%s to outbox %s and inbox %s\n", rc,
		       rc == 1 ? "" : "s", cfg->outbox_table, cfg->inbox_table);
	else
		printf("migrated: nothing to apply, outbox %s and inbox %s are up to date\n",
		       cfg->outbox_table, cfg->inbox_table);
	return SVC_EXIT_OK;
}

const struct svc_cmd svc_cmd_migrate = {
    .name = "migrate",
    .run = run,
    .needs = SVC_NEEDS_SETTINGS,
    .summary = "create or upgrade the outbox and inbox tables in DATABASE_URL",
    .description =
        "Applies the versioned migrations that are missing to OUTBOX_TABLE and INBOX_TABLE;\n"
        "idempotent and safe to run from several processes at once.\n",
};
