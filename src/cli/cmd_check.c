/* `svccomm check [--connect]`: validates settings and apps and prints the topology and routing
 * table. With --connect it also contacts both servers: the outbox (and inbox) migrations are
 * applied, the inbox's size and oldest row, and whether each exchange and QUEUE exists or will
 * be declared. Without it no server is contacted, so it runs in CI and on a laptop. */
#include <lua.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "amqp/nodes.h"
#include "config/config.h"
#include "consumer/consumer.h"
#include "lua/runtime.h"
#include "outbox/migrate.h"
#include "pg/conn.h"
#include "util/error.h"

enum { OPT_CONNECT, N_OPTS };

static const struct svc_opt opts[N_OPTS] = {
    [OPT_CONNECT] = {"connect", SVC_OPT_FLAG, NULL,
                     "also connect: check migrations, the inbox, exchanges and QUEUE"},
};
_Static_assert(N_OPTS <= SVC_CLI_MAX_OPTS, "too many options");

/* The database part of --connect; an SVC_EXIT_* code. */
static int check_database(const struct svc_config *cfg)
{
	const char *inbox = cfg->inbox ? cfg->inbox_table : NULL;
	char list[512], err[1024];
	struct svc_pg pg;
	int rc = SVC_EXIT_OK, n;

	if (!cfg->database_url) {
		printf("  database: DATABASE_URL not set (no outbox, no transactions)\n");
		return SVC_EXIT_OK;
	}
	svc_pg_init(&pg);
	if (svc_pg_connect(&pg, cfg->database_url, "svccomm-check") != 0) {
		printf("  database: cannot connect: %s\n", svc_pg_error(&pg));
		svc_pg_release(&pg);
		return SVC_EXIT_UNREACHABLE;
	}
	printf("  database: connected\n");
	n = svc_migrate_pending(pg.conn, cfg->outbox_table, inbox, list, sizeof(list), err,
	                        sizeof(err));
	if (n < 0) {
		printf("  migrations: cannot read: %s\n", err);
		rc = SVC_EXIT_FAILURE;
	} else if (n > 0) {
		printf("  migrations: %d not applied (%s): run `svccomm migrate`\n", n, list);
		rc = SVC_EXIT_FAILURE;
	} else {
		printf("  migrations: up to date for %s%s%s\n", cfg->outbox_table,
		       inbox ? " and " : "", inbox ? inbox : "");
	}
	if (inbox && n == 0) {
		double rows, oldest;

		if (svc_consumer_inbox_stats(pg.conn, inbox, &rows, &oldest, err, sizeof(err)) !=
		    0) {
			printf("  inbox: cannot read: %s\n", err);
			rc = SVC_EXIT_FAILURE;
		} else {
			printf("  inbox: about %.0f rows, oldest %.0f s old (INBOX_RETENTION %.0f "
			       "s)\n",
			       rows < 0 ? 0 : rows, oldest, cfg->inbox_retention);
		}
	}
	svc_pg_release(&pg);
	return rc;
}

/* One passive declare, reported; 1 when the name is missing, 0 when it exists, -1 when the
 * connection failed. */
static int report_exists(struct svc_amqp *mq, const struct svc_config *cfg, const char *kind,
                         const char *name, const char *type)
{
	struct svc_amqp_exchange ex = {name, type};
	int rc = type ? svc_amqp_declare_exchange(mq, &ex, true)
	              : svc_amqp_declare_queue(mq, name, amqp_empty_table, true);

	if (rc == 0) {
		printf("  %s '%s': exists\n", kind, name);
		return 0;
	}
	if (rc != SVC_EPROTO) {
		printf("  %s '%s': %s\n", kind, name, svc_amqp_error(mq));
		return -1;
	}
	printf("  %s '%s': missing: %s\n", kind, name,
	       cfg->do_not_declare ? "DO_NOT_DECLARE is set, runconsumer will refuse to start"
	                           : "declared by runconsumer at start");
	return 1;
}

/* The broker part of --connect; an SVC_EXIT_* code. */
static int check_broker(const struct svc_config *cfg)
{
	struct svc_amqp *mq = svc_amqp_new();
	struct svc_amqp_nodes nodes;
	int rc = SVC_EXIT_OK, missing = 0, r = 0;
	char err[600];

	if (!mq)
		return SVC_EXIT_FAILURE;
	if (svc_amqp_nodes_init(&nodes, (const char *const *)cfg->broker_urls, cfg->n_broker_urls,
	                        err, sizeof(err)) != 0) {
		printf("  broker: %s\n", err);
		svc_amqp_free(mq);
		return SVC_EXIT_USAGE;
	}
	if (cfg->broker_shuffle)
		svc_amqp_nodes_shuffle(&nodes, (unsigned)getpid() ^ (unsigned)time(NULL));
	svc_amqp_set_tls(mq, &cfg->broker_tls);
	if (svc_amqp_nodes_connect(&nodes, mq, (int)cfg->heartbeat, "svccomm check") != 0) {
		printf("  broker: cannot connect: %s\n", svc_amqp_error(mq));
		svc_amqp_nodes_release(&nodes);
		svc_amqp_free(mq);
		return SVC_EXIT_UNREACHABLE;
	}
	svc_amqp_nodes_release(&nodes);
	printf("  broker: connected to node %s\n", svc_amqp_node(mq));
	for (size_t i = 0; i < cfg->n_exchanges && r >= 0; i++) {
		r = report_exists(mq, cfg, "exchange", cfg->exchanges[i].name,
		                  cfg->exchanges[i].type);
		missing += r > 0;
	}
	if (cfg->queue && r >= 0) {
		r = report_exists(mq, cfg, "queue", cfg->queue, NULL);
		missing += r > 0;
	}
	/* AMQP cannot list bindings: runconsumer declares them (idempotent) at every start */
	if (cfg->n_binds && r >= 0)
		printf("  bindings: %zu, %s\n", cfg->n_binds,
		       cfg->do_not_declare
		           ? "not declared (DO_NOT_DECLARE): check them on the broker"
		           : "declared by runconsumer at start");
	if (r < 0)
		rc = SVC_EXIT_UNREACHABLE;
	else if (missing && cfg->do_not_declare)
		rc = SVC_EXIT_FAILURE;
	svc_amqp_free(mq);
	return rc;
}

/* The report is built by svccomm.host (Lua), which has the router's registrations at hand. */
static int run(struct svc_cli_ctx *ctx)
{
	lua_State *L = svc_runtime_state(ctx->rt);
	char err[4096];
	int db, mq;

	if (svc_runtime_require(ctx->rt, "svccomm.host", err, sizeof(err)) != 0) {
		fprintf(stderr, "svccomm check: %s\n", err);
		return SVC_EXIT_FAILURE;
	}
	lua_getfield(L, -1, "check_report");
	lua_remove(L, -2);
	if (svc_lua_pcall(ctx->rt, 0, 1, 0) != SVC_LUA_OK) {
		svc_lua_error_text(L, err, sizeof(err));
		fprintf(stderr, "svccomm check: %s\n", err);
		return SVC_EXIT_FAILURE;
	}
	fputs(lua_tostring(L, -1), stdout);
	lua_pop(L, 1);
	if (!ctx->opt[OPT_CONNECT].set)
		return SVC_EXIT_OK;
	printf("\nServers (--connect):\n");
	db = check_database(ctx->config);
	mq = check_broker(ctx->config);
	fflush(stdout);
	/* the worst outcome: unreachable (3) over not ready (1) */
	if (db == SVC_EXIT_UNREACHABLE || mq == SVC_EXIT_UNREACHABLE)
		return SVC_EXIT_UNREACHABLE;
	return db != SVC_EXIT_OK ? db : mq;
}

const struct svc_cmd svc_cmd_check = {
    .name = "check",
    .run = run,
    .needs = SVC_NEEDS_APPS,
    .summary = "load settings and apps; print the topology and routing table",
    .opts = opts,
    .n_opts = N_OPTS,
    .description =
        "Validates settings.lua, loads every app and prints the exchanges, queue, bindings and\n"
        "the routing table (exchange, routing key pattern, handler). Passwords are masked.\n"
        "No server is contacted unless --connect is given: it then connects to both, checks\n"
        "that the outbox (and inbox) migrations are applied, prints the inbox's size and the\n"
        "age of its oldest row, and whether each exchange and QUEUE exists or will be\n"
        "declared by runconsumer.\n",
    .exit_codes = "Exit codes: 0 success, 1 runtime failure or (--connect) migrations not\n"
                  "applied or objects missing under DO_NOT_DECLARE, 2 usage or configuration\n"
                  "error, 3 (--connect) a server cannot be reached.",
};
