/* lua_bridge: every call the consumer makes into Lua. The functions are kept as registry
 * references taken once (dispatch.handle, dispatch.last_handler, db._enter_host/_leave_host,
 * events._set_context/_clear_context); each call goes through svc_lua_pcall, and everything
 * pushed for a handler is pushed inside the protected call, where a memory error is caught. */
#include "consumer/internal.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "lua/core.h"
#include "lua/pg.h"
#include "util/error.h"
#include "util/log.h"

/* The function field `name` of the table on top of the stack as a reference, or LUA_NOREF. */
static int ref_field(lua_State *L, const char *name)
{
	lua_getfield(L, -1, name);
	if (lua_type(L, -1) != LUA_TFUNCTION) {
		lua_pop(L, 1);
		return LUA_NOREF;
	}
	return luaL_ref(L, LUA_REGISTRYINDEX);
}

int svc_consumer_lua_setup(struct svc_consumer *c)
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
	/* From here on a handler's os.exit raises: exit statuses belong to the process (2 means
	 * a configuration error), and a handler bug must fail only its message. */
	svc_runtime_forbid_exit(c->rt, true);
	return 0;
}

/* Whether text[i] may start a file name in an error text or a handler id (a position after
 * "app:", a space, a tab, a quote or a bracket), so that only whole names are shortened. */
static bool name_starts(const char *text, size_t i)
{
	return i == 0 || strchr(" \t\n:'\"(<[@", text[i - 1]) != NULL;
}

/* Removes "..." + the longest start of the name at p + 3 that ends the project directory's
 * prefix: Lua shortens long file names in error positions to "..." and their last 56 bytes, so
 * "...ects/orders/apps/orders/consumers.lua:12" becomes "apps/orders/consumers.lua:12". */
static void shorten_truncated(char *p, const char *prefix, size_t n)
{
	const char *name = p + 3;
	size_t cut = 0;

	for (size_t j = 1; j <= n && name[j - 1] && !strchr(" \t\n:'\"", name[j - 1]); j++)
		if (name[j - 1] == '/' && memcmp(prefix + n - j, name, j) == 0)
			cut = j;
	if (cut)
		memmove(p, name + cut, strlen(name + cut) + 1);
}

/* Shortens every file name under the project directory in text to its project-relative form
 * ("/srv/app/apps/orders/consumers.lua:12" -> "apps/orders/consumers.lua:12"): error texts and
 * handler ids leave the process in dead-letter headers, and absolute paths tell readers of the
 * DLQ about the host. */
static void relative_paths(const char *dir, char *text)
{
	char prefix[1024];
	size_t n;

	if (!dir || !*dir || strcmp(dir, "/") == 0)
		return;
	n = (size_t)snprintf(prefix, sizeof(prefix), "%s%s", dir,
	                     dir[strlen(dir) - 1] == '/' ? "" : "/");
	if (n >= sizeof(prefix))
		return;
	for (char *p = strstr(text, prefix); p; p = strstr(p, prefix)) {
		if (name_starts(text, (size_t)(p - text)))
			memmove(p, p + n, strlen(p + n) + 1);
		else
			p++;
	}
	for (char *p = strstr(text, "..."); p; p = strstr(p + 1, "..."))
		if (name_starts(text, (size_t)(p - text)))
			shorten_truncated(p, prefix, n);
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

/* Pushes message.properties.headers: every header with a Lua form. */
static void push_headers(lua_State *L, const struct svc_delivery *d)
{
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
}

/* Pushes message.properties of a delivery: its AMQP properties and every header with a Lua
 * form. */
static void push_properties(lua_State *L, const struct svc_delivery *d)
{
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
	push_headers(L, d);
	lua_setfield(L, -2, "headers");
}

/* Registry keys (their addresses): the metatable of message tables, and the message table of
 * the handler that runs now (false between handlers). */
static const char message_mt_key = 'm';
static const char current_message_key = 'c';

/* __index of a message table: builds message.properties on first access, which most handlers
 * never make (a table, a header table and up to a dozen strings per message saved). The
 * delivery lives only while its handler runs, so a message table kept for later has no
 * properties to build: reading them then is an error, not a silent nil. */
static int message_index(lua_State *L)
{
	struct svc_consumer *c = lua_touserdata(L, lua_upvalueindex(1));
	const char *k = lua_tostring(L, 2);
	if (lua_type(L, 2) != LUA_TSTRING || strcmp(k, "properties") != 0)
		return 0;
	lua_rawgetp(L, LUA_REGISTRYINDEX, &current_message_key);
	if (!c->cur_msg || !lua_rawequal(L, 1, -1))
		return luaL_error(L, "message.properties read after its handler returned: read it "
		                     "inside the handler (local p = message.properties)");
	push_properties(L, c->cur_msg->d);
	lua_pushvalue(L, -1);
	lua_setfield(L, 1, "properties"); /* rawset: the table has no __newindex */
	return 1;
}

/* Pushes the metatable of message tables, made once per Lua state. */
static void push_message_mt(lua_State *L, struct svc_consumer *c)
{
	if (lua_rawgetp(L, LUA_REGISTRYINDEX, &message_mt_key) == LUA_TTABLE)
		return;
	lua_pop(L, 1);
	lua_createtable(L, 0, 1);
	lua_pushlightuserdata(L, c);
	lua_pushcclosure(L, message_index, 1);
	lua_setfield(L, -2, "__index");
	lua_pushvalue(L, -1);
	lua_rawsetp(L, LUA_REGISTRYINDEX, &message_mt_key);
}

/* Pushes the message table the handler receives; `properties` comes on first access. */
static void push_message(lua_State *L, struct svc_consumer *c, const struct svc_consumer_msg *m)
{
	const struct svc_delivery *d = m->d;
	lua_createtable(L, 0, 8);
	set_str(L, "exchange", m->exchange);
	set_str(L, "routing_key", m->routing_key);
	lua_pushboolean(L, d->redelivered);
	lua_setfield(L, -2, "redelivered");
	lua_pushinteger(L, m->attempt);
	lua_setfield(L, -2, "attempt");
	set_str(L, "correlation_id", d->correlation_id);
	set_str(L, "message_id", d->message_id);
	lua_pushinteger(L, (lua_Integer)d->tag);
	lua_setfield(L, -2, "delivery_tag");
	push_message_mt(L, c);
	lua_setmetatable(L, -2);
	lua_pushvalue(L, -1);
	lua_rawsetp(L, LUA_REGISTRYINDEX, &current_message_key);
	c->cur_msg = m;
}

struct invoke_ctx {
	struct svc_consumer *c;
	const struct svc_consumer_msg *m;
	bool ctx_set; /* events._set_context was called: clear it afterwards */
};

/* Runs under svc_lua_pcall: lends the connection, sets the correlation context, builds the
 * arguments and calls dispatch.handle(exchange, routing_key, body, message) -> 2 values. */
static int invoke_handler(lua_State *L)
{
	struct invoke_ctx *ic = lua_touserdata(L, 1);
	struct svc_consumer *c = ic->c;
	const struct svc_delivery *d = ic->m->d;

	if (c->ref_conn != LUA_NOREF && c->ref_enter != LUA_NOREF) {
		lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref_enter);
		lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref_conn);
		lua_pushboolean(L, c->cfg->consumer_pipeline);
		lua_call(L, 2, 0);
	}
	const struct svc_delivery_header *tp = svc_delivery_header(d, "traceparent");
	if (tp && tp->kind != 's')
		tp = NULL;
	/* Without a correlation id or a traceparent there is no context to set: the last one was
	 * cleared after its handler. */
	if (c->ref_setctx != LUA_NOREF && (d->correlation_id || tp)) {
		lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref_setctx);
		lua_createtable(L, 0, 2);
		set_str(L, "correlation_id", d->correlation_id);
		if (tp)
			set_str(L, "traceparent", tp->str);
		lua_call(L, 1, 0);
		ic->ctx_set = true;
	}
	/* svccomm.log attaches it to the handler's lines (lua/core.c). */
	lua_pushstring(L, MSG_ID(d));
	lua_setfield(L, LUA_REGISTRYINDEX, SVC_LUA_MESSAGE_ID_KEY);
	lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref_handle);
	lua_pushstring(L, ic->m->exchange);
	lua_pushstring(L, ic->m->routing_key);
	lua_pushlstring(L, d->body, d->body_len);
	push_message(L, c, ic->m);
	lua_call(L, 4, 2);
	return 2;
}

/* Reads the outcome left on the stack by the protected call that returned st. */
static void read_result(struct svc_consumer *c, enum svc_lua_status st,
                        struct svc_handler_result *res)
{
	lua_State *L = c->L;
	res->failed = st != SVC_LUA_OK;
	res->permanent = false;
	c->pending_error[0] = '\0';
	snprintf(res->status, sizeof(res->status), "ok");
	res->reason[0] = '\0';
	if (res->failed) {
		if (st == SVC_LUA_ERROR && lua_type(L, -1) == LUA_TTABLE) {
			lua_pushliteral(L, "permanent");
			lua_rawget(L, -2);
			res->permanent = lua_toboolean(L, -1);
			lua_pop(L, 1);
		}
		svc_lua_error_text(L, c->pending_error, sizeof(c->pending_error));
		relative_paths(c->cfg->dir, c->pending_error);
		return;
	}
	const char *s = lua_tostring(L, -2);
	const char *r = lua_tostring(L, -1);
	if (s)
		snprintf(res->status, sizeof(res->status), "%s", s);
	if (r)
		snprintf(res->reason, sizeof(res->reason), "%s", r);
	lua_pop(L, 2);
}

/* The SQLSTATE of the first statement on the lent connection that failed for the database's
 * reasons since the last call (a handler may have caught it and raised another error). */
static void take_infra(struct svc_consumer *c, char sqlstate[6])
{
	sqlstate[0] = '\0';
	if (c->ref_conn == LUA_NOREF)
		return;
	lua_rawgeti(c->L, LUA_REGISTRYINDEX, c->ref_conn);
	svc_lua_pg_take_infra(c->L, -1, sqlstate);
	lua_pop(c->L, 1);
}

void svc_consumer_lua_handle(struct svc_consumer *c, const struct svc_consumer_msg *m,
                             struct svc_handler_result *res)
{
	lua_State *L = c->L;
	struct invoke_ctx ic = {c, m, false};
	int top = lua_gettop(L);

	take_infra(c, res->infra); /* forget what an earlier message's statements left */
	lua_pushcfunction(L, invoke_handler);
	lua_pushlightuserdata(L, &ic);
	enum svc_lua_status st = svc_lua_pcall(c->rt, 1, 2, c->cfg->handler_timeout);
	if (st == SVC_LUA_MEMORY) {
		lua_gc(L, LUA_GCCOLLECT, 0);
		c->lua_recycle = true; /* what leaked may still be reachable: start afresh */
	}
	read_result(c, st, res);
	lua_settop(L, top);
	/* The delivery is about to go: message.properties can no longer be built. The key exists
	 * once push_message ran (inside the protected call), so this allocates nothing. */
	if (c->cur_msg) {
		c->cur_msg = NULL;
		lua_pushboolean(L, 0);
		lua_rawsetp(L, LUA_REGISTRYINDEX, &current_message_key);
	}
	/* false, not nil: the key stays in the registry, so resetting it allocates nothing and
	 * cannot raise outside a protected call. */
	lua_pushboolean(L, 0);
	lua_setfield(L, LUA_REGISTRYINDEX, SVC_LUA_MESSAGE_ID_KEY);
	char infra[6];
	take_infra(c, infra);
	if (res->failed)
		memcpy(res->infra, infra, sizeof(infra));
	if (ic.ctx_set && c->ref_clearctx != LUA_NOREF)
		call_helper(c, c->ref_clearctx, 0, "events._clear_context");
	if (c->ref_leave != LUA_NOREF && c->ref_conn != LUA_NOREF)
		call_helper(c, c->ref_leave, 0, "db._leave_host");
}

void svc_consumer_lua_last_handler(struct svc_consumer *c, char *out, size_t outsz)
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
	relative_paths(c->cfg->dir, out);
}

static int push_lent_conn(lua_State *L)
{
	return svc_lua_pg_push(L, lua_touserdata(L, 1), false);
}

int svc_consumer_lua_lend(struct svc_consumer *c)
{
	lua_pushcfunction(c->L, push_lent_conn);
	lua_pushlightuserdata(c->L, c->pg.conn);
	if (svc_lua_pcall(c->rt, 1, 1, 0) != SVC_LUA_OK) {
		svc_lua_error_text(c->L, c->pg.error, sizeof(c->pg.error));
		return SVC_ELUA;
	}
	c->ref_conn = luaL_ref(c->L, LUA_REGISTRYINDEX);
	return 0;
}

void svc_consumer_lua_unlend(struct svc_consumer *c)
{
	if (c->ref_conn == LUA_NOREF)
		return;
	/* a handler may have kept the userdata: make it raise instead of using freed memory */
	lua_rawgeti(c->L, LUA_REGISTRYINDEX, c->ref_conn);
	svc_lua_pg_detach(c->L, -1);
	lua_pop(c->L, 1);
	luaL_unref(c->L, LUA_REGISTRYINDEX, c->ref_conn);
	c->ref_conn = LUA_NOREF;
}

/* Loads settings and apps into the fresh state of c->rt, as the start of the process did;
 * 0 or SVC_ELUA with err filled. */
static int reload_apps(struct svc_consumer *c, const char *keep, char *err, size_t errsz)
{
	struct svc_config cfg;
	lua_State *L = c->L;

	if (svc_config_load(L, c->cfg->path, &cfg, err, errsz) != 0)
		return SVC_ELUA;
	svc_config_release(&cfg);
	if (svc_runtime_require(c->rt, "svccomm.host", err, errsz) != 0)
		return SVC_ELUA;
	lua_getfield(L, -1, "load_apps");
	lua_remove(L, -2);
	if (keep)
		lua_pushstring(L, keep);
	if (svc_lua_pcall(c->rt, keep ? 1 : 0, 2, 0) != SVC_LUA_OK) {
		svc_lua_error_text(L, err, errsz);
		return SVC_ELUA;
	}
	int rc = lua_toboolean(L, -2) ? 0 : SVC_ELUA;
	if (rc)
		snprintf(err, errsz, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
	lua_pop(L, 2);
	return rc;
}

/* Bytes in use after a full collection, when the state is near its cap (else 0): above 3/4
 * of it, and above half-way from what a fresh state used to the cap (apps that are large by
 * design are not replaced after every message). */
static size_t near_limit(struct svc_consumer *c)
{
	size_t limit = svc_runtime_memory_limit(c->rt), fresh = c->lua_fresh_bytes;

	if (!limit || svc_runtime_memory_used(c->rt) < limit / 10 * 9)
		return 0;
	lua_gc(c->L, LUA_GCCOLLECT, 0);
	size_t used = svc_runtime_memory_used(c->rt);
	if (used < limit / 4 * 3 || (fresh < limit && used < fresh + (limit - fresh) / 2))
		return 0;
	return used;
}

bool svc_consumer_lua_wants_recycle(struct svc_consumer *c)
{
	if (!c->lua_recycle && near_limit(c))
		c->lua_recycle = true;
	return c->lua_recycle;
}

int svc_consumer_lua_recycle(struct svc_consumer *c)
{
	char err[4096];
	size_t used = svc_runtime_memory_used(c->rt), limit = svc_runtime_memory_limit(c->rt);
	bool lent = c->ref_conn != LUA_NOREF;

	c->lua_recycle = false;
	svc_consumer_lua_unlend(c);
	if (svc_runtime_renew(c->rt, err, sizeof(err)) != 0) {
		svc_error(LOG, "cannot replace the Lua state: %s", err);
		return SVC_ENOMEM;
	}
	c->L = svc_runtime_state(c->rt);
	int rc = reload_apps(c, NULL, err, sizeof(err));
	if (rc == 0)
		rc = svc_consumer_lua_setup(c);
	if (rc == 0 && lent)
		rc = svc_consumer_lua_lend(c);
	if (rc) {
		svc_error(LOG, "replacing the Lua state: %s", err);
		return rc;
	}
	lua_gc(c->L, LUA_GCCOLLECT, 0);
	c->lua_fresh_bytes = svc_runtime_memory_used(c->rt);
	svc_warn(LOG,
	         "Lua state replaced after a memory error or near LUA_MEMORY_LIMIT_MB (%zu of %zu "
	         "KiB in use): apps reloaded, connections kept",
	         used >> 10, limit >> 10);
	return 0;
}

/* The names of the apps the current state loaded, one per line (malloc'd), or NULL when they
 * cannot be read (then a reload checks nothing). */
static char *app_names(struct svc_consumer *c)
{
	char err[256];
	char *out = NULL;

	if (svc_runtime_require(c->rt, "svccomm.host", err, sizeof(err)) != 0)
		return NULL;
	lua_getfield(c->L, -1, "app_names");
	lua_remove(c->L, -2);
	if (svc_lua_pcall(c->rt, 0, 1, 0) == SVC_LUA_OK && lua_type(c->L, -1) == LUA_TSTRING)
		out = strdup(lua_tostring(c->L, -1));
	lua_pop(c->L, 1);
	return out;
}

int svc_consumer_lua_reload(struct svc_consumer *c, char *err, size_t errsz)
{
	int saved[7] = {c->ref_handle, c->ref_last_handler, c->ref_enter, c->ref_leave,
	                c->ref_setctx, c->ref_clearctx,     c->ref_conn};
	lua_State *old = c->L;
	char *keep = app_names(c);
	lua_State *L = svc_runtime_state_new(c->rt, err, errsz);

	if (!L) {
		free(keep);
		return SVC_ELUA;
	}
	svc_runtime_exchange(c->rt, L);
	c->L = L;
	int rc = reload_apps(c, keep, err, errsz);
	free(keep);
	if (rc == 0 && (rc = svc_consumer_lua_setup(c)) != 0)
		snprintf(err, errsz, "the svccomm modules did not load (see above)");
	if (rc == 0 && saved[6] != LUA_NOREF && (rc = svc_consumer_lua_lend(c)) != 0)
		snprintf(err, errsz, "%s", c->pg.error);
	if (rc) { /* the new state goes, the old one serves on as if nothing happened */
		svc_runtime_exchange(c->rt, old);
		lua_close(L);
		c->L = old;
		c->ref_handle = saved[0], c->ref_last_handler = saved[1], c->ref_enter = saved[2];
		c->ref_leave = saved[3], c->ref_setctx = saved[4], c->ref_clearctx = saved[5];
		c->ref_conn = saved[6];
		relative_paths(c->cfg->dir, err);
		return SVC_ELUA;
	}
	if (saved[6] != LUA_NOREF) { /* a handler may have kept the old userdata */
		lua_rawgeti(old, LUA_REGISTRYINDEX, saved[6]);
		svc_lua_pg_detach(old, -1);
		lua_pop(old, 1);
	}
	lua_close(old);
	lua_gc(c->L, LUA_GCCOLLECT, 0);
	c->lua_fresh_bytes = svc_runtime_memory_used(c->rt);
	return 0;
}
