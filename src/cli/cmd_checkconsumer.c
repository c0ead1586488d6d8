/* `svccomm checkconsumer [--min-consumers N] [--max-ready N] [--max-dlq N] [--json]`: a health
 * check of the consumer side from outside, for hosts without HTTP probes: QUEUE exists, enough
 * consumers read it, not too many messages wait in it or in its dead-letter queue. One short
 * AMQP connection, passive declarations only: it changes nothing. The exit codes follow
 * checkpublisher: a broker that cannot be reached is "unknown" (3), not "unhealthy" (1). */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "amqp/conn.h"
#include "cli/cli.h"
#include "consumer/consumer.h"
#include "util/error.h"
#include "util/json_out.h"

enum { OPT_MIN_CONSUMERS, OPT_MAX_READY, OPT_MAX_DLQ, OPT_JSON, N_OPTS };

static const struct svc_opt opts[N_OPTS] = {
    [OPT_MIN_CONSUMERS] = {"min-consumers", SVC_OPT_INT, "N",
                           "consumers QUEUE needs at least (integer >= 0, default 1)", .min = 0,
                           .max = LONG_MAX},
    [OPT_MAX_READY] = {"max-ready", SVC_OPT_INT, "N",
                       "messages allowed to wait in QUEUE (integer >= 0, default: any)", .min = 0,
                       .max = LONG_MAX},
    [OPT_MAX_DLQ] = {"max-dlq", SVC_OPT_INT, "N",
                     "dead letters allowed in <QUEUE>.dlq (integer >= 0, default: any)", .min = 0,
                     .max = LONG_MAX},
    [OPT_JSON] = {"json", SVC_OPT_FLAG, NULL, "print one JSON object"},
};
_Static_assert(N_OPTS <= SVC_CLI_MAX_OPTS, "too many options");

/* What was found; -1: not known (the queue is missing). */
struct found {
	long ready, consumers, dlq;
	bool queue_exists, dlq_exists;
	char problems[4][320];
	int n_problems;
};

static void problem(struct found *f, const char *text)
{
	if (f->n_problems < 4)
		snprintf(f->problems[f->n_problems++], sizeof(f->problems[0]), "%s", text);
}

/* Passive declaration of queue: 1 found (counts set), 0 missing, or a negative code. */
static int counts(struct svc_amqp *c, const char *queue, long *ready, long *consumers)
{
	uint32_t m = 0, n = 0;
	int rc = svc_amqp_queue_counts(c, queue, &m, &n);

	if (rc == SVC_EPROTO && svc_amqp_reply_code(c) == 404)
		return 0;
	if (rc)
		return rc;
	*ready = m;
	*consumers = n;
	return 1;
}

static void print_json(const struct svc_cli_ctx *ctx, const char *dlq, const struct found *f,
                       const char *error)
{
	printf("{\"queue\":");
	svc_json_put_str(stdout, ctx->config->queue);
	printf(",\"healthy\":%s", error ? "null" : f->n_problems ? "false" : "true");
	if (error) {
		printf(",\"error\":");
		svc_json_put_str(stdout, error);
		printf("}\n");
		return;
	}
	printf(",\"queue_exists\":%s,\"ready\":%ld,\"consumers\":%ld,\"dlq\":",
	       f->queue_exists ? "true" : "false", f->ready, f->consumers);
	svc_json_put_str(stdout, dlq);
	printf(",\"dlq_exists\":%s,\"dead_letters\":%ld,\"problems\":[",
	       f->dlq_exists ? "true" : "false", f->dlq);
	for (int i = 0; i < f->n_problems; i++) {
		printf("%s", i ? "," : "");
		svc_json_put_str(stdout, f->problems[i]);
	}
	printf("]}\n");
}

static int run(struct svc_cli_ctx *ctx)
{
	const struct svc_optval *opt = ctx->opt;
	long min_consumers = opt[OPT_MIN_CONSUMERS].set ? opt[OPT_MIN_CONSUMERS].num : 1;
	bool json = opt[OPT_JSON].set;
	struct found f = {.ready = -1, .consumers = -1, .dlq = -1};
	char dlq[260], text[320], name[320];
	struct svc_amqp *c;
	int rc;

	if (!ctx->config->queue || !*ctx->config->queue) {
		fprintf(stderr, "svccomm: %s: QUEUE: required by checkconsumer, not set\n",
		        ctx->settings_path);
		return SVC_EXIT_USAGE;
	}
	if (svc_consumer_dlq_name(ctx->config->queue, dlq, sizeof(dlq)) != 0) {
		fprintf(stderr, "svccomm checkconsumer: QUEUE: too long\n");
		return SVC_EXIT_USAGE;
	}
	if (!(c = svc_amqp_new())) {
		fprintf(stderr, "svccomm checkconsumer: out of memory\n");
		return SVC_EXIT_FAILURE;
	}
	svc_amqp_set_tls(c, &ctx->config->broker_tls);
	snprintf(name, sizeof(name), "svccomm checkconsumer %s", ctx->config->queue);
	rc = svc_amqp_connect(c, ctx->config->broker_url, (int)ctx->config->heartbeat, name);
	if (rc == 0 && (rc = counts(c, ctx->config->queue, &f.ready, &f.consumers)) >= 0) {
		f.queue_exists = rc == 1;
		rc = counts(c, dlq, &f.dlq, &(long){0});
		f.dlq_exists = rc == 1;
		if (!f.dlq_exists)
			f.dlq = 0;
	}
	if (rc < 0) {
		if (json)
			print_json(ctx, dlq, &f, svc_amqp_error(c));
		fprintf(stderr, "svccomm checkconsumer: cannot check: %s\n", svc_amqp_error(c));
		rc = SVC_EXIT_UNREACHABLE;
		goto out;
	}
	if (!f.queue_exists) {
		snprintf(text, sizeof(text), "queue %.255s does not exist", ctx->config->queue);
		problem(&f, text);
	} else {
		if (f.consumers < min_consumers) {
			snprintf(text, sizeof(text), "%ld consumer(s), at least %ld wanted",
			         f.consumers, min_consumers);
			problem(&f, text);
		}
		if (opt[OPT_MAX_READY].set && f.ready > opt[OPT_MAX_READY].num) {
			snprintf(text, sizeof(text), "%ld message(s) ready, at most %ld allowed",
			         f.ready, opt[OPT_MAX_READY].num);
			problem(&f, text);
		}
	}
	if (opt[OPT_MAX_DLQ].set && f.dlq > opt[OPT_MAX_DLQ].num) {
		snprintf(text, sizeof(text), "%ld dead letter(s), at most %ld allowed", f.dlq,
		         opt[OPT_MAX_DLQ].num);
		problem(&f, text);
	}
	if (json) {
		print_json(ctx, dlq, &f, NULL);
	} else {
		printf(
		    "consumer %s: queue %s: %ld ready, %ld consumer(s); %s: %ld dead letter(s)\n",
		    f.n_problems ? "unhealthy" : "healthy", ctx->config->queue, f.ready,
		    f.consumers, dlq, f.dlq);
		for (int i = 0; i < f.n_problems; i++)
			printf("  %s\n", f.problems[i]);
	}
	rc = f.n_problems ? SVC_EXIT_FAILURE : SVC_EXIT_OK;
out:
	svc_amqp_close(c);
	svc_amqp_free(c);
	return rc;
}

const struct svc_cmd svc_cmd_checkconsumer = {
    .name = "checkconsumer",
    .run = run,
    .needs = SVC_NEEDS_SETTINGS,
    .summary = "exit 1 when QUEUE is missing, unconsumed or backed up (health check)",
    .opts = opts,
    .n_opts = N_OPTS,
    .description =
        "Connects to the broker and reads, without changing anything, the messages ready in\n"
        "QUEUE, its consumers and the messages in <QUEUE>.dlq. Prints \"consumer healthy\"\n"
        "and exits 0 unless QUEUE does not exist, has fewer than N consumers (default 1), or\n"
        "more messages ready or dead letters than --max-ready / --max-dlq allow (not checked\n"
        "unless given); then prints \"consumer unhealthy\", the counts and each problem, and\n"
        "exits 1.\n",
    .exit_codes =
        "Exit codes: 0 healthy, 1 unhealthy, 2 usage or configuration error, 3 the broker\n"
        "cannot be reached (health unknown).",
};
