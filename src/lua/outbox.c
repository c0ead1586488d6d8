/* lua/outbox: outbox writes and deferred rows for Lua. See outbox.h. */
#include "lua/outbox.h"

#include <string.h>

#include "lua/pg.h"
#include "outbox/batch.h"
#include "outbox/envelope.h"
#include "outbox/write.h"
#include "pg/conn.h"

/* Pushes row[key] and returns it as a string or NULL; the value stays on the stack. A zero
 * byte is refused: the row is written as C strings, so "a\0evil" would be stored as "a". */
static const char *row_field(lua_State *L, int row, const char *key)
{
	int t = lua_getfield(L, row, key);
	size_t len;
	const char *s;

	if (t == LUA_TNIL)
		return NULL;
	if (t != LUA_TSTRING)
		luaL_error(L, "outbox_insert: row.%s must be a string, got %s", key,
		           luaL_typename(L, -1));
	s = lua_tolstring(L, -1, &len);
	if (strlen(s) != len)
		luaL_error(L, "outbox_insert: row.%s contains a zero byte", key);
	return s;
}

/* A string argument without zero bytes (it is passed on as a C string). */
static const char *text_arg(lua_State *L, int idx)
{
	size_t len;
	const char *s = luaL_checklstring(L, idx, &len);

	if (strlen(s) != len)
		luaL_argerror(L, idx, "contains a zero byte");
	return s;
}

/* core.outbox_insert(conn, table, row) -> id, or nil for a deferred row */
static int l_outbox_insert(lua_State *L)
{
	PGconn *conn = svc_lua_pg_check(L, 1);
	const char *table = luaL_checkstring(L, 2);
	struct svc_outbox_row row;
	char err[SVC_PG_ERRSZ], st[6];
	long long id = 0;
	int rc;

	luaL_checktype(L, 3, LUA_TTABLE);
	memset(&row, 0, sizeof(row));
	row.exchange = row_field(L, 3, "exchange");
	row.routing_key = row_field(L, 3, "routing_key");
	row.body = row_field(L, 3, "body_rest");
	if (!row.body)
		row.body = row_field(L, 3, "body");
	lua_getfield(L, 3, "envelope");
	row.envelope = lua_toboolean(L, -1);
	lua_pop(L, 1);
	if (svc_wire_format_parse(row_field(L, 3, "wire_format"), &row.wire_format) != 0)
		return luaL_error(L,
		                  "outbox_insert: wire_format must be \"svccomm\" or \"django\"");
	row.event_time = row_field(L, 3, "event_time");
	row.send_after = row_field(L, 3, "send_after");
	row.message_id = row_field(L, 3, "message_id");
	row.correlation_id = row_field(L, 3, "correlation_id");
	row.headers_json = row_field(L, 3, "headers_json");
	row.tags_json = row_field(L, 3, "tags_json");
	row.id_sequence = row_field(L, 3, "id_sequence");
	if (!row.exchange || !row.routing_key || !row.body)
		return luaL_error(L,
		                  "outbox_insert: row needs exchange, routing_key and body_rest");
	rc = svc_outbox_insert_st(conn, table, &row, &id, err, sizeof(err), st);
	if (rc < 0) {
		svc_lua_pg_push_error(L, err, st);
		return lua_error(L);
	}
	if (id)
		lua_pushinteger(L, (lua_Integer)id);
	else
		lua_pushnil(L); /* deferred: the id is taken when the batch's rows are written */
	return 1;
}

/* core.outbox_cancel(conn, table, exchange, routing_key, tags_json) -> count */
static int l_outbox_cancel(lua_State *L)
{
	PGconn *conn = svc_lua_pg_check(L, 1);
	const char *table = luaL_checkstring(L, 2);
	const char *exchange = text_arg(L, 3);
	const char *rk = text_arg(L, 4);
	const char *tags = luaL_checkstring(L, 5);
	char err[SVC_PG_ERRSZ], st[6];
	long long n;

	n = svc_outbox_cancel(conn, table, exchange, rk, tags, err, sizeof(err), st);
	if (n < 0) {
		svc_lua_pg_push_error(L, err, st);
		return lua_error(L);
	}
	lua_pushinteger(L, (lua_Integer)n);
	return 1;
}

/* A JSON text argument (zero bytes cannot be in one). */
static const char *json_arg(lua_State *L, int idx)
{
	size_t len;
	const char *s = luaL_checklstring(L, idx, &len);

	if (strlen(s) != len)
		luaL_argerror(L, idx, "JSON text contains a zero byte");
	return s;
}

/* core.envelope_members(type_json, aggregate_json, payload_json[, wire_format]) -> members
 * object text */
static int l_envelope_members(lua_State *L)
{
	const char *type = json_arg(L, 1);
	const char *aggregate = json_arg(L, 2);
	const char *payload = json_arg(L, 3);
	enum svc_wire_format fmt;
	size_t n;
	luaL_Buffer b;
	char *out;

	if (svc_wire_format_parse(luaL_optstring(L, 4, NULL), &fmt) != 0)
		return luaL_argerror(L, 4, "must be \"svccomm\" or \"django\"");
	n = svc_envelope_members_as(fmt, type, aggregate, payload, NULL, 0);
	out = luaL_buffinitsize(L, &b, n + 1);
	svc_envelope_members_as(fmt, type, aggregate, payload, out, n + 1);
	luaL_pushresultsize(&b, n);
	return 1;
}

/* conn:_rows_mark() -> mark: writes the outbox rows deferred so far (the consumer's connection)
 * so none of them lands inside a savepoint about to open, and returns the position that
 * conn:_rows_drop(mark) goes back to when that savepoint is rolled back. */
static int conn_rows_mark(lua_State *L)
{
	PGconn *conn = svc_lua_pg_check(L, 1);
	char err[SVC_PG_ERRSZ], st[6];

	if (svc_outbox_flush(conn, err, sizeof(err), st) < 0) {
		svc_lua_pg_push_error(L, err, st);
		return lua_error(L);
	}
	lua_pushinteger(L, (lua_Integer)svc_outbox_deferred_mark(conn));
	return 1;
}

static int conn_rows_drop(lua_State *L)
{
	PGconn *conn = svc_lua_pg_check(L, 1);
	lua_Integer mark = luaL_checkinteger(L, 2);

	svc_outbox_deferred_truncate(conn, mark < 0 ? 0 : (size_t)mark);
	return 0;
}

const luaL_Reg svc_lua_outbox_conn_methods[] = {
    {"_rows_mark", conn_rows_mark},
    {"_rows_drop", conn_rows_drop},
    {NULL, NULL},
};

static const luaL_Reg outbox_funcs[] = {
    {"outbox_insert", l_outbox_insert},
    {"outbox_cancel", l_outbox_cancel},
    {"envelope_members", l_envelope_members},
    {NULL, NULL},
};

void svc_lua_outbox_open(lua_State *L)
{
	luaL_setfuncs(L, outbox_funcs, 0);
}
