/* `svccomm runconsumer [--workers N]`: consume QUEUE with the loaded apps. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "config/config.h"
#include "consumer/consumer.h"
#include "consumer/supervisor.h"
#include "util/error.h"

#define MAX_WORKERS 256

struct worker_arg {
	struct svc_cli_ctx *ctx;
};

static int worker_main(int worker, void *arg)
{
	struct worker_arg *w = arg;
	return svc_consumer_run(w->ctx->config, w->ctx->rt, worker);
}

static int parse_workers(const char *s, int *out)
{
	char *end;
	errno = 0;
	long n = strtol(s, &end, 10);
	if (errno || end == s || *end || n < 1 || n > MAX_WORKERS)
		return SVC_EINVAL;
	*out = (int)n;
	return 0;
}

int svc_cmd_runconsumer(int argc, char **argv, struct svc_cli_ctx *ctx)
{
	int workers = 1;

	for (int i = 1; i < argc; i++) {
		const char *v = NULL;
		if (strcmp(argv[i], "--workers") == 0) {
			if (i + 1 >= argc) {
				fprintf(stderr, "svccomm runconsumer: --workers needs a number\n");
				return SVC_EXIT_USAGE;
			}
			v = argv[++i];
		} else if (strncmp(argv[i], "--workers=", 10) == 0) {
			v = argv[i] + 10;
		} else {
			fprintf(stderr, "svccomm runconsumer: unexpected argument '%s'\n", argv[i]);
			return SVC_EXIT_USAGE;
		}
		if (parse_workers(v, &workers) != 0) {
			fprintf(stderr,
			        "svccomm runconsumer: --workers: expected a number from 1 to %d, "
			        "got '%s'\n",
			        MAX_WORKERS, v);
			return SVC_EXIT_USAGE;
		}
	}
	if (!ctx->config->queue) {
		fprintf(stderr, "svccomm: %s: QUEUE: required by runconsumer, not set\n",
		        ctx->config->path ? ctx->config->path : "settings.lua");
		return SVC_EXIT_USAGE;
	}
	if (workers == 1)
		return svc_consumer_run(ctx->config, ctx->rt, 0);
	struct worker_arg arg = {.ctx = ctx};
	return svc_supervisor_run(workers, worker_main, &arg);
}
