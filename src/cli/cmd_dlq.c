/* `svccomm dlq stats|list|replay|purge`: the consumer's dead-letter queue (<QUEUE>.dlq) for
 * the operator, safe while consumers run (consumer/dlq.h says how replay keeps every letter).
 * `--json` prints one JSON object for scripts. */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "consumer/dlq.h"
#include "util/error.h"
#include "util/json_out.h"

#define EXCERPT     200 /* body bytes that list shows */
#define STATS_PEEK  1000
#define REASONS_MAX 32

/* Opens the DLQ of QUEUE; prints the reason and returns an exit code on failure. */
static int open_dlq(struct svc_cli_ctx *ctx, struct svc_dlq *q, bool publish)
{
	int rc;

	if (!ctx->config->queue || !*ctx->config->queue) {
		fprintf(stderr, "svccomm: %s: QUEUE: required by %s, not set\n", ctx->settings_path,
		        ctx->cmd->name);
		return SVC_EXIT_USAGE;
	}
	rc = svc_dlq_open(q, ctx->config, publish);

	if (rc == 0)
		return SVC_EXIT_OK;
	fprintf(stderr, "svccomm %s: %s\n", ctx->cmd->name, q->err);
	svc_dlq_close(q);
	return rc == SVC_EINVAL ? SVC_EXIT_USAGE : SVC_EXIT_FAILURE;
}

static int failed(struct svc_cli_ctx *ctx, struct svc_dlq *q)
{
	fprintf(stderr, "svccomm %s: %s\n", ctx->cmd->name, q->err);
	return SVC_EXIT_FAILURE;
}

static void put_text(const char *s, size_t max)
{
	svc_text_put_mem(stdout, s ? s : "-", s ? strlen(s) : 1, max);
}

/* ---- stats ---------------------------------------------------------------------------- */

struct reasons {
	char name[REASONS_MAX][64];
	long n[REASONS_MAX];
	int count;
	long other; /* letters whose reason did not fit in the table */
};

static void count_reason(void *ctx, const struct svc_dlq_letter *l)
{
	struct reasons *r = ctx;
	char name[64];
	int i;

	snprintf(name, sizeof(name), "%s", l->reason ? l->reason : "(none)");
	for (i = 0; i < r->count; i++)
		if (strcmp(r->name[i], name) == 0)
			break;
	if (i == r->count) {
		if (r->count == REASONS_MAX) {
			r->other++;
			return;
		}
		memcpy(r->name[r->count++], name, sizeof(name));
	}
	r->n[i]++;
}

enum { STATS_JSON, N_STATS_OPTS };
static const struct svc_opt stats_opts[N_STATS_OPTS] = {
    [STATS_JSON] = {"json", SVC_OPT_FLAG, NULL, "print one JSON object"},
};

static int run_stats(struct svc_cli_ctx *ctx)
{
	struct reasons r = {0};
	struct svc_dlq q;
	uint32_t n = 0, consumers = 0;
	long seen = 0;
	int rc = open_dlq(ctx, &q, false);

	if (rc != SVC_EXIT_OK)
		return rc;
	if (svc_dlq_counts(&q, &n, &consumers) != 0 ||
	    svc_dlq_browse(&q, STATS_PEEK, 0, count_reason, &r, &seen) != 0) {
		rc = failed(ctx, &q);
		goto out;
	}
	if (ctx->opt[STATS_JSON].set) {
		printf("{\"queue\":");
		svc_json_put_str(stdout, q.name);
		printf(",\"messages\":%u,\"consumers\":%u,\"sampled\":%ld,\"reasons\":{", n,
		       consumers, seen);
		for (int i = 0; i < r.count; i++) {
			printf("%s", i ? "," : "");
			svc_json_put_str(stdout, r.name[i]);
			printf(":%ld", r.n[i]);
		}
		printf("}}\n");
	} else {
		printf("dead-letter queue %s: %u message(s), %u consumer(s)\n", q.name, n,
		       consumers);
		if (seen > 0)
			printf("reasons (of the first %ld):", seen);
		for (int i = 0; i < r.count; i++) {
			printf(" ");
			put_text(r.name[i], 64);
			printf(" %ld", r.n[i]);
		}
		if (seen > 0)
			printf("\n");
	}
	rc = SVC_EXIT_OK;
out:
	svc_dlq_close(&q);
	return rc;
}

static const struct svc_cmd cmd_stats = {
    .name = "dlq stats",
    .run = run_stats,
    .needs = SVC_NEEDS_SETTINGS,
    .summary = "count the dead letters of QUEUE and their reasons",
    .opts = stats_opts,
    .n_opts = N_STATS_OPTS,
    .description =
        "Prints the messages in <QUEUE>.dlq, its consumers, and how many of the first 1000\n"
        "dead letters carry each reason (x-svccomm-reason: handler-error, max-attempts, ...).\n"
        "The letters read to count them are put back where they were.\n",
};

/* ---- list ----------------------------------------------------------------------------- */

enum { LIST_LIMIT, LIST_JSON, N_LIST_OPTS };
static const struct svc_opt list_opts[N_LIST_OPTS] = {
    [LIST_LIMIT] = {"limit", SVC_OPT_INT, "N", "at most N letters (1 to 10000, default 20)",
                    .min = 1, .max = 10000},
    [LIST_JSON] = {"json", SVC_OPT_FLAG, NULL, "print one JSON object"},
};

struct list_out {
	bool json;
	long n;
};

static void letter_json(const struct svc_dlq_letter *l)
{
	const struct svc_delivery *d = l->d;
	size_t ex = d->body_len < EXCERPT ? d->body_len : EXCERPT;

	printf("{\"message_id\":");
	svc_json_put_str(stdout, d->message_id);
	printf(",\"reason\":");
	svc_json_put_str(stdout, l->reason);
	printf(",\"handler\":");
	svc_json_put_str(stdout, l->handler);
	printf(",\"error\":");
	svc_json_put_str(stdout, l->error);
	printf(",\"attempts\":%ld,\"exchange\":", l->attempts);
	svc_json_put_str(stdout, l->exchange);
	printf(",\"routing_key\":");
	svc_json_put_str(stdout, l->routing_key);
	printf(",\"signed\":%s,\"body_truncated\":%s,\"body_bytes\":%llu,\"body_excerpt\":",
	       l->trusted ? "true" : "false", l->truncated ? "true" : "false",
	       (unsigned long long)d->body_size);
	svc_json_put_mem(stdout, d->body, ex);
	printf("}");
}

static void letter_text(const struct svc_dlq_letter *l, long i)
{
	const struct svc_delivery *d = l->d;

	printf("#%ld message_id=", i);
	put_text(d->message_id, 255);
	printf(" reason=");
	put_text(l->reason, 64);
	printf(" attempts=%ld handler=", l->attempts);
	put_text(l->handler, 255);
	printf("\n   origin: exchange ");
	put_text(l->exchange, 255);
	printf(" routing key ");
	put_text(l->routing_key, 255);
	printf("%s\n   error: ", l->trusted ? " (signed)" : " (not signed by svccomm)");
	put_text(l->error, 300);
	printf("\n   body (%llu bytes%s): ", (unsigned long long)d->body_size,
	       l->truncated ? ", cut when dead-lettered" : "");
	svc_text_put_mem(stdout, d->body, d->body_len, EXCERPT);
	printf("\n");
}

static void list_one(void *ctx, const struct svc_dlq_letter *l)
{
	struct list_out *o = ctx;

	if (o->json) {
		printf("%s", o->n ? "," : "");
		letter_json(l);
	} else {
		letter_text(l, o->n + 1);
	}
	o->n++;
}

static int run_list(struct svc_cli_ctx *ctx)
{
	struct list_out o = {.json = ctx->opt[LIST_JSON].set};
	long limit = ctx->opt[LIST_LIMIT].set ? ctx->opt[LIST_LIMIT].num : 20, seen = 0;
	struct svc_dlq q;
	int rc = open_dlq(ctx, &q, false);

	if (rc != SVC_EXIT_OK)
		return rc;
	if (o.json) {
		printf("{\"queue\":");
		svc_json_put_str(stdout, q.name);
		printf(",\"letters\":[");
	}
	/* whole bodies: the signature covers the body */
	rc = svc_dlq_browse(&q, limit, SVC_DLQ_BODY_MAX, list_one, &o, &seen);
	if (o.json)
		printf("]}\n");
	else if (rc == 0 && seen == 0)
		fprintf(stderr, "svccomm dlq list: %s is empty\n", q.name);
	rc = rc ? failed(ctx, &q) : SVC_EXIT_OK;
	svc_dlq_close(&q);
	return rc;
}

static const struct svc_cmd cmd_list = {
    .name = "dlq list",
    .run = run_list,
    .needs = SVC_NEEDS_SETTINGS,
    .summary = "show dead letters: reason, handler, error, attempts, origin, body",
    .opts = list_opts,
    .n_opts = N_LIST_OPTS,
    .description =
        "Prints the first N dead letters of <QUEUE>.dlq: message_id, reason, attempts, the\n"
        "handler and its error, the exchange and routing key the message was first published\n"
        "to (and whether svccomm signed that origin), and the start of the body, bytes that\n"
        "are not printable shown as \\xNN. The letters are put back where they were.\n",
};

/* ---- replay --------------------------------------------------------------------------- */

enum { REPLAY_ALL, REPLAY_ID, REPLAY_TO_EXCHANGE, REPLAY_JSON, N_REPLAY_OPTS };
static const struct svc_opt replay_opts[N_REPLAY_OPTS] = {
    [REPLAY_ALL] = {"all", SVC_OPT_FLAG, NULL, "every dead letter in the queue now"},
    [REPLAY_ID] = {"id", SVC_OPT_TEXT, "ID", "only the dead letter whose message_id is ID"},
    [REPLAY_TO_EXCHANGE] = {"to-exchange", SVC_OPT_TEXT, "E",
                            "publish to exchange E instead of the original one"},
    [REPLAY_JSON] = {"json", SVC_OPT_FLAG, NULL, "print one JSON object"},
};

struct replay_out {
	bool json;
	const char *to; /* --to-exchange, or NULL */
	long kept, found;
	int n_json;
};

static void replay_one(void *ctx, const struct svc_dlq_letter *l, enum svc_dlq_outcome o)
{
	struct replay_out *r = ctx;

	if (o == SVC_DLQ_OTHER_ID)
		return;
	r->found++;
	if (o != SVC_DLQ_REPLAYED)
		r->kept++;
	if (r->json) {
		printf("%s{\"message_id\":", r->n_json++ ? "," : "");
		svc_json_put_str(stdout, l->d->message_id);
		printf(",\"exchange\":");
		svc_json_put_str(stdout, r->to ? r->to : l->exchange);
		printf(",\"routing_key\":");
		svc_json_put_str(stdout, l->routing_key);
		printf(",\"replayed\":%s,\"why\":", o == SVC_DLQ_REPLAYED ? "true" : "false");
		svc_json_put_str(stdout, o == SVC_DLQ_REPLAYED ? NULL : svc_dlq_outcome_text(o));
		printf("}");
		return;
	}
	printf("%s ", o == SVC_DLQ_REPLAYED ? "replayed" : "kept");
	put_text(l->d->message_id, 255);
	if (o == SVC_DLQ_REPLAYED) {
		printf(" to exchange ");
		put_text(r->to ? r->to : l->exchange, 255);
		printf(" routing key ");
		put_text(l->routing_key, 255);
		printf("\n");
	} else {
		printf(": %s\n", svc_dlq_outcome_text(o));
	}
}

static int run_replay(struct svc_cli_ctx *ctx)
{
	const struct svc_optval *opt = ctx->opt;
	const char *id = opt[REPLAY_ID].set ? opt[REPLAY_ID].text : NULL;
	const char *to = opt[REPLAY_TO_EXCHANGE].set ? opt[REPLAY_TO_EXCHANGE].text : NULL;
	struct replay_out r = {.json = opt[REPLAY_JSON].set, .to = to};
	long replayed = 0;
	struct svc_dlq q;
	int rc;

	if (opt[REPLAY_ALL].set == (id != NULL)) {
		fprintf(stderr, "svccomm dlq replay: give --all or --id ID (not both)\n");
		return SVC_EXIT_USAGE;
	}
	if ((rc = open_dlq(ctx, &q, true)) != SVC_EXIT_OK)
		return rc;
	if (r.json) {
		printf("{\"queue\":");
		svc_json_put_str(stdout, q.name);
		printf(",\"letters\":[");
	}
	rc = svc_dlq_replay(&q, id, to, replay_one, &r, &replayed);
	if (r.json)
		printf("],\"replayed\":%ld,\"kept\":%ld,\"error\":", replayed, r.kept);
	if (rc != 0) {
		if (r.json) {
			svc_json_put_str(stdout, q.err);
			printf("}\n");
		}
		fprintf(stderr,
		        "svccomm dlq replay: %s\nsvccomm dlq replay: stopped after %ld replayed; "
		        "the dead letter in flight, if any, is back in %s\n",
		        q.err, replayed, q.name);
		rc = SVC_EXIT_FAILURE;
	} else {
		if (r.json)
			printf("null}\n");
		else
			printf("replayed %ld dead letter(s) from %s, %ld kept there\n", replayed,
			       q.name, r.kept);
		if (id && r.found == 0)
			fprintf(stderr,
			        "svccomm dlq replay: no dead letter with message_id '%s' in %s\n",
			        id, q.name);
		rc = r.kept > 0 || (id && r.found == 0) ? SVC_EXIT_FAILURE : SVC_EXIT_OK;
	}
	svc_dlq_close(&q);
	return rc;
}

static const struct svc_cmd cmd_replay = {
    .name = "dlq replay",
    .run = run_replay,
    .needs = SVC_NEEDS_SETTINGS,
    .summary = "publish dead letters again to their original exchange and routing key",
    .opts = replay_opts,
    .n_opts = N_REPLAY_OPTS,
    .description =
        "Takes the dead letters of <QUEUE>.dlq one at a time (those there when it starts) and\n"
        "publishes each to the exchange and routing key it was first published to (mandatory,\n"
        "with a publisher confirm), with its properties and own headers but without the\n"
        "x-svccomm-* ones, so its handler sees attempt 1 again; the dead letter is acked only\n"
        "once the broker confirmed the copy. If the broker goes away midway nothing is lost:\n"
        "the letter in flight returns to the DLQ (at most that one may be delivered twice).\n"
        "Letters that cannot be replayed stay in the DLQ and are named: not signed by svccomm,\n"
        "no origin, a body cut when dead-lettered, or a copy the broker returned or refused.\n"
        "Fix the handler first, or the letters come back.\n",
    .exit_codes = "Exit codes: 0 every letter asked for was replayed, 1 a letter was kept or\n"
                  "not found or the broker failed (the count replayed is printed), 2 usage or\n"
                  "configuration error.",
};

/* ---- purge ---------------------------------------------------------------------------- */

enum { PURGE_YES, PURGE_JSON, N_PURGE_OPTS };
static const struct svc_opt purge_opts[N_PURGE_OPTS] = {
    [PURGE_YES] = {"yes", SVC_OPT_FLAG, NULL, "really delete them"},
    [PURGE_JSON] = {"json", SVC_OPT_FLAG, NULL, "print one JSON object"},
};

static int run_purge(struct svc_cli_ctx *ctx)
{
	uint32_t purged = 0;
	struct svc_dlq q;
	int rc;

	if (!ctx->opt[PURGE_YES].set) {
		fprintf(stderr,
		        "svccomm dlq purge: deletes every dead letter for good: add --yes\n");
		return SVC_EXIT_USAGE;
	}
	if ((rc = open_dlq(ctx, &q, false)) != SVC_EXIT_OK)
		return rc;
	if (svc_dlq_purge(&q, &purged) != 0) {
		rc = failed(ctx, &q);
	} else {
		if (ctx->opt[PURGE_JSON].set)
			printf("{\"purged\":%u}\n", purged);
		else
			printf("purged %u dead letter(s) from %s\n", purged, q.name);
		rc = SVC_EXIT_OK;
	}
	svc_dlq_close(&q);
	return rc;
}

static const struct svc_cmd cmd_purge = {
    .name = "dlq purge",
    .run = run_purge,
    .needs = SVC_NEEDS_SETTINGS,
    .summary = "delete every dead letter of QUEUE (needs --yes)",
    .opts = purge_opts,
    .n_opts = N_PURGE_OPTS,
    .description = "Deletes the messages ready in <QUEUE>.dlq and prints how many. Without --yes\n"
                   "it refuses (exit 2) and deletes nothing.\n",
};

/* ---- the group ------------------------------------------------------------------------ */

static const struct svc_cmd *const subs[] = {&cmd_stats, &cmd_list, &cmd_replay, &cmd_purge};

const struct svc_cmd svc_cmd_dlq = {
    .name = "dlq",
    .needs = SVC_NEEDS_NOTHING,
    .summary = "the dead-letter queue of QUEUE: stats, list, replay, purge",
    .args = "<command>",
    .description = "Commands on <QUEUE>.dlq, where runconsumer puts the messages it gave up on,\n"
                   "safe while consumers run. `svccomm dlq <command> --help` shows a command's\n"
                   "options.\n",
    .subs = subs,
    .n_subs = (int)(sizeof(subs) / sizeof(subs[0])),
};
