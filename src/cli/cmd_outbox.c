/* `svccomm outbox stats|list|unpark|cancel`: the operator's view of the outbox table and the
 * chores on it, safe beside running relays (outbox/ops.h says why). One connection to
 * DATABASE_URL, one statement per step; `--json` prints one JSON object for scripts. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "outbox/ops.h"
#include "outbox/write.h"
#include "pg/conn.h"
#include "util/error.h"
#include "util/json_out.h"

/* Connects to DATABASE_URL. Returns SVC_EXIT_OK, or an exit code with the reason printed. */
static int connect_db(struct svc_cli_ctx *ctx, struct svc_pg *pg)
{
	svc_pg_init(pg);
	if (!ctx->config->database_url || !*ctx->config->database_url) {
		fprintf(stderr, "svccomm: %s: DATABASE_URL: required by %s, not set\n",
		        ctx->settings_path, ctx->cmd->name);
		return SVC_EXIT_USAGE;
	}
	if (svc_pg_connect(pg, ctx->config->database_url, "svccomm-outbox") != 0) {
		fprintf(stderr, "svccomm %s: %s\n", ctx->cmd->name, svc_pg_error(pg));
		svc_pg_release(pg);
		return SVC_EXIT_FAILURE;
	}
	return SVC_EXIT_OK;
}

/* Prints the statement's failure; SVC_EINVAL (bad OUTBOX_TABLE) is a configuration error. */
static int failed(struct svc_cli_ctx *ctx, struct svc_pg *pg, int rc)
{
	fprintf(stderr, "svccomm %s: %s\n", ctx->cmd->name, svc_pg_error(pg));
	return rc == SVC_EINVAL ? SVC_EXIT_USAGE : SVC_EXIT_FAILURE;
}

static long num(const PGresult *res, int row, int col)
{
	return strtol(PQgetvalue(res, row, col), NULL, 10);
}

/* A text column as a JSON value (NULL: null). */
static void json_col(const PGresult *res, int row, int col)
{
	svc_json_put_str(stdout, PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col));
}

/* ---- stats ---------------------------------------------------------------------------- */

enum { STATS_JSON, N_STATS_OPTS };
static const struct svc_opt stats_opts[N_STATS_OPTS] = {
    [STATS_JSON] = {"json", SVC_OPT_FLAG, NULL, "print one JSON object"},
};

static int run_stats(struct svc_cli_ctx *ctx)
{
	struct svc_outbox_stats st = {0};
	PGresult *top = NULL;
	struct svc_pg pg;
	int rc = connect_db(ctx, &pg), n;

	if (rc != SVC_EXIT_OK)
		return rc;
	rc = svc_outbox_ops_stats(&pg, ctx->config->outbox_table, &st, &top);
	if (rc != 0) {
		rc = failed(ctx, &pg, rc);
		goto out;
	}
	n = PQntuples(top);
	if (ctx->opt[STATS_JSON].set) {
		printf("{\"table\":");
		svc_json_put_str(stdout, ctx->config->outbox_table);
		printf(",\"due\":%ld,\"scheduled\":%ld,\"parked\":%ld,\"oldest_due_seconds\":%.3f,"
		       "\"aggregates\":[",
		       st.due, st.scheduled, st.parked, st.oldest_due);
		for (int i = 0; i < n; i++) {
			printf("%s{\"aggregate\":", i ? "," : "");
			json_col(top, i, SVC_OUTBOX_TOP_EXCHANGE);
			printf(
			    ",\"due\":%ld,\"scheduled\":%ld,\"parked\":%ld,\"total\":%ld}",
			    num(top, i, SVC_OUTBOX_TOP_DUE), num(top, i, SVC_OUTBOX_TOP_SCHEDULED),
			    num(top, i, SVC_OUTBOX_TOP_PARKED), num(top, i, SVC_OUTBOX_TOP_TOTAL));
		}
		printf("]}\n");
	} else {
		printf("outbox %s: %ld due (oldest due %.1f s ago), %ld scheduled, %ld parked\n",
		       ctx->config->outbox_table, st.due, st.oldest_due, st.scheduled, st.parked);
		if (n > 0)
			printf("%-32s %9s %9s %9s %9s\n", "aggregate", "due", "scheduled", "parked",
			       "total");
		for (int i = 0; i < n; i++) {
			const char *ex = PQgetvalue(top, i, SVC_OUTBOX_TOP_EXCHANGE);

			svc_text_put_mem(stdout, ex, strlen(ex), 32);
			printf(
			    "%*s %9ld %9ld %9ld %9ld\n", strlen(ex) < 32 ? 32 - (int)strlen(ex) : 0,
			    "", num(top, i, SVC_OUTBOX_TOP_DUE),
			    num(top, i, SVC_OUTBOX_TOP_SCHEDULED),
			    num(top, i, SVC_OUTBOX_TOP_PARKED), num(top, i, SVC_OUTBOX_TOP_TOTAL));
		}
	}
	rc = SVC_EXIT_OK;
out:
	PQclear(top);
	svc_pg_release(&pg);
	return rc;
}

static const struct svc_cmd cmd_stats = {
    .name = "outbox stats",
    .run = run_stats,
    .needs = SVC_NEEDS_SETTINGS,
    .summary = "count due, scheduled and parked outbox rows, per aggregate",
    .opts = stats_opts,
    .n_opts = N_STATS_OPTS,
    .description =
        "Prints the rows of the outbox table (OUTBOX_TABLE) that are due (the relay's\n"
        "backlog) with the age of the oldest, scheduled (send_after in the future) and parked\n"
        "(set aside by the relay, waiting for a person), then the 10 aggregates (exchanges)\n"
        "with the most rows.\n",
};

/* ---- list ----------------------------------------------------------------------------- */

enum { LIST_PARKED, LIST_AGGREGATE, LIST_LIMIT, LIST_JSON, N_LIST_OPTS };
static const struct svc_opt list_opts[N_LIST_OPTS] = {
    [LIST_PARKED] = {"parked", SVC_OPT_FLAG, NULL, "only parked rows"},
    [LIST_AGGREGATE] = {"aggregate", SVC_OPT_TEXT, "A", "only rows of aggregate (exchange) A"},
    [LIST_LIMIT] = {"limit", SVC_OPT_INT, "N", "at most N rows (1 to 100000, default 50)", .min = 1,
                    .max = 100000},
    [LIST_JSON] = {"json", SVC_OPT_FLAG, NULL, "print one JSON object"},
};

static void list_json(const PGresult *res)
{
	int n = PQntuples(res);

	printf("{\"rows\":[");
	for (int i = 0; i < n; i++) {
		printf("%s{\"id\":%s,\"state\":", i ? "," : "",
		       PQgetvalue(res, i, SVC_OUTBOX_LIST_ID));
		json_col(res, i, SVC_OUTBOX_LIST_STATE);
		printf(",\"aggregate\":");
		json_col(res, i, SVC_OUTBOX_LIST_EXCHANGE);
		printf(",\"event_type\":");
		json_col(res, i, SVC_OUTBOX_LIST_ROUTING_KEY);
		printf(",\"created_at\":");
		json_col(res, i, SVC_OUTBOX_LIST_CREATED);
		printf(",\"send_after\":");
		json_col(res, i, SVC_OUTBOX_LIST_SEND_AFTER);
		printf(",\"parked_at\":");
		json_col(res, i, SVC_OUTBOX_LIST_PARKED_AT);
		printf(",\"attempts\":%ld,\"last_error\":", num(res, i, SVC_OUTBOX_LIST_ATTEMPTS));
		json_col(res, i, SVC_OUTBOX_LIST_LAST_ERROR);
		printf(",\"body_excerpt\":");
		json_col(res, i, SVC_OUTBOX_LIST_BODY);
		printf(",\"body_bytes\":%ld}", num(res, i, SVC_OUTBOX_LIST_BODY_LEN));
	}
	printf("]}\n");
}

static void put_col(const PGresult *res, int row, int col, size_t max)
{
	const char *v = PQgetvalue(res, row, col);

	svc_text_put_mem(stdout, v, strlen(v), max);
}

static void list_text(const PGresult *res)
{
	int n = PQntuples(res);

	for (int i = 0; i < n; i++) {
		printf("%s %s ", PQgetvalue(res, i, SVC_OUTBOX_LIST_ID),
		       PQgetvalue(res, i, SVC_OUTBOX_LIST_STATE));
		put_col(res, i, SVC_OUTBOX_LIST_EXCHANGE, 255);
		fputc(' ', stdout);
		put_col(res, i, SVC_OUTBOX_LIST_ROUTING_KEY, 255);
		printf(" send_after=%s attempts=%s", PQgetvalue(res, i, SVC_OUTBOX_LIST_SEND_AFTER),
		       PQgetvalue(res, i, SVC_OUTBOX_LIST_ATTEMPTS));
		if (!PQgetisnull(res, i, SVC_OUTBOX_LIST_PARKED_AT))
			printf(" parked_at=%s", PQgetvalue(res, i, SVC_OUTBOX_LIST_PARKED_AT));
		if (!PQgetisnull(res, i, SVC_OUTBOX_LIST_LAST_ERROR)) {
			printf(" error=");
			put_col(res, i, SVC_OUTBOX_LIST_LAST_ERROR, 200);
		}
		printf(" body=");
		put_col(res, i, SVC_OUTBOX_LIST_BODY, 80);
		fputc('\n', stdout);
	}
	if (n == 0)
		fprintf(stderr, "svccomm outbox list: no rows\n");
}

static int run_list(struct svc_cli_ctx *ctx)
{
	const struct svc_optval *o = ctx->opt;
	PGresult *res = NULL;
	struct svc_pg pg;
	int rc = connect_db(ctx, &pg);

	if (rc != SVC_EXIT_OK)
		return rc;
	rc = svc_outbox_ops_list(&pg, ctx->config->outbox_table, o[LIST_PARKED].set,
	                         o[LIST_AGGREGATE].set ? o[LIST_AGGREGATE].text : NULL,
	                         o[LIST_LIMIT].set ? o[LIST_LIMIT].num : 50, &res);
	if (rc != 0) {
		rc = failed(ctx, &pg, rc);
	} else {
		if (o[LIST_JSON].set)
			list_json(res);
		else
			list_text(res);
		rc = SVC_EXIT_OK;
	}
	PQclear(res);
	svc_pg_release(&pg);
	return rc;
}

static const struct svc_cmd cmd_list = {
    .name = "outbox list",
    .run = run_list,
    .needs = SVC_NEEDS_SETTINGS,
    .summary = "list outbox rows (id, state, aggregate, event type, attempts, last error)",
    .opts = list_opts,
    .n_opts = N_LIST_OPTS,
    .description =
        "Prints the rows of the outbox table in id order, one line each: id, state (due,\n"
        "scheduled or parked), aggregate (exchange), event type (routing key), send_after,\n"
        "attempts, parked_at and last_error when set, and the start of the body. Bytes that\n"
        "are not printable are shown as \\xNN.\n",
};

/* ---- unpark --------------------------------------------------------------------------- */

enum { UNPARK_ALL, UNPARK_JSON, N_UNPARK_OPTS };
static const struct svc_opt unpark_opts[N_UNPARK_OPTS] = {
    [UNPARK_ALL] = {"all", SVC_OPT_FLAG, NULL, "every parked row"},
    [UNPARK_JSON] = {"json", SVC_OPT_FLAG, NULL, "print one JSON object"},
};

static int run_unpark(struct svc_cli_ctx *ctx)
{
	bool all = ctx->opt[UNPARK_ALL].set, json = ctx->opt[UNPARK_JSON].set;
	int64_t ids[SVC_CLI_MAX_ARGS];
	PGresult *res = NULL;
	struct svc_pg pg;
	int rc, n, missing = 0;

	if (all == (ctx->nargs > 0)) {
		fprintf(stderr, "svccomm outbox unpark: give row ids or --all (not both)\n");
		return SVC_EXIT_USAGE;
	}
	for (int i = 0; i < ctx->nargs; i++) {
		char *end;

		errno = 0;
		ids[i] = strtoll(ctx->arg[i], &end, 10);
		if (errno || end == ctx->arg[i] || *end || ids[i] <= 0) {
			fprintf(stderr,
			        "svccomm outbox unpark: '%s' is not a row id (an integer > 0)\n",
			        ctx->arg[i]);
			return SVC_EXIT_USAGE;
		}
	}
	if ((rc = connect_db(ctx, &pg)) != SVC_EXIT_OK)
		return rc;
	rc = svc_outbox_ops_unpark(&pg, ctx->config->outbox_table, ids, (size_t)ctx->nargs, all,
	                           &res);
	if (rc != 0) {
		rc = failed(ctx, &pg, rc);
		goto out;
	}
	n = PQntuples(res);
	if (json)
		printf("{\"unparked\":[");
	for (int i = 0, k = 0; i < n; i++) {
		const char *id = PQgetvalue(res, i, SVC_OUTBOX_UNPARK_ID);

		if (all || PQgetvalue(res, i, SVC_OUTBOX_UNPARK_DONE)[0] == 't') {
			if (json)
				printf("%s%s", k++ ? "," : "", id);
			else
				printf("unparked %s\n", id);
		} else {
			missing++;
		}
	}
	if (json)
		printf("],\"not_found\":[");
	for (int i = 0, k = 0; !all && i < n; i++) {
		const char *id = PQgetvalue(res, i, SVC_OUTBOX_UNPARK_ID);

		if (PQgetvalue(res, i, SVC_OUTBOX_UNPARK_EXISTS)[0] == 't')
			continue;
		if (json)
			printf("%s%s", k++ ? "," : "", id);
		fprintf(stderr, "svccomm outbox unpark: row %s: no such row in %s\n", id,
		        ctx->config->outbox_table);
	}
	if (json)
		printf("],\"not_parked\":[");
	for (int i = 0, k = 0; !all && i < n; i++) {
		const char *id = PQgetvalue(res, i, SVC_OUTBOX_UNPARK_ID);

		if (PQgetvalue(res, i, SVC_OUTBOX_UNPARK_EXISTS)[0] != 't' ||
		    PQgetvalue(res, i, SVC_OUTBOX_UNPARK_DONE)[0] == 't')
			continue;
		if (json)
			printf("%s%s", k++ ? "," : "", id);
		fprintf(stderr, "svccomm outbox unpark: row %s: not parked, left as it is\n", id);
	}
	if (json)
		printf("]}\n");
	else if (all && n == 0)
		printf("no parked rows\n");
	rc = missing ? SVC_EXIT_FAILURE : SVC_EXIT_OK;
out:
	PQclear(res);
	svc_pg_release(&pg);
	return rc;
}

static const struct svc_cmd cmd_unpark = {
    .name = "outbox unpark",
    .run = run_unpark,
    .needs = SVC_NEEDS_SETTINGS,
    .summary = "make parked outbox rows due again, so the relay publishes them",
    .args = "<id>...",
    .min_args = 0,
    .max_args = SVC_CLI_MAX_ARGS,
    .opts = unpark_opts,
    .n_opts = N_UNPARK_OPTS,
    .description =
        "Makes the parked rows with these ids (at most 64), or every parked row with --all,\n"
        "due now: parked_at is cleared, attempts start again from 0 and last_error is kept\n"
        "until the next attempt. Running relays are woken at once. Fix what made the relay\n"
        "park a row first (see `svccomm outbox list --parked`), or it is parked again.\n",
    .exit_codes = "Exit codes: 0 every row given was unparked, 1 a row does not exist or is\n"
                  "not parked (the others were unparked) or the database failed, 2 usage or\n"
                  "configuration error.",
};

/* ---- cancel --------------------------------------------------------------------------- */

enum { CANCEL_AGGREGATE, CANCEL_EVENT_TYPE, CANCEL_TAGS, CANCEL_JSON, N_CANCEL_OPTS };
static const struct svc_opt cancel_opts[N_CANCEL_OPTS] = {
    [CANCEL_AGGREGATE] = {"aggregate", SVC_OPT_TEXT, "A", "the aggregate (exchange), required"},
    [CANCEL_EVENT_TYPE] = {"event-type", SVC_OPT_TEXT, "E",
                           "the event type (routing key), required"},
    [CANCEL_TAGS] = {"tags", SVC_OPT_TEXT, "K=V,...",
                     "tags the events must all have (or a JSON object), required"},
    [CANCEL_JSON] = {"json", SVC_OPT_FLAG, NULL, "print one JSON object"},
};

/* The tags "k=v,k2=v2" as a JSON object of strings, or the text itself when it is a JSON
 * object already ('{'). NULL (message printed) when a pair has no '=' or an empty key. */
static char *tags_json(const char *tags)
{
	char *buf = NULL, *copy, *save = NULL;
	size_t size = 0;
	FILE *f;
	int k = 0;

	if (tags[0] == '{')
		return strdup(tags);
	if (!(copy = strdup(tags)) || !(f = open_memstream(&buf, &size))) {
		free(copy);
		return NULL;
	}
	fputc('{', f);
	for (char *pair = strtok_r(copy, ",", &save); pair; pair = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(pair, '=');

		if (!eq || eq == pair) {
			fprintf(stderr,
			        "svccomm outbox cancel: --tags: expected key=value, got '%s'\n",
			        pair);
			k = -1;
			break;
		}
		*eq = '\0';
		fputs(k++ ? "," : "", f);
		svc_json_put_str(f, pair);
		fputc(':', f);
		svc_json_put_str(f, eq + 1);
	}
	fputc('}', f);
	fclose(f);
	free(copy);
	if (k <= 0) {
		if (k == 0)
			fprintf(stderr, "svccomm outbox cancel: --tags: no key=value pair\n");
		free(buf);
		return NULL;
	}
	return buf;
}

static int run_cancel(struct svc_cli_ctx *ctx)
{
	const struct svc_optval *o = ctx->opt;
	char err[1024], state[6];
	struct svc_pg pg;
	long long n;
	char *tags;
	int rc;

	for (int i = 0; i < CANCEL_JSON; i++)
		if (!o[i].set || !*o[i].text) {
			fprintf(stderr, "svccomm outbox cancel: --%s is required\n",
			        cancel_opts[i].name);
			return SVC_EXIT_USAGE;
		}
	if (!(tags = tags_json(o[CANCEL_TAGS].text)))
		return SVC_EXIT_USAGE;
	if ((rc = connect_db(ctx, &pg)) != SVC_EXIT_OK) {
		free(tags);
		return rc;
	}
	n = svc_outbox_cancel(pg.conn, ctx->config->outbox_table, o[CANCEL_AGGREGATE].text,
	                      o[CANCEL_EVENT_TYPE].text, tags, err, sizeof(err), state);
	if (n < 0) {
		fprintf(stderr, "svccomm outbox cancel: %s\n", err);
		rc = n == SVC_EINVAL || strncmp(state, "22", 2) == 0 ? SVC_EXIT_USAGE
		                                                     : SVC_EXIT_FAILURE;
	} else {
		if (o[CANCEL_JSON].set)
			printf("{\"cancelled\":%lld}\n", n);
		else
			printf("cancelled %lld event(s)\n", n);
		rc = SVC_EXIT_OK;
	}
	free(tags);
	svc_pg_release(&pg);
	return rc;
}

static const struct svc_cmd cmd_cancel = {
    .name = "outbox cancel",
    .run = run_cancel,
    .needs = SVC_NEEDS_SETTINGS,
    .summary = "delete pending events of an aggregate and event type that carry given tags",
    .opts = cancel_opts,
    .n_opts = N_CANCEL_OPTS,
    .description =
        "What cancel_future_aggregate_event does, from the shell: deletes the rows of the\n"
        "outbox not yet published whose aggregate and event type are A and E and whose tags\n"
        "contain every K=V given (values compared as strings), and prints how many. A row\n"
        "the relay has already sent is gone from the table and cannot be cancelled.\n",
};

/* ---- the group ------------------------------------------------------------------------ */

static const struct svc_cmd *const subs[] = {&cmd_stats, &cmd_list, &cmd_unpark, &cmd_cancel};

const struct svc_cmd svc_cmd_outbox = {
    .name = "outbox",
    .needs = SVC_NEEDS_NOTHING,
    .summary = "inspect the outbox table: stats, list, unpark, cancel",
    .args = "<command>",
    .description = "Commands on the outbox table (OUTBOX_TABLE in DATABASE_URL), safe while\n"
                   "relays run. `svccomm outbox <command> --help` shows a command's options.\n",
    .subs = subs,
    .n_subs = (int)(sizeof(subs) / sizeof(subs[0])),
};
