/* `svccomm runconsumer [--workers N]`: consume QUEUE with the loaded apps. */
#include <stdio.h>

#include "cli/cli.h"
#include "config/config.h"
#include "consumer/consumer.h"
#include "consumer/supervisor.h"
#include "util/error.h"

enum { OPT_WORKERS, N_OPTS };

static const struct svc_opt opts[N_OPTS] = {
    [OPT_WORKERS] = {"workers", SVC_OPT_INT, "N",
                     "run N worker processes under a supervisor (1 to 256, default 1)", .min = 1,
                     .max = 256},
};
_Static_assert(N_OPTS <= SVC_CLI_MAX_OPTS, "too many options");

static int worker_main(int worker, void *arg)
{
	struct svc_cli_ctx *ctx = arg;

	/* Started after a SIGHUP: the handler files (and settings) as they are now. */
	if (svc_supervisor_reloads() > 0) {
		int rc = svc_cli_reload(ctx);
		if (rc != SVC_EXIT_OK)
			return rc;
	}
	return svc_consumer_run(ctx->config, ctx->rt, worker);
}

static int run(struct svc_cli_ctx *ctx)
{
	int workers = ctx->opt[OPT_WORKERS].set ? (int)ctx->opt[OPT_WORKERS].num : 1;

	if (!ctx->config->queue) {
		fprintf(stderr, "svccomm: %s: QUEUE: required by runconsumer, not set\n",
		        ctx->config->path ? ctx->config->path : "settings.lua");
		return SVC_EXIT_USAGE;
	}
	/* /healthz: a handler may hold the loop for HANDLER_TIMEOUT; a minute more is a stall */
	struct svc_cli_metrics m;
	int rc =
	    svc_cli_metrics_start(ctx->config, workers, 60.0 + ctx->config->handler_timeout, &m);
	if (rc != SVC_EXIT_OK)
		return rc;
	if (workers == 1) {
		rc = svc_consumer_run(ctx->config, ctx->rt, 0);
		/* SIGHUP: the batch is committed and acked; start again with the new code. */
		ctx->reexec = svc_consumer_reload != 0;
	} else {
		if (m.http)
			svc_supervisor_metrics(m.http, m.regions + 2, m.regions[1]);
		rc = svc_supervisor_run(workers, worker_main, ctx);
	}
	svc_cli_metrics_stop(&m);
	return rc;
}

const struct svc_cmd svc_cmd_runconsumer = {
    .name = "runconsumer",
    .run = run,
    .needs = SVC_NEEDS_APPS,
    .summary = "consume QUEUE and dispatch each message to the Lua handlers",
    .opts = opts,
    .n_opts = N_OPTS,
    .description =
        "Declares the exchanges, QUEUE, bindings, retry and dead-letter queues, then hands every\n"
        "message to the matching handler of apps/*/consumers.lua inside a database transaction\n"
        "(when DATABASE_URL is set) and acks it after the commit. --workers N runs N workers\n"
        "under a supervisor that restarts a crashed one. SIGTERM/SIGINT: stop taking messages,\n"
        "finish and commit the handler in progress, ack, exit 0 within SHUTDOWN_TIMEOUT.\n"
        "SIGHUP: with --workers, replace the workers one at a time (each commits its batch\n"
        "first; the next is replaced once the new one consumes); without, stop as on SIGTERM\n"
        "and exec the same command line again. Either way new handler code is loaded.\n"
        "With METRICS_ADDRESS set, serves /metrics (Prometheus), /healthz and /readyz there\n"
        "(with --workers, the supervisor serves the sum of its workers).\n",
};
