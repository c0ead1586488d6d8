/* `svccomm devconsumer`: runconsumer for development: one worker, debug logging, and the apps
 * reloaded between two messages when a file changes (consumer/watchfiles.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "config/config.h"
#include "consumer/consumer.h"
#include "util/error.h"
#include "util/log.h"

/* Retry delays of development, when settings.lua gives none: a failing handler comes back
 * while its author is still looking at it. */
static const double dev_retry_delays[] = {1, 2, 5};

/* Development defaults for what the settings left at the production default: LOG_LEVEL debug
 * (unless SVCCOMM_LOG_LEVEL or the file set it) and short RETRY_DELAYS. 0 or SVC_ENOMEM. */
static int dev_defaults(struct svc_config *cfg)
{
	size_t n = sizeof(dev_retry_delays) / sizeof(dev_retry_delays[0]);

	if (cfg->log_level_default)
		svc_log_threshold = SVC_LOG_DEBUG;
	if (cfg->retry_delays_default) {
		double *d = calloc(n, sizeof(*d));
		if (!d)
			return SVC_ENOMEM;
		memcpy(d, dev_retry_delays, sizeof(dev_retry_delays));
		free(cfg->retry_delays);
		cfg->retry_delays = d;
		cfg->n_retry_delays = n;
	}
	return 0;
}

static int run(struct svc_cli_ctx *ctx)
{
	if (!ctx->config->queue) {
		fprintf(stderr, "svccomm: %s: QUEUE: required by devconsumer, not set\n",
		        ctx->config->path ? ctx->config->path : "settings.lua");
		return SVC_EXIT_USAGE;
	}
	if (dev_defaults(ctx->config) != 0) {
		fprintf(stderr, "svccomm: out of memory\n");
		return SVC_EXIT_FAILURE;
	}
	svc_consumer_dev = true;
	int rc = svc_consumer_run(ctx->config, ctx->rt, 0);
	/* settings.lua changed (or SIGHUP): the batch is committed and acked; start again */
	ctx->reexec = svc_consumer_reload != 0;
	return rc;
}

const struct svc_cmd svc_cmd_devconsumer = {
    .name = "devconsumer",
    .run = run,
    .needs = SVC_NEEDS_APPS,
    .summary = "runconsumer for development: reload the apps when a file changes",
    .description =
        "Runs as runconsumer with one worker, LOG_LEVEL debug (unless settings.lua or\n"
        "SVCCOMM_LOG_LEVEL set it) and RETRY_DELAYS of 1, 2 and 5 s (unless settings.lua sets\n"
        "them), and watches settings.lua and every .lua file under the\n"
        "project directory (apps/ and the modules the apps require). When an app file changes\n"
        "(saves within 200 ms count once), the batch in progress is committed and the settings\n"
        "and apps are loaded into a new Lua state, checked as `svccomm check` does (syntax\n"
        "errors, duplicate routes), and put in place of the old one before the next message:\n"
        "the RabbitMQ and PostgreSQL connections stay open and no message is lost or handled\n"
        "twice. One line is logged per reload with the time it took. If the new code does not\n"
        "load, the old code keeps running and the error is logged with file:line. When\n"
        "settings.lua changes and validates, devconsumer stops as on SIGTERM and execs itself\n"
        "again (new connections, topology declared again); settings that do not validate are\n"
        "ignored and the reason logged. Not for production: use runconsumer.\n",
};
