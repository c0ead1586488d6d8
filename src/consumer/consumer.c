/* consumer: the consume loop; see consumer.h. */
#include "consumer/consumer.h"

#include <errno.h>
#include <lauxlib.h>
#include <libpq-fe.h>
#include <lua.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "util/log.h"
#include "lua/pg.h"
#include "pg/conn.h"
#include "lua/runtime.h"
#include "util/error.h"
#include "util/utf8.h"

#define LOG                   "consumer"
#define PUBLISH_TIMEOUT_MS    15000
#define IDLE_TICK_MS          250
#define INBOX_CLEANUP_EVERY   60.0
#define INBOX_CLEANUP_BATCH   "1000"
#define MAX_BATCH             65535
#define QUEUE_CHECK_EVERY     5.0
#define ERROR_LINES           6
#define MAX_REPUBLISH_HEADERS 64

volatile sig_atomic_t svc_consumer_stop;
static volatile sig_atomic_t shutdown_seconds = 30;

/* ------------------------------------------------------------------ pure logic */

enum svc_failure_action svc_consumer_failure_action(long attempt, long max_attempts,
                                                    size_t n_delays, bool permanent,
                                                    size_t *delay_index)
{
	if (permanent || n_delays == 0 || attempt >= max_attempts)
		return SVC_FAIL_DEAD_LETTER;
	if (attempt < 1)
		attempt = 1;
	size_t i = (size_t)(attempt - 1);
	*delay_index = i < n_delays ? i : n_delays - 1;
	return SVC_FAIL_RETRY;
}

long svc_consumer_delay_ms(double seconds)
{
	double ms = floor(seconds * 1000.0 + 0.5);
	if (!(ms >= 1.0))
		return 1;
	if (ms > 2147483647.0)
		return 2147483647L;
	return (long)ms;
}

int svc_consumer_retry_queue(const char *queue, long delay_ms, char *out, size_t outsz)
{
	int n = snprintf(out, outsz, "%s.retry.%ld", queue, delay_ms);
	return n < 0 || (size_t)n >= outsz || n > 255 ? SVC_EINVAL : 0;
}

int svc_consumer_dlq_name(const char *queue, char *out, size_t outsz)
{
	int n = snprintf(out, outsz, "%s.dlq", queue);
	return n < 0 || (size_t)n >= outsz || n > 255 ? SVC_EINVAL : 0;
}

bool svc_consumer_should_commit(size_t batch_len, size_t limit, double elapsed_s, double interval_s)
{
	if (batch_len == 0)
		return false;
	return batch_len >= (limit ? limit : 1) || elapsed_s >= interval_s;
}

double svc_consumer_backoff(unsigned failures, double max_delay, double rand01)
{
	double d = 0.5;
	for (unsigned i = 1; i < failures && d < max_delay; i++)
		d *= 2;
	if (d > max_delay)
		d = max_delay;
	if (rand01 < 0)
		rand01 = 0;
	if (rand01 >= 1)
		rand01 = 0.999999;
	return d / 2 + d / 2 * rand01;
}

long svc_consumer_attempt(const struct svc_delivery *d)
{
	const struct svc_delivery_header *h = svc_delivery_header(d, "x-svccomm-attempt");
	long n = 1;
	if (!h)
		return 1;
	if (h->kind == 'i') {
		n = (long)h->i;
	} else if (h->kind == 's') {
		char *end;
		errno = 0;
		n = strtol(h->str, &end, 10);
		if (errno || end == h->str || *end)
			return 1;
	}
	return n >= 1 ? n : 1;
}

static const char *skip_ws(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* p at '"': returns the position after the closing quote, or NULL. */
static const char *skip_string(const char *p, const char *end)
{
	for (p++; p < end; p++) {
		if (*p == '\\')
			p++;
		else if (*p == '"')
			return p + 1;
	}
	return NULL;
}

/* Skips one value (any depth, no recursion); NULL on malformed input. */
static const char *skip_value(const char *p, const char *end)
{
	size_t depth = 0;
	do {
		p = skip_ws(p, end);
		if (p >= end)
			return NULL;
		if (*p == '"') {
			p = skip_string(p, end);
			if (!p)
				return NULL;
		} else if (*p == '{' || *p == '[') {
			depth++;
			p++;
		} else if (*p == '}' || *p == ']') {
			if (depth == 0)
				return NULL;
			depth--;
			p++;
		} else if (*p == ',' || *p == ':') {
			if (depth == 0)
				return NULL;
			p++;
		} else {
			while (p < end && !strchr(" \t\r\n,:]}[{\"", *p))
				p++;
		}
	} while (depth > 0);
	return p;
}

int svc_json_top_field(const char *json, size_t len, const char *key, char *out, size_t outsz)
{
	const char *p = json, *end = json + len;
	size_t klen = strlen(key);

	p = skip_ws(p, end);
	if (p >= end || *p != '{')
		return SVC_EINVAL;
	p++;
	for (;;) {
		p = skip_ws(p, end);
		if (p >= end || *p != '"')
			return SVC_EINVAL;
		const char *ks = p + 1;
		p = skip_string(p, end);
		if (!p)
			return SVC_EINVAL;
		bool match = (size_t)(p - 1 - ks) == klen && memcmp(ks, key, klen) == 0;
		p = skip_ws(p, end);
		if (p >= end || *p != ':')
			return SVC_EINVAL;
		p = skip_ws(p + 1, end);
		if (match && p < end) {
			const char *vs, *ve;
			if (*p == '"') {
				vs = p + 1;
				ve = skip_string(p, end);
				if (!ve)
					return SVC_EINVAL;
				ve--;
				if (memchr(vs, '\\', (size_t)(ve - vs)))
					return SVC_EINVAL;
			} else if (*p == '-' || (*p >= '0' && *p <= '9')) {
				vs = p;
				ve = p;
				while (ve < end && strchr("+-0123456789.eE", *ve))
					ve++;
			} else {
				return SVC_EINVAL;
			}
			size_t n = (size_t)(ve - vs);
			if (n == 0 || n >= outsz)
				return SVC_EINVAL;
			memcpy(out, vs, n);
			out[n] = '\0';
			return 0;
		}
		p = skip_value(p, end);
		if (!p)
			return SVC_EINVAL;
		p = skip_ws(p, end);
		if (p < end && *p == ',') {
			p++;
			continue;
		}
		return SVC_EINVAL; /* '}' (not found) or garbage */
	}
}

int svc_consumer_message_id(const char *amqp_message_id, const char *exchange, const char *body,
                            size_t len, char *out, size_t outsz)
{
	char id[128];
	if (amqp_message_id && *amqp_message_id) {
		int n = snprintf(out, outsz, "%s", amqp_message_id);
		return n < 0 || (size_t)n >= outsz ? SVC_EINVAL : 0;
	}
	if (svc_json_top_field(body, len, "eventId", id, sizeof(id)) != 0 &&
	    svc_json_top_field(body, len, "event_id", id, sizeof(id)) != 0)
		return SVC_EINVAL;
	int n = snprintf(out, outsz, "%s:%s", exchange, id);
	return n < 0 || (size_t)n >= outsz ? SVC_EINVAL : 0;
}

static bool ident_part_ok(const char *s, size_t n)
{
	if (n == 0 || n > 63)
		return false;
	if (!((s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z') || s[0] == '_'))
		return false;
	for (size_t i = 1; i < n; i++) {
		char c = s[i];
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '_'))
			return false;
	}
	return true;
}

int svc_consumer_quote_ident(const char *name, char *out, size_t outsz)
{
	const char *dot = strchr(name, '.');
	int n;
	if (dot) {
		if (!ident_part_ok(name, (size_t)(dot - name)) ||
		    !ident_part_ok(dot + 1, strlen(dot + 1)))
			return SVC_EINVAL;
		n = snprintf(out, outsz, "\"%.*s\".\"%s\"", (int)(dot - name), name, dot + 1);
	} else {
		if (!ident_part_ok(name, strlen(name)))
			return SVC_EINVAL;
		n = snprintf(out, outsz, "\"%s\"", name);
	}
	return n < 0 || (size_t)n >= outsz ? SVC_EINVAL : 0;
}

void svc_consumer_error_excerpt(const char *text, int max_lines, char *out, size_t outsz)
{
	size_t n = 0;
	int lines = 0;
	if (outsz == 0)
		return;
	while (text[n] && n < outsz - 1) {
		if (text[n] == '\n' && ++lines >= max_lines)
			break;
		n++;
	}
	/* do not cut a UTF-8 sequence in two */
	if (text[n] && text[n] != '\n')
		while (n > 0 && ((unsigned char)text[n] & 0xC0) == 0x80)
			n--;
	memcpy(out, text, n);
	out[n] = '\0';
}

static bool bookkeeping_header(const char *key)
{
	return strncmp(key, "x-death", 7) == 0 || strncmp(key, "x-first-death", 13) == 0 ||
	       strncmp(key, "x-last-death", 12) == 0 || strncmp(key, "x-svccomm-", 10) == 0;
}

size_t svc_consumer_build_headers(const struct svc_delivery *d, const struct svc_failure_info *info,
                                  struct svc_amqp_header *out, size_t max, char *numbuf)
{
	size_t n = 0;
	const size_t own = 6;
	for (size_t i = 0; i < d->n_headers && n + own < max; i++) {
		const struct svc_delivery_header *h = &d->headers[i];
		if (h->kind == 'n' || bookkeeping_header(h->key))
			continue;
		out[n].key = h->key;
		out[n].value = h->str;
		n++;
	}
#define ADD(k, v)                                                                                  \
	do {                                                                                       \
		if ((v) && n < max) {                                                              \
			out[n].key = (k);                                                          \
			out[n].value = (v);                                                        \
			n++;                                                                       \
		}                                                                                  \
	} while (0)
	if (info->dead_letter) {
		snprintf(numbuf, 48, "%ld", info->attempts);
		ADD("x-svccomm-reason", info->reason);
		ADD("x-svccomm-handler", info->handler);
		ADD("x-svccomm-error", info->error);
		ADD("x-svccomm-attempts", numbuf);
	} else {
		snprintf(numbuf, 48, "%ld", info->next_attempt);
		ADD("x-svccomm-attempt", numbuf);
		ADD("x-svccomm-error", info->error);
	}
	ADD("x-svccomm-exchange", info->exchange);
	ADD("x-svccomm-routing-key", info->routing_key);
#undef ADD
	return n;
}

/* ------------------------------------------------------------------ the consumer */

struct svc_consumer {
	const struct svc_config *cfg;
	struct svc_runtime *rt;
	lua_State *L;
	int worker;
	int ref_handle, ref_last_handler, ref_enter, ref_leave, ref_setctx, ref_clearctx;
	int ref_conn; /* userdata lending pg to Lua for this session */

	struct svc_amqp *in;  /* consumes */
	struct svc_amqp *out; /* publishes retries and dead letters, confirm mode */
	struct svc_amqp_consumer cs;
	PGconn *pg;
	char pgerr[512];
	char inbox_table[160];
	char inbox_sql[256];
	char cleanup_sql[512];
	unsigned generation;
	bool connected_once;

	struct svc_delivery d;

	/* retry queues: one per distinct delay, in RETRY_DELAYS order */
	long *delay_ms;
	char dlq[260];
	size_t limit; /* batch limit */
	size_t solo;  /* messages to commit one by one after a failed COMMIT */

	/* open batch */
	bool in_tx;
	bool sp_open;
	size_t batch_n;
	uint64_t *tags;
	bool *settled; /* outcome published (retry/DLQ): ack even when the COMMIT fails */
	double batch_start;
	unsigned batch_gen;

	/* stats */
	unsigned long long received, ok, retried, dead, unrouted, dup, skipped;
	unsigned long long last_received;
	double last_stats, last_cleanup, last_out_poll, last_queue_check;
	char pending_error[2048];
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void on_signal(int sig)
{
	(void)sig;
	if (svc_consumer_stop) {
		static const char msg[] = "second signal: exiting now\n";
		ssize_t w = write(2, msg, sizeof(msg) - 1);
		(void)w;
		_exit(SVC_EXIT_FAILURE);
	}
	svc_consumer_stop = 1;
	alarm((unsigned)shutdown_seconds);
}

static void on_alarm(int sig)
{
	static const char msg[] = "SHUTDOWN_TIMEOUT passed: exiting now\n";
	ssize_t w;
	(void)sig;
	w = write(2, msg, sizeof(msg) - 1);
	(void)w;
	_exit(SVC_EXIT_FAILURE);
}

static void install_signals(double shutdown_timeout)
{
	struct sigaction sa;
	double s = ceil(shutdown_timeout);
	shutdown_seconds = (sig_atomic_t)(s < 1 ? 1 : s > 86400 ? 86400 : s);
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
}

/* Sleeps up to seconds, waking early on a stop signal. */
static void nap(double seconds)
{
	double until = now_s() + seconds;
	while (!svc_consumer_stop) {
		double left = until - now_s();
		if (left <= 0)
			break;
		if (left > 0.1)
			left = 0.1;
		struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)(left * 1e9)};
		nanosleep(&ts, NULL);
	}
}

/* ---- Lua ---- */

static int ref_field(lua_State *L, const char *name)
{
	lua_getfield(L, -1, name);
	if (lua_type(L, -1) != LUA_TFUNCTION) {
		lua_pop(L, 1);
		return LUA_NOREF;
	}
	return luaL_ref(L, LUA_REGISTRYINDEX);
}

static int lua_setup(struct svc_consumer *c)
{
	char err[1024];
	lua_State *L = c->L;
	c->ref_handle = c->ref_last_handler = LUA_NOREF;
	c->ref_enter = c->ref_leave = c->ref_setctx = c->ref_clearctx = LUA_NOREF;
	c->ref_conn = LUA_NOREF;
	if (svc_runtime_require(c->rt, "svccomm.dispatch", err, sizeof(err))) {
		svc_error(LOG, "cannot load svccomm.dispatch: %s", err);
		return SVC_ELUA;
	}
	c->ref_handle = ref_field(L, "handle");
	c->ref_last_handler = ref_field(L, "last_handler");
	lua_pop(L, 1);
	if (c->ref_handle == LUA_NOREF) {
		svc_error(LOG, "svccomm.dispatch has no handle()");
		return SVC_ELUA;
	}
	if (svc_runtime_require(c->rt, "svccomm.db", err, sizeof(err)) == 0) {
		c->ref_enter = ref_field(L, "_enter_host");
		c->ref_leave = ref_field(L, "_leave_host");
		lua_pop(L, 1);
	} else {
		svc_debug(LOG, "svccomm.db not available: %s", err);
	}
	if (svc_runtime_require(c->rt, "svccomm.events", err, sizeof(err)) == 0) {
		c->ref_setctx = ref_field(L, "_set_context");
		c->ref_clearctx = ref_field(L, "_clear_context");
		lua_pop(L, 1);
	} else {
		svc_debug(LOG, "svccomm.events not available: %s", err);
	}
	return 0;
}

/* Calls a helper (registry ref) with the values above it; failures are logged only. */
static void call_helper(struct svc_consumer *c, int ref, int nargs, const char *what)
{
	lua_State *L = c->L;
	if (ref == LUA_NOREF) {
		lua_pop(L, nargs);
		return;
	}
	lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
	lua_insert(L, -1 - nargs);
	if (svc_lua_pcall(c->rt, nargs, 0, 0) != SVC_LUA_OK) {
		char err[512];
		svc_lua_error_text(L, err, sizeof(err));
		svc_warn(LOG, "%s failed: %s", what, err);
	}
}

static void set_str(lua_State *L, const char *k, const char *v)
{
	if (v) {
		lua_pushstring(L, v);
		lua_setfield(L, -2, k);
	}
}

/* Pushes the message table the handler receives. */
static void push_message(struct svc_consumer *c, const struct svc_delivery *d, const char *exchange,
                         const char *routing_key, long attempt)
{
	lua_State *L = c->L;
	lua_createtable(L, 0, 8);
	set_str(L, "exchange", exchange);
	set_str(L, "routing_key", routing_key);
	lua_pushboolean(L, d->redelivered);
	lua_setfield(L, -2, "redelivered");
	lua_pushinteger(L, attempt);
	lua_setfield(L, -2, "attempt");
	set_str(L, "correlation_id", d->correlation_id);
	set_str(L, "message_id", d->message_id);
	lua_pushinteger(L, (lua_Integer)d->tag);
	lua_setfield(L, -2, "delivery_tag");

	lua_createtable(L, 0, 7);
	set_str(L, "content_type", d->content_type);
	set_str(L, "message_id", d->message_id);
	set_str(L, "correlation_id", d->correlation_id);
	set_str(L, "app_id", d->app_id);
	set_str(L, "reply_to", d->reply_to);
	set_str(L, "type", d->type);
	if (d->has_timestamp) {
		lua_pushinteger(L, (lua_Integer)d->timestamp);
		lua_setfield(L, -2, "timestamp");
	}
	lua_createtable(L, 0, (int)d->n_headers);
	for (size_t i = 0; i < d->n_headers; i++) {
		const struct svc_delivery_header *h = &d->headers[i];
		switch (h->kind) {
		case 's':
			lua_pushlstring(L, h->str, h->len);
			break;
		case 'i':
			lua_pushinteger(L, (lua_Integer)h->i);
			break;
		case 'f':
			lua_pushnumber(L, h->f);
			break;
		case 'b':
			lua_pushboolean(L, h->b);
			break;
		default:
			continue;
		}
		lua_setfield(L, -2, h->key);
	}
	lua_setfield(L, -2, "headers");
	lua_setfield(L, -2, "properties");
}

struct invoke_ctx {
	struct svc_consumer *c;
	const struct svc_delivery *d;
	const char *exchange;
	const char *routing_key;
	long attempt;
};

/* Runs under svc_lua_pcall: lends the connection, sets the correlation context, builds the
 * arguments and calls dispatch.handle(exchange, routing_key, body, message) -> 2 values. */
static int invoke_handler(lua_State *L)
{
	const struct invoke_ctx *ic = lua_touserdata(L, 1);
	struct svc_consumer *c = ic->c;
	const struct svc_delivery *d = ic->d;

	if (c->ref_conn != LUA_NOREF && c->ref_enter != LUA_NOREF) {
		lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref_enter);
		lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref_conn);
		lua_call(L, 1, 0);
	}
	if (c->ref_setctx != LUA_NOREF) {
		const struct svc_delivery_header *tp = svc_delivery_header(d, "traceparent");
		lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref_setctx);
		lua_createtable(L, 0, 2);
		set_str(L, "correlation_id", d->correlation_id);
		if (tp && tp->kind == 's')
			set_str(L, "traceparent", tp->str);
		lua_call(L, 1, 0);
	}
	lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref_handle);
	lua_pushstring(L, ic->exchange);
	lua_pushstring(L, ic->routing_key);
	lua_pushlstring(L, d->body, d->body_len);
	push_message(c, d, ic->exchange, ic->routing_key, ic->attempt);
	lua_call(L, 4, 2);
	return 2;
}

/* ---- PostgreSQL ---- */

static int pg_fail(struct svc_consumer *c, PGresult *r, const char *what)
{
	const char *msg = r ? PQresultErrorMessage(r) : PQerrorMessage(c->pg);
	snprintf(c->pgerr, sizeof(c->pgerr), "%s: %s", what, msg && *msg ? msg : "failed");
	size_t n = strlen(c->pgerr);
	while (n && c->pgerr[n - 1] == '\n')
		c->pgerr[--n] = '\0';
	if (r)
		PQclear(r);
	return PQstatus(c->pg) == CONNECTION_OK ? SVC_EDB : SVC_ECONN;
}

static int pg_cmd(struct svc_consumer *c, const char *sql)
{
	PGresult *r = PQexec(c->pg, sql);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		return pg_fail(c, r, sql);
	PQclear(r);
	return 0;
}

static int push_lent_conn(lua_State *L)
{
	return svc_lua_pg_push(L, lua_touserdata(L, 1), false);
}

static int pg_connect(struct svc_consumer *c)
{
	/* svc_pg_open: UTC/ISO session (as svccomm.db documents), keepalives, masked errors. */
	c->pg =
	    svc_pg_open(c->cfg->database_url, "svccomm runconsumer", c->pgerr, sizeof(c->pgerr));
	if (!c->pg)
		return SVC_ECONN;
	/* outbox rows written by handlers wait for the next statement or the COMMIT */
	svc_pg_set_deferral(c->pg, true);
	/* lend the connection to Lua (svccomm.db inside handlers) */
	lua_pushcfunction(c->L, push_lent_conn);
	lua_pushlightuserdata(c->L, c->pg);
	if (svc_lua_pcall(c->rt, 1, 1, 0) != SVC_LUA_OK) {
		svc_lua_error_text(c->L, c->pgerr, sizeof(c->pgerr));
		PQfinish(c->pg);
		c->pg = NULL;
		return SVC_ELUA;
	}
	c->ref_conn = luaL_ref(c->L, LUA_REGISTRYINDEX);
	return 0;
}

static void pg_disconnect(struct svc_consumer *c)
{
	if (c->ref_conn != LUA_NOREF) {
		/* a handler may have kept the userdata: make it raise instead of using freed memory
		 */
		lua_rawgeti(c->L, LUA_REGISTRYINDEX, c->ref_conn);
		svc_lua_pg_detach(c->L, -1);
		lua_pop(c->L, 1);
		luaL_unref(c->L, LUA_REGISTRYINDEX, c->ref_conn);
		c->ref_conn = LUA_NOREF;
	}
	if (c->pg) {
		PQfinish(c->pg);
		c->pg = NULL;
	}
	c->in_tx = false;
	c->sp_open = false;
}

static void inbox_cleanup(struct svc_consumer *c)
{
	char secs[32];
	const char *vals[1] = {secs};
	snprintf(secs, sizeof(secs), "%.3f", c->cfg->inbox_retention);
	for (int round = 0; round < 20 && !svc_consumer_stop; round++) {
		PGresult *r = PQexecParams(c->pg, c->cleanup_sql, 1, NULL, vals, NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_COMMAND_OK) {
			pg_fail(c, r, "inbox cleanup");
			svc_warn(LOG, "%s", c->pgerr);
			return;
		}
		long n = strtol(PQcmdTuples(r), NULL, 10);
		PQclear(r);
		if (n > 0)
			svc_debug(LOG, "inbox cleanup removed %ld rows", n);
		if (n < atol(INBOX_CLEANUP_BATCH))
			return;
	}
}

/* ---- AMQP ---- */

static int declare_topology(struct svc_consumer *c)
{
	const struct svc_config *cfg = c->cfg;
	bool passive = cfg->do_not_declare;
	char missing[1024] = "";
	size_t mlen = 0;
	int rc;

	for (size_t i = 0; i < cfg->n_exchanges; i++) {
		struct svc_amqp_exchange ex = {cfg->exchanges[i].name, cfg->exchanges[i].type};
		rc = svc_amqp_declare_exchange(c->in, &ex, passive);
		if (rc == SVC_EPROTO && passive) {
			mlen += (size_t)snprintf(missing + mlen, sizeof(missing) - mlen,
			                         "%sexchange '%s'", mlen ? ", " : "", ex.name);
			if (mlen >= sizeof(missing))
				mlen = sizeof(missing) - 1;
			continue;
		}
		if (rc) {
			svc_error(LOG, "declaring exchange '%s': %s", ex.name,
			          svc_amqp_error(c->in));
			return rc;
		}
	}

	amqp_table_entry_t *entries = NULL;
	if (cfg->n_queue_args) {
		entries = calloc(cfg->n_queue_args, sizeof(*entries));
		if (!entries)
			return SVC_ENOMEM;
	}
	for (size_t i = 0; i < cfg->n_queue_args; i++) {
		const struct svc_queue_arg *a = &cfg->queue_args[i];
		entries[i].key = amqp_cstring_bytes(a->key);
		if (a->kind == 's') {
			entries[i].value.kind = AMQP_FIELD_KIND_UTF8;
			entries[i].value.value.bytes = amqp_cstring_bytes(a->str);
		} else if (a->kind == 'b') {
			entries[i].value.kind = AMQP_FIELD_KIND_BOOLEAN;
			entries[i].value.value.boolean = a->num != 0;
		} else {
			entries[i].value.kind = AMQP_FIELD_KIND_I64;
			entries[i].value.value.i64 = a->num;
		}
	}
	amqp_table_t args = {.num_entries = (int)cfg->n_queue_args, .entries = entries};
	rc = svc_amqp_declare_queue(c->in, cfg->queue, args, passive);
	free(entries);
	if (rc == SVC_EPROTO && passive) {
		mlen += (size_t)snprintf(missing + mlen, sizeof(missing) - mlen, "%squeue '%s'",
		                         mlen ? ", " : "", cfg->queue);
		if (mlen >= sizeof(missing))
			mlen = sizeof(missing) - 1;
	} else if (rc) {
		svc_error(LOG, "declaring queue '%s': %s", cfg->queue, svc_amqp_error(c->in));
		return rc;
	}
	if (mlen) {
		svc_error(LOG, "DO_NOT_DECLARE is set and the broker lacks: %s", missing);
		return SVC_ECONFIG;
	}
	if (!passive) {
		for (size_t i = 0; i < cfg->n_binds; i++) {
			rc = svc_amqp_bind(c->in, cfg->queue, cfg->binds[i].exchange,
			                   cfg->binds[i].routing_key);
			if (rc) {
				svc_error(LOG, "binding '%s' to '%s' with '%s': %s", cfg->queue,
				          cfg->binds[i].exchange, cfg->binds[i].routing_key,
				          svc_amqp_error(c->in));
				return rc;
			}
		}
	}

	/* svccomm's own queues: always declared */
	rc = svc_amqp_declare_queue(c->in, c->dlq, amqp_empty_table, false);
	if (rc) {
		svc_error(LOG, "declaring queue '%s': %s", c->dlq, svc_amqp_error(c->in));
		return rc;
	}
	for (size_t i = 0; i < cfg->n_retry_delays; i++) {
		char name[300];
		bool seen = false;
		for (size_t j = 0; j < i; j++)
			seen = seen || c->delay_ms[j] == c->delay_ms[i];
		if (seen)
			continue;
		svc_consumer_retry_queue(cfg->queue, c->delay_ms[i], name, sizeof(name));
		amqp_table_entry_t e[3];
		e[0].key = amqp_cstring_bytes("x-message-ttl");
		e[0].value.kind = AMQP_FIELD_KIND_I64;
		e[0].value.value.i64 = c->delay_ms[i];
		e[1].key = amqp_cstring_bytes("x-dead-letter-exchange");
		e[1].value.kind = AMQP_FIELD_KIND_UTF8;
		e[1].value.value.bytes = amqp_cstring_bytes("");
		e[2].key = amqp_cstring_bytes("x-dead-letter-routing-key");
		e[2].value.kind = AMQP_FIELD_KIND_UTF8;
		e[2].value.value.bytes = amqp_cstring_bytes(cfg->queue);
		amqp_table_t t = {.num_entries = 3, .entries = e};
		rc = svc_amqp_declare_queue(c->in, name, t, false);
		if (rc) {
			svc_error(LOG, "declaring queue '%s': %s", name, svc_amqp_error(c->in));
			return rc;
		}
	}
	return 0;
}

static int connect_out(struct svc_consumer *c)
{
	char name[128];
	snprintf(name, sizeof(name), "svccomm consumer %s (retries)", c->cfg->queue);
	int rc = svc_amqp_connect(c->out, c->cfg->broker_url, (int)c->cfg->heartbeat, name);
	if (rc == 0)
		rc = svc_amqp_confirm_select(c->out);
	if (rc) {
		svc_warn(LOG, "publisher connection: %s", svc_amqp_error(c->out));
		svc_amqp_close(c->out);
	}
	return rc;
}

/* Publishes a copy with a confirm; reconnects the publishing connection once if needed. */
static int publish_copy(struct svc_consumer *c, const struct svc_delivery *d, const char *queue,
                        const struct svc_failure_info *info)
{
	struct svc_amqp_header hdrs[MAX_REPUBLISH_HEADERS];
	char numbuf[48];
	size_t nh = svc_consumer_build_headers(d, info, hdrs, MAX_REPUBLISH_HEADERS, numbuf);
	struct svc_amqp_props props = {
	    .content_type = d->content_type,
	    .message_id = d->message_id,
	    .correlation_id = d->correlation_id,
	    .app_id = d->app_id,
	    .timestamp = d->has_timestamp ? d->timestamp : 0,
	    .headers = hdrs,
	    .n_headers = nh,
	    .persistent = true,
	};
	int rc = SVC_ECONN;
	for (int tries = 0; tries < 2; tries++) {
		if (!svc_amqp_is_open(c->out) && connect_out(c) != 0)
			continue;
		rc = svc_amqp_publish_confirmed(c->out, "", queue, d->body, d->body_len, &props,
		                                true, PUBLISH_TIMEOUT_MS);
		if (rc == 0)
			return 0;
		svc_warn(LOG, "publishing to '%s': %s (%s)", queue, svc_strerror(rc),
		         svc_amqp_error(c->out));
		svc_amqp_close(c->out);
		if (rc != SVC_ECONN)
			break;
	}
	return rc ? rc : SVC_ECONN;
}

/* ---- one message ---- */

static void batch_add(struct svc_consumer *c, uint64_t tag)
{
	if (c->batch_n == 0) {
		c->batch_start = now_s();
		c->batch_gen = c->generation;
	}
	c->tags[c->batch_n] = tag;
	c->settled[c->batch_n] = false;
	c->batch_n++;
}

static int dead_letter(struct svc_consumer *c, const struct svc_delivery *d, const char *exchange,
                       const char *routing_key, long attempts, const char *reason,
                       const char *handler, const char *error)
{
	struct svc_failure_info info = {
	    .dead_letter = true,
	    .attempts = attempts,
	    .exchange = exchange,
	    .routing_key = routing_key,
	    .error = error,
	    .handler = handler,
	    .reason = reason,
	};
	int rc = publish_copy(c, d, c->dlq, &info);
	if (rc == 0) {
		c->dead++;
		c->settled[c->batch_n - 1] = true;
	}
	return rc;
}

/* A handler failed (or its COMMIT did): retry later or dead-letter. */
static int handle_failure(struct svc_consumer *c, const struct svc_delivery *d,
                          const char *exchange, const char *routing_key, long attempt,
                          bool permanent, const char *handler, const char *error_text)
{
	char excerpt[1024];
	size_t di = 0;
	svc_consumer_error_excerpt(error_text, ERROR_LINES, excerpt, sizeof(excerpt));
	enum svc_failure_action a = svc_consumer_failure_action(
	    attempt, c->cfg->max_attempts, c->cfg->n_retry_delays, permanent, &di);
	char first[256];
	svc_consumer_error_excerpt(error_text, 1, first, sizeof(first));
	if (a == SVC_FAIL_DEAD_LETTER) {
		svc_warn(LOG, "message %s (%s %s) failed in %s, attempt %ld, dead-lettered: %s",
		         d->message_id ? d->message_id : "-", exchange, routing_key,
		         handler ? handler : "-", attempt, first);
		return dead_letter(c, d, exchange, routing_key, attempt,
		                   permanent ? "permanent-error" : "max-attempts", handler,
		                   excerpt);
	}
	char queue[300];
	svc_consumer_retry_queue(c->cfg->queue, c->delay_ms[di], queue, sizeof(queue));
	svc_warn(LOG, "message %s (%s %s) failed in %s, attempt %ld, retry in %ld ms: %s",
	         d->message_id ? d->message_id : "-", exchange, routing_key,
	         handler ? handler : "-", attempt, c->delay_ms[di], first);
	struct svc_failure_info info = {
	    .dead_letter = false,
	    .next_attempt = attempt + 1,
	    .exchange = exchange,
	    .routing_key = routing_key,
	    .error = excerpt,
	};
	int rc = publish_copy(c, d, queue, &info);
	if (rc == 0) {
		c->retried++;
		c->settled[c->batch_n - 1] = true;
	}
	return rc;
}

static void last_handler(struct svc_consumer *c, char *out, size_t outsz)
{
	lua_State *L = c->L;
	out[0] = '\0';
	if (c->ref_last_handler == LUA_NOREF)
		return;
	lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref_last_handler);
	if (svc_lua_pcall(c->rt, 0, 1, 0) != SVC_LUA_OK) {
		lua_pop(L, 1);
		return;
	}
	const char *s = lua_tostring(L, -1);
	if (s)
		snprintf(out, outsz, "%s", s);
	lua_pop(L, 1);
}

/* Opens the transaction and this message's savepoint, lazily: the statements wait on the
 * connection (pg_conn's prelude) and travel with the message's first statement, in the same
 * round trip. A handler that never touches the database costs no round trip. */
static int begin_message(struct svc_consumer *c)
{
	static const char *const begin[] = {"BEGIN", "SAVEPOINT svc_msg"};
	static const char *const next[] = {"RELEASE SAVEPOINT svc_msg", "SAVEPOINT svc_msg"};
	static const char *const first[] = {"SAVEPOINT svc_msg"};

	if (!c->pg)
		return 0;
	int rc = !c->in_tx    ? svc_pg_set_prelude(c->pg, begin, 2)
	         : c->sp_open ? svc_pg_set_prelude(c->pg, next, 2)
	                      : svc_pg_set_prelude(c->pg, first, 1);
	if (rc) {
		snprintf(c->pgerr, sizeof(c->pgerr), "out of memory");
		return rc;
	}
	return 0;
}

/* After the message: true when its statements (and so the prelude) ran. */
static bool end_message(struct svc_consumer *c)
{
	if (!c->pg)
		return false;
	if (svc_pg_prelude_pending(c->pg)) {
		svc_pg_clear_prelude(c->pg);
		return false;
	}
	c->in_tx = true;
	c->sp_open = true;
	return true;
}

/* 1 when the message was already recorded in the inbox, 0 when new, < 0 on error. */
static int inbox_seen(struct svc_consumer *c, const struct svc_delivery *d, const char *exchange)
{
	char id[512];
	if (svc_consumer_message_id(d->message_id, exchange, d->body, d->body_len, id,
	                            sizeof(id)) != 0) {
		svc_debug(LOG, "message without an id: inbox not used");
		return 0;
	}
	const char *vals[2] = {c->cfg->queue, id};
	PGresult *r = svc_pg_query(c->pg, c->inbox_sql, 2, vals, true);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		return pg_fail(c, r, "inbox insert");
	bool dup = strcmp(PQcmdTuples(r), "0") == 0;
	PQclear(r);
	if (dup)
		svc_info(LOG, "message %s already handled (inbox): skipped", id);
	return dup ? 1 : 0;
}

static int commit_batch(struct svc_consumer *c);

static int process(struct svc_consumer *c, struct svc_delivery *d)
{
	const struct svc_config *cfg = c->cfg;
	lua_State *L = c->L;
	char text[64];
	size_t bad = 0;
	int rc;

	c->received++;
	batch_add(c, d->tag);

	const struct svc_delivery_header *hx = svc_delivery_header(d, "x-svccomm-exchange");
	const struct svc_delivery_header *hr = svc_delivery_header(d, "x-svccomm-routing-key");
	const char *exchange = d->exchange, *routing_key = d->routing_key;
	if (hx && hr && hx->kind == 's' && hr->kind == 's') {
		exchange = hx->str;
		routing_key = hr->str;
	}
	long attempt = svc_consumer_attempt(d);

	if (d->oversize) {
		char msg[160];
		snprintf(msg, sizeof(msg), "body of %llu bytes exceeds MAX_MESSAGE_BYTES (%ld)",
		         (unsigned long long)d->body_size, cfg->max_message_bytes);
		svc_warn(LOG, "message %s (%s %s): %s: dead-lettered",
		         d->message_id ? d->message_id : "-", exchange, routing_key, msg);
		return dead_letter(c, d, exchange, routing_key, attempt, "too-large", NULL, msg);
	}
	if (!svc_utf8_valid(d->body, d->body_len, &bad)) {
		char msg[96];
		snprintf(msg, sizeof(msg), "invalid UTF-8 at byte %zu", bad);
		svc_warn(LOG, "message %s (%s %s): %s: dead-lettered",
		         d->message_id ? d->message_id : "-", exchange, routing_key, msg);
		return dead_letter(c, d, exchange, routing_key, attempt, "invalid-utf8", NULL, msg);
	}

	rc = begin_message(c);
	if (rc)
		return rc;
	size_t mark = c->pg ? svc_pg_deferred_mark(c->pg) : 0;
	unsigned long flushes = c->pg ? svc_pg_flush_count(c->pg) : 0;
	if (c->pg && cfg->inbox) {
		rc = inbox_seen(c, d, exchange);
		if (rc < 0) {
			end_message(c);
			return rc;
		}
		if (rc == 1) {
			end_message(c);
			c->dup++;
			return 0;
		}
	}

	/* the handler: every push happens inside the protected call (the memory cap may hit) */
	struct invoke_ctx ic = {c, d, exchange, routing_key, attempt};
	int top = lua_gettop(L);
	lua_pushcfunction(L, invoke_handler);
	lua_pushlightuserdata(L, &ic);
	enum svc_lua_status st = svc_lua_pcall(c->rt, 1, 2, cfg->handler_timeout);
	if (st == SVC_LUA_MEMORY)
		lua_gc(L, LUA_GCCOLLECT, 0);

	bool failed = st != SVC_LUA_OK;
	bool permanent = false;
	char *err = c->pending_error;
	err[0] = '\0';
	char status[16] = "ok";
	char reason[512] = "";
	if (failed) {
		if (st == SVC_LUA_ERROR && lua_type(L, -1) == LUA_TTABLE) {
			lua_pushliteral(L, "permanent");
			lua_rawget(L, -2);
			permanent = lua_toboolean(L, -1);
			lua_pop(L, 1);
		}
		svc_lua_error_text(L, err, sizeof(c->pending_error));
	} else {
		const char *s = lua_tostring(L, -2);
		const char *r = lua_tostring(L, -1);
		if (s)
			snprintf(status, sizeof(status), "%s", s);
		if (r)
			snprintf(reason, sizeof(reason), "%s", r);
		lua_pop(L, 2);
	}
	lua_settop(L, top);
	if (c->ref_clearctx != LUA_NOREF)
		call_helper(c, c->ref_clearctx, 0, "events._clear_context");
	if (c->ref_leave != LUA_NOREF && c->ref_conn != LUA_NOREF)
		call_helper(c, c->ref_leave, 0, "db._leave_host");

	bool touched = end_message(c);
	if (touched && PQstatus(c->pg) != CONNECTION_OK) {
		snprintf(c->pgerr, sizeof(c->pgerr), "connection lost during a handler");
		return SVC_ECONN;
	}
	if (touched && !failed && !svc_pg_poisoned(c->pg) &&
	    PQtransactionStatus(c->pg) == PQTRANS_INERROR) {
		failed = true;
		snprintf(
		    err, sizeof(c->pending_error),
		    "the handler left the transaction aborted (a failed statement was caught): "
		    "its work is rolled back");
	}
	bool undo = failed || !(strcmp(status, "ok") == 0 || strcmp(status, "skipped") == 0 ||
	                        strcmp(status, "unrouted") == 0);
	if (c->pg && undo && svc_pg_flush_count(c->pg) != flushes) {
		/* Outbox rows were written during this message (a cancel, or a full buffer), some
		 * perhaps its own, outside its savepoint: only a whole rollback undoes them. */
		if (c->batch_n == 1) {
			c->in_tx = c->sp_open = false;
			svc_pg_transaction_reset(c->pg);
			rc = pg_cmd(c, "ROLLBACK");
			if (rc)
				return rc;
			touched = false;
		} else {
			svc_pg_poison(c->pg, "rows of a failed message were already written");
		}
	}
	if (c->pg && svc_pg_poisoned(c->pg)) {
		/* An outbox row of this batch could not be written (or cannot be undone): any
		 * message's work may be wrong, so none of it commits. commit_batch rolls back and
		 * requeues the batch (this message too, unblamed), then commits one at a time. */
		return commit_batch(c);
	}
	if (touched && undo) {
		rc = pg_cmd(c, "ROLLBACK TO SAVEPOINT svc_msg");
		if (rc)
			return rc;
	}
	if (c->pg && undo)
		svc_pg_deferred_truncate(c->pg, mark); /* its outbox rows were never sent */

	if (failed) {
		char handler[256];
		last_handler(c, handler, sizeof(handler));
		return handle_failure(c, d, exchange, routing_key, attempt, permanent,
		                      handler[0] ? handler : NULL, err);
	}
	if (strcmp(status, "ok") == 0) {
		c->ok++;
	} else if (strcmp(status, "skipped") == 0) {
		c->skipped++;
		svc_info(LOG, "message %s (%s %s) skipped%s%s", d->message_id ? d->message_id : "-",
		         exchange, routing_key, reason[0] ? ": " : "", reason);
	} else if (strcmp(status, "unrouted") == 0) {
		c->unrouted++;
		if (strcmp(cfg->unrouted, "dead-letter") == 0) {
			svc_warn(LOG, "message %s: %s: dead-lettered",
			         d->message_id ? d->message_id : "-", reason);
			return dead_letter(c, d, exchange, routing_key, attempt, "unrouted", NULL,
			                   reason);
		}
		svc_warn(LOG, "message %s: %s: acked", d->message_id ? d->message_id : "-", reason);
	} else {
		/* "malformed": name the kind for the x-svccomm-reason header */
		snprintf(text, sizeof(text), "%s",
		         strstr(reason, "nested") || strstr(reason, "depth") ? "too-deep"
		         : strncmp(reason, "invalid JSON", 12) == 0          ? "invalid-json"
		                                                             : status);
		svc_warn(LOG, "message %s (%s %s) %s: %s: dead-lettered",
		         d->message_id ? d->message_id : "-", exchange, routing_key, text, reason);
		return dead_letter(c, d, exchange, routing_key, attempt, text, NULL, reason);
	}
	return 0;
}

/* Commits the open batch and acks it. Returns 0, or SVC_ECONN when a connection is lost
 * (then nothing is acked: the session ends and the broker redelivers). */
static int commit_batch(struct svc_consumer *c)
{
	int rc = 0;
	if (c->batch_n == 0)
		return 0;
	if (c->batch_gen != c->generation) {
		/* tags of an older channel: never ack them */
		c->batch_n = 0;
		return 0;
	}
	bool commit_failed = false;
	if (c->pg && c->in_tx) {
		/* the outbox rows of the batch, in one statement; a failure poisons the batch */
		char ferr[256];
		svc_pg_flush(c->pg, ferr, sizeof(ferr), NULL);
	}
	const char *poison = c->pg ? svc_pg_poisoned(c->pg) : NULL;
	if (c->pg && poison) {
		char why[sizeof(c->pgerr)];
		snprintf(why, sizeof(why), "writing the batch's outbox rows: %s", poison);
		c->in_tx = false;
		c->sp_open = false;
		svc_pg_transaction_reset(c->pg); /* poison points into it: copied above */
		rc = pg_cmd(c, "ROLLBACK");
		if (rc == SVC_ECONN)
			return rc;
		snprintf(c->pgerr, sizeof(c->pgerr), "%s", why);
		commit_failed = true;
	} else if (c->pg && c->in_tx) {
		PGresult *r = PQexec(c->pg, "COMMIT");
		c->in_tx = false;
		c->sp_open = false;
		svc_pg_transaction_reset(c->pg);
		if (PQresultStatus(r) != PGRES_COMMAND_OK ||
		    strcmp(PQcmdStatus(r), "COMMIT") != 0) {
			if (PQresultStatus(r) == PGRES_COMMAND_OK) {
				PQclear(r);
				snprintf(c->pgerr, sizeof(c->pgerr),
				         "COMMIT: the transaction was rolled back");
				rc = SVC_EDB;
			} else {
				rc = pg_fail(c, r, "COMMIT");
			}
			if (rc == SVC_ECONN)
				return rc;
			commit_failed = true;
		} else {
			PQclear(r);
		}
	}
	if (!commit_failed) {
		rc = svc_amqp_consumer_ack(&c->cs, c->tags[c->batch_n - 1], true);
		if (c->solo)
			c->solo--;
		c->batch_n = 0;
		return rc;
	}

	svc_warn(LOG, "%s: %zu message(s) go back to the queue", c->pgerr, c->batch_n);
	if (c->batch_n == 1 && c->solo && !c->settled[0] && c->d.tag == c->tags[0]) {
		/* committed alone and failed again: this message is the cause */
		char handler[256];
		const struct svc_delivery *d = &c->d;
		const struct svc_delivery_header *hx = svc_delivery_header(d, "x-svccomm-exchange");
		const struct svc_delivery_header *hr =
		    svc_delivery_header(d, "x-svccomm-routing-key");
		const char *ex = hx && hr ? hx->str : d->exchange;
		const char *rk = hx && hr ? hr->str : d->routing_key;
		last_handler(c, handler, sizeof(handler));
		rc = handle_failure(c, d, ex, rk, svc_consumer_attempt(d), false,
		                    handler[0] ? handler : NULL, c->pgerr);
		if (rc)
			return rc;
		c->solo--;
		rc = svc_amqp_consumer_ack(&c->cs, c->tags[0], false);
		c->batch_n = 0;
		return rc;
	}
	/* Nothing of the batch is committed: requeue what depends on the commit, ack what
	 * was already republished (retry/DLQ). Then commit one by one to find the culprit.
	 * The connections are fine: the session goes on. */
	rc = 0;
	for (size_t i = 0; i < c->batch_n && rc == 0; i++)
		rc = c->settled[i] ? svc_amqp_consumer_ack(&c->cs, c->tags[i], false)
		                   : svc_amqp_consumer_nack(&c->cs, c->tags[i], false, true);
	c->solo = c->batch_n;
	c->batch_n = 0;
	return rc;
}

static void stats_line(struct svc_consumer *c, double now)
{
	double dt = now - c->last_stats;
	double rate = dt > 0 ? (double)(c->received - c->last_received) / dt : 0;
	svc_info(LOG,
	         "stats: received=%llu ok=%llu retried=%llu dead_lettered=%llu unrouted=%llu "
	         "duplicates=%llu skipped=%llu rate=%.1f/s",
	         c->received, c->ok, c->retried, c->dead, c->unrouted, c->dup, c->skipped, rate);
	c->last_stats = now;
	c->last_received = c->received;
}

/* Housekeeping between messages. idle: nothing is waiting, so a broker round trip is cheap.
 * Returns 0, or SVC_EPROTO when the queue vanished. The broker normally says so with a
 * basic.cancel (amqp_conn announces consumer_cancel_notify); the passive check is the safety
 * net for a cancel that never comes. */
static int idle_work(struct svc_consumer *c, bool idle)
{
	double now = now_s();
	if (c->cfg->stats_interval > 0 && now - c->last_stats >= c->cfg->stats_interval)
		stats_line(c, now);
	if (now - c->last_out_poll >= 1.0) {
		/* let rabbitmq-c answer heartbeats on the otherwise idle publishing connection */
		struct svc_amqp_confirm conf[8];
		size_t n = 0;
		c->last_out_poll = now;
		if (svc_amqp_is_open(c->out) &&
		    svc_amqp_poll_confirms(c->out, 0, conf, 8, &n, NULL, NULL) == SVC_ECONN)
			svc_amqp_close(c->out);
	}
	if (c->pg && c->cfg->inbox && !c->in_tx && now - c->last_cleanup >= INBOX_CLEANUP_EVERY) {
		c->last_cleanup = now;
		inbox_cleanup(c);
	}
	if (idle && !c->batch_n && now - c->last_queue_check >= QUEUE_CHECK_EVERY) {
		c->last_queue_check = now;
		if (svc_amqp_declare_queue(c->in, c->cfg->queue, amqp_empty_table, true) != 0) {
			snprintf(c->cs.err, sizeof(c->cs.err), "queue '%s' is gone: %s",
			         c->cfg->queue, svc_amqp_error(c->in));
			return SVC_EPROTO;
		}
	}
	return 0;
}

static void end_session(struct svc_consumer *c)
{
	if (c->pg)
		svc_pg_transaction_reset(c->pg);
	if (c->pg && c->in_tx && PQstatus(c->pg) == CONNECTION_OK)
		pg_cmd(c, "ROLLBACK");
	c->batch_n = 0;
	/* closing the channel returns every unacked delivery to the queue */
	svc_amqp_close(c->in);
	svc_amqp_close(c->out);
	c->cs.active = false;
	pg_disconnect(c);
}

/* One connected session. Returns 0 on a requested stop, SVC_ECONFIG when the settings cannot
 * work, another negative code when a connection failed (reconnect). */
static int session(struct svc_consumer *c, unsigned *failures)
{
	const struct svc_config *cfg = c->cfg;
	int rc;
	char name[128];

	c->generation++;
	if (cfg->database_url) {
		rc = pg_connect(c);
		if (rc) {
			svc_error(LOG, "PostgreSQL: %s", c->pgerr);
			return rc;
		}
	}
	snprintf(name, sizeof(name), "svccomm consumer %s", cfg->queue);
	rc = svc_amqp_connect(c->in, cfg->broker_url, (int)cfg->heartbeat, name);
	if (rc) {
		svc_error(LOG, "RabbitMQ: %s", svc_amqp_error(c->in));
		goto out;
	}
	rc = connect_out(c);
	if (rc)
		goto out;
	rc = declare_topology(c);
	if (rc)
		goto out;
	long pf = cfg->prefetch_count;
	rc = svc_amqp_consumer_qos(&c->cs, c->in, (uint16_t)(pf > 65535 ? 65535 : pf < 0 ? 0 : pf));
	if (rc == 0)
		rc = svc_amqp_consumer_start(&c->cs, c->in, cfg->queue);
	if (rc) {
		svc_error(LOG, "consuming '%s': %s", cfg->queue, c->cs.err);
		goto out;
	}
	c->connected_once = true;
	c->last_queue_check = now_s();
	*failures = 0;
	svc_info(LOG, "consuming '%s' (prefetch %ld%s)", cfg->queue, pf,
	         cfg->database_url ? ", transactional" : "");

	for (;;) {
		if (svc_consumer_stop) {
			rc = commit_batch(c);
			if (rc == 0) {
				svc_amqp_consumer_cancel(&c->cs);
				svc_info(LOG, "stopped: last batch committed and acked");
			}
			goto out;
		}
		int wait = c->batch_n ? 0 : IDLE_TICK_MS;
		rc = svc_amqp_consumer_next(&c->cs, &c->d, (size_t)cfg->max_message_bytes, wait);
		if (rc == SVC_ETIMEOUT) {
			/* nothing waiting: commit what we have */
			rc = commit_batch(c);
			if (rc)
				goto lost;
			rc = idle_work(c, true);
			if (rc) {
				svc_warn(LOG, "%s: reconnecting", c->cs.err);
				goto out;
			}
			continue;
		}
		if (rc) {
			if (c->cs.cancelled)
				svc_warn(LOG, "%s (queue deleted?): reconnecting", c->cs.err);
			else
				svc_error(LOG, "RabbitMQ: %s", c->cs.err);
			goto out;
		}
		rc = process(c, &c->d);
		if (rc)
			goto lost;
		size_t limit = c->solo ? 1 : c->limit;
		if (svc_consumer_should_commit(c->batch_n, limit, now_s() - c->batch_start,
		                               cfg->consumer_commit_interval)) {
			rc = commit_batch(c);
			if (rc)
				goto lost;
		}
		if (c->received % 1024 == 0)
			idle_work(c, false);
	}
lost:
	if (rc == SVC_ECONN && c->pg && PQstatus(c->pg) != CONNECTION_OK)
		svc_error(LOG, "PostgreSQL: %s: unacked messages go back to the queue", c->pgerr);
	else if (c->pg && c->pgerr[0] && rc == SVC_EDB)
		svc_error(LOG, "PostgreSQL: %s", c->pgerr);
	else
		svc_error(LOG, "RabbitMQ: %s (%s): unacked messages go back to the queue",
		          svc_strerror(rc), c->cs.err[0] ? c->cs.err : svc_amqp_error(c->in));
	if (rc == 0)
		rc = SVC_ECONN;
out:
	end_session(c);
	return rc;
}

int svc_consumer_run(const struct svc_config *cfg, struct svc_runtime *rt, int worker)
{
	struct svc_consumer c;
	int exit_code = SVC_EXIT_FAILURE;
	unsigned failures = 0;

	memset(&c, 0, sizeof(c));
	c.cfg = cfg;
	c.rt = rt;
	c.L = svc_runtime_state(rt);
	c.worker = worker;
	c.ref_conn = LUA_NOREF;
	if (!cfg->queue) {
		svc_error(LOG, "settings.lua: QUEUE: required by runconsumer, not set");
		return SVC_EXIT_USAGE;
	}
	if (svc_consumer_dlq_name(cfg->queue, c.dlq, sizeof(c.dlq)) != 0) {
		svc_error(LOG, "QUEUE: name too long");
		return SVC_EXIT_USAGE;
	}
	if (cfg->inbox) {
		if (!cfg->database_url) {
			svc_error(LOG, "settings.lua: INBOX: needs DATABASE_URL");
			return SVC_EXIT_USAGE;
		}
		if (svc_consumer_quote_ident(cfg->inbox_table, c.inbox_table,
		                             sizeof(c.inbox_table)) != 0) {
			svc_error(LOG, "settings.lua: INBOX_TABLE: not a valid identifier");
			return SVC_EXIT_USAGE;
		}
		snprintf(
		    c.inbox_sql, sizeof(c.inbox_sql),
		    "INSERT INTO %s (queue, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
		    c.inbox_table);
		snprintf(c.cleanup_sql, sizeof(c.cleanup_sql),
		         "DELETE FROM %s WHERE ctid IN (SELECT ctid FROM %s WHERE received_at < "
		         "now() - make_interval(secs => $1::float8) LIMIT " INBOX_CLEANUP_BATCH ")",
		         c.inbox_table, c.inbox_table);
	}
	long pf = cfg->prefetch_count;
	c.limit = pf <= 0 ? 1000 : pf > MAX_BATCH ? MAX_BATCH : (size_t)pf;
	if (!cfg->database_url) /* no COMMIT to amortize: ack early, keep the window full */
		c.limit = c.limit >= 4 ? c.limit / 4 : 1;
	c.tags = calloc(c.limit + 1, sizeof(*c.tags));
	c.settled = calloc(c.limit + 1, sizeof(*c.settled));
	c.delay_ms = calloc(cfg->n_retry_delays + 1, sizeof(*c.delay_ms));
	c.in = svc_amqp_new();
	c.out = svc_amqp_new();
	if (!c.tags || !c.settled || !c.delay_ms || !c.in || !c.out) {
		svc_error(LOG, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < cfg->n_retry_delays; i++)
		c.delay_ms[i] = svc_consumer_delay_ms(cfg->retry_delays[i]);
	if (lua_setup(&c) != 0)
		goto out;
	if (cfg->lua_memory_limit_mb > 0)
		svc_runtime_set_memory_limit(rt, (size_t)cfg->lua_memory_limit_mb << 20);

	svc_consumer_stop = 0;
	install_signals(cfg->shutdown_timeout);
	srand((unsigned)getpid() ^ (unsigned)time(NULL));
	c.last_stats = c.last_cleanup = now_s();
	c.last_cleanup -= INBOX_CLEANUP_EVERY; /* first cleanup soon after start */

	while (!svc_consumer_stop) {
		int rc = session(&c, &failures);
		if (svc_consumer_stop)
			break;
		if (rc == SVC_ECONFIG && !c.connected_once) {
			exit_code = SVC_EXIT_USAGE;
			goto out;
		}
		failures++;
		double delay = svc_consumer_backoff(failures, cfg->reconnect_max_delay,
		                                    (double)rand() / ((double)RAND_MAX + 1.0));
		svc_info(LOG, "reconnecting in %.1f s (attempt %u)", delay, failures);
		nap(delay);
	}
	stats_line(&c, now_s());
	exit_code = SVC_EXIT_OK;
out:
	alarm(0);
	if (c.in)
		svc_amqp_free(c.in);
	if (c.out)
		svc_amqp_free(c.out);
	svc_delivery_release(&c.d);
	free(c.tags);
	free(c.settled);
	free(c.delay_ms);
	return exit_code;
}
