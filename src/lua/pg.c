/* lua/pg: the PostgreSQL binding of svccomm.core. See pg.h. */
#include "lua/pg.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua/outbox.h"
#include "pg/conn.h"
#include "pg/errclass.h"
#include "util/error.h"
#include "util/numfmt.h"

#define CONN_MT   "svccomm.pg.conn"
#define RESULT_MT "svccomm.pg.result"
#define ERROR_MT  "svccomm.pg.error"

/* PostgreSQL type OIDs (pg_type.dat); stable across versions. */
enum {
	OID_BOOL = 16,
	OID_BYTEA = 17,
	OID_INT8 = 20,
	OID_INT2 = 21,
	OID_INT4 = 23,
	OID_TEXT = 25,
	OID_OID = 26,
	OID_JSON = 114,
	OID_FLOAT4 = 700,
	OID_FLOAT8 = 701,
	OID_BPCHAR = 1042,
	OID_VARCHAR = 1043,
	OID_DATE = 1082,
	OID_TIME = 1083,
	OID_TIMESTAMP = 1114,
	OID_TIMESTAMPTZ = 1184,
	OID_NUMERIC = 1700,
	OID_UUID = 2950,
	OID_JSONB = 3802,
};

struct lconn {
	PGconn *conn; /* NULL once closed or detached */
	bool owned;
	char infra[6]; /* SQLSTATE of the first infrastructure failure (pg/errclass), or "" */
};

/* Holds a PGresult while it is turned into Lua values, so a Lua error (memory) in between
 * cannot leak it: __gc clears whatever is still held. */
struct lresult {
	PGresult *res;
};

static const char *type_name(Oid oid)
{
	switch (oid) {
	case OID_BOOL:
		return "bool";
	case OID_BYTEA:
		return "bytea";
	case OID_INT8:
		return "int8";
	case OID_INT2:
		return "int2";
	case OID_INT4:
		return "int4";
	case OID_TEXT:
		return "text";
	case OID_OID:
		return "oid";
	case OID_JSON:
		return "json";
	case OID_FLOAT4:
		return "float4";
	case OID_FLOAT8:
		return "float8";
	case OID_BPCHAR:
		return "bpchar";
	case OID_VARCHAR:
		return "varchar";
	case OID_DATE:
		return "date";
	case OID_TIME:
		return "time";
	case OID_TIMESTAMP:
		return "timestamp";
	case OID_TIMESTAMPTZ:
		return "timestamptz";
	case OID_NUMERIC:
		return "numeric";
	case OID_UUID:
		return "uuid";
	case OID_JSONB:
		return "jsonb";
	default:
		return "other";
	}
}

/* ---- error values ------------------------------------------------------------------- */

static int error_tostring(lua_State *L)
{
	const char *msg, *st;

	lua_getfield(L, 1, "message");
	lua_getfield(L, 1, "sqlstate");
	msg = lua_tostring(L, -2);
	st = lua_tostring(L, -1);
	if (st && *st)
		lua_pushfstring(L, "%s (SQLSTATE %s)", msg ? msg : "database error", st);
	else
		lua_pushstring(L, msg ? msg : "database error");
	return 1;
}

static void ensure_metatables(lua_State *L);

void svc_lua_pg_push_error(lua_State *L, const char *msg, const char *sqlstate)
{
	lua_createtable(L, 0, 4);
	lua_pushstring(L, msg && *msg ? msg : "database error");
	lua_setfield(L, -2, "message");
	if (sqlstate && *sqlstate) {
		lua_pushstring(L, sqlstate);
		lua_setfield(L, -2, "sqlstate");
		lua_pushboolean(L, svc_pg_sqlstate_is_conn(sqlstate));
		lua_setfield(L, -2, "connection_lost");
	}
	luaL_setmetatable(L, ERROR_MT);
}

static void set_field_str(lua_State *L, const char *key, const char *val)
{
	if (val && *val) {
		lua_pushstring(L, val);
		lua_setfield(L, -2, key);
	}
}

/* Pushes the error value for a failed result (res may be NULL) of conn. */
static void push_result_error(lua_State *L, struct lconn *lc, const PGresult *res)
{
	char msg[SVC_PG_ERRSZ], st[6];

	svc_pg_result_error(lc->conn, res, PGRES_COMMAND_OK, msg, sizeof(msg), st);
	/* kept for the host: a handler may catch this error and raise another */
	if (!lc->infra[0] && svc_pg_sqlstate_is_infra(st))
		memcpy(lc->infra, st, sizeof(lc->infra));
	svc_lua_pg_push_error(L, msg, st);
	if (res) {
		set_field_str(L, "detail", PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL));
		set_field_str(L, "hint", PQresultErrorField(res, PG_DIAG_MESSAGE_HINT));
		set_field_str(L, "severity",
		              PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED));
		set_field_str(L, "constraint", PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME));
	}
}

/* Pushes the error value for a statement that could not run because one queued before it on
 * this connection (svc_pg_send) failed: that statement's error, said as such. Not recorded as
 * the connection's infrastructure failure: the owner of the pipeline (the consumer) reads the
 * late error itself. */
static void push_late_error(lua_State *L, struct lconn *lc)
{
	const PGresult *res = svc_pg_late_error(lc->conn);
	char msg[SVC_PG_ERRSZ], st[6];

	svc_pg_result_error(lc->conn, res, PGRES_COMMAND_OK, msg, sizeof(msg), st);
	lua_pushfstring(L, "a statement queued earlier in this transaction failed: %s", msg);
	svc_lua_pg_push_error(L, lua_tostring(L, -1), st);
	lua_remove(L, -2);
	if (res) {
		set_field_str(L, "detail", PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL));
		set_field_str(L, "constraint", PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME));
	}
	lua_pushboolean(L, 1);
	lua_setfield(L, -2, "pipelined");
}

/* core.pg_error(message [, sqlstate]) -> error value (for the Lua side's own errors). */
static int l_pg_error(lua_State *L)
{
	const char *msg = luaL_checkstring(L, 1);
	const char *st = luaL_optstring(L, 2, NULL);

	svc_lua_pg_push_error(L, msg, st);
	return 1;
}

/* ---- conn userdata ------------------------------------------------------------------ */

static struct lconn *to_lconn(lua_State *L, int idx)
{
	return (struct lconn *)luaL_checkudata(L, idx, CONN_MT);
}

PGconn *svc_lua_pg_check(lua_State *L, int idx)
{
	struct lconn *c = to_lconn(L, idx);

	if (!c->conn)
		luaL_argerror(L, idx, "connection is closed");
	return c->conn;
}

int svc_lua_pg_push(lua_State *L, PGconn *conn, bool owned)
{
	struct lconn *c;

	ensure_metatables(L);
	c = (struct lconn *)lua_newuserdatauv(L, sizeof(*c), 0);
	c->conn = conn;
	c->owned = owned;
	c->infra[0] = '\0';
	luaL_setmetatable(L, CONN_MT);
	return 1;
}

bool svc_lua_pg_take_infra(lua_State *L, int idx, char sqlstate[6])
{
	struct lconn *c = (struct lconn *)luaL_testudata(L, idx, CONN_MT);

	sqlstate[0] = '\0';
	if (!c || !c->infra[0])
		return false;
	memcpy(sqlstate, c->infra, sizeof(c->infra));
	c->infra[0] = '\0';
	return true;
}

void svc_lua_pg_detach(lua_State *L, int idx)
{
	struct lconn *c = (struct lconn *)luaL_testudata(L, idx, CONN_MT);

	if (!c)
		return;
	if (c->owned && c->conn)
		PQfinish(c->conn);
	c->conn = NULL;
}

static int conn_close(lua_State *L)
{
	struct lconn *c = to_lconn(L, 1);

	if (c->conn && c->owned)
		PQfinish(c->conn);
	c->conn = NULL;
	return 0;
}

static int conn_tostring(lua_State *L)
{
	struct lconn *c = to_lconn(L, 1);

	if (!c->conn)
		lua_pushstring(L, "svccomm.pg.conn (closed)");
	else
		lua_pushfstring(L, "svccomm.pg.conn (%s@%s:%s/%s%s)", PQuser(c->conn),
		                PQhost(c->conn), PQport(c->conn), PQdb(c->conn),
		                c->owned ? "" : ", lent");
	return 1;
}

static int conn_transaction_status(lua_State *L)
{
	struct lconn *c = to_lconn(L, 1);

	/* A pending prelude (the consumer's BEGIN / SAVEPOINT, sent with the next statement)
	 * means the handler is in its transaction already; so do queued statements. */
	if (c->conn && (svc_pg_prelude_pending(c->conn) || svc_pg_pipeline_pending(c->conn)))
		lua_pushliteral(L, "intrans");
	else
		lua_pushstring(L, c->conn
		                      ? svc_pg_transaction_status_name(PQtransactionStatus(c->conn))
		                      : "unknown");
	return 1;
}

static int conn_pid(lua_State *L)
{
	lua_pushinteger(L, PQbackendPID(svc_lua_pg_check(L, 1)));
	return 1;
}

/* conn:ok() -> true when the connection is open and usable. */
static int conn_ok(lua_State *L)
{
	struct lconn *c = to_lconn(L, 1);

	lua_pushboolean(L, c->conn && PQstatus(c->conn) == CONNECTION_OK);
	return 1;
}

/* ---- parameters --------------------------------------------------------------------- */

/* Converts the Lua values at first..first+n-1 into text parameters. The strings live on the
 * Lua stack (pushed above the arguments) and the pointer array is a userdata, so nothing
 * leaks when a later call raises. */
static const char **collect_params(lua_State *L, int first, int n)
{
	const char **vals;
	char buf[64];

	if (n > 65535)
		luaL_error(L, "too many parameters (%d, at most 65535)", n);
	luaL_checkstack(L, n + 4, "too many parameters");
	vals = (const char **)lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof(*vals), 0);
	for (int i = 0; i < n; i++) {
		int idx = first + i;
		size_t len;

		switch (lua_type(L, idx)) {
		case LUA_TNONE:
		case LUA_TNIL:
			vals[i] = NULL;
			break;
		case LUA_TLIGHTUSERDATA:
			if (lua_touserdata(L, idx) != NULL)
				luaL_argerror(L, idx, "light userdata other than null");
			vals[i] = NULL;
			break;
		case LUA_TBOOLEAN:
			vals[i] = lua_toboolean(L, idx) ? "true" : "false";
			break;
		case LUA_TNUMBER:
			if (lua_isinteger(L, idx)) {
				vals[i] =
				    lua_pushfstring(L, "%I", (LUAI_UACINT)lua_tointeger(L, idx));
			} else {
				double d = lua_tonumber(L, idx);
				if (isnan(d))
					vals[i] = "NaN";
				else if (isinf(d))
					vals[i] = d > 0 ? "Infinity" : "-Infinity";
				else {
					/* Shortest round-trip text: 19.99 reaches a numeric column
					 * as 19.99, not 19.989999999999998. */
					svc_numfmt_double(buf, sizeof(buf), d);
					vals[i] = lua_pushstring(L, buf);
				}
			}
			break;
		case LUA_TSTRING:
			vals[i] = lua_tolstring(L, idx, &len);
			if (strlen(vals[i]) != len)
				luaL_argerror(L, idx, "string parameter contains a zero byte");
			break;
		default:
			luaL_argerror(L, idx,
			              lua_pushfstring(L,
			                              "a %s cannot be a SQL parameter (tables: "
			                              "encode them as JSON first)",
			                              luaL_typename(L, idx)));
		}
	}
	return vals;
}

/* ---- results ------------------------------------------------------------------------ */

static int result_gc(lua_State *L)
{
	struct lresult *r = (struct lresult *)luaL_checkudata(L, 1, RESULT_MT);

	PQclear(r->res);
	r->res = NULL;
	return 0;
}

static struct lresult *new_box(lua_State *L)
{
	struct lresult *r = (struct lresult *)lua_newuserdatauv(L, sizeof(*r), 0);

	r->res = NULL;
	luaL_setmetatable(L, RESULT_MT);
	return r;
}

static void push_special_float(lua_State *L, const char *v)
{
	const char *p = v;
	bool neg = false;

	if (*p == '-' || *p == '+') {
		neg = *p == '-';
		p++;
	}
	if (strcmp(p, "Infinity") == 0 || strcmp(p, "inf") == 0)
		lua_pushnumber(L, neg ? -HUGE_VAL : HUGE_VAL);
	else if (strcmp(p, "NaN") == 0)
		lua_pushnumber(L, NAN);
	else
		lua_pushlstring(L, v, strlen(v)); /* not expected: keep the text */
}

static void push_value(lua_State *L, const PGresult *res, int row, int col, Oid oid)
{
	const char *v = PQgetvalue(res, row, col);
	int len = PQgetlength(res, row, col);

	switch (oid) {
	case OID_BOOL:
		lua_pushboolean(L, v[0] == 't');
		break;
	case OID_INT2:
	case OID_INT4:
	case OID_INT8:
	case OID_OID:
		lua_pushinteger(L, (lua_Integer)strtoll(v, NULL, 10));
		break;
	case OID_FLOAT4:
	case OID_FLOAT8:
	case OID_NUMERIC:
		if (lua_stringtonumber(L, v) == 0)
			push_special_float(L, v);
		break;
	default:
		lua_pushlstring(L, v, (size_t)len);
	}
}

/* Pushes rows, columns for a result. */
static void push_rows(lua_State *L, const PGresult *res)
{
	int nrows = PQntuples(res), ncols = PQnfields(res);
	int rows_idx, cols_idx, names_idx;

	lua_createtable(L, nrows, 0);
	rows_idx = lua_gettop(L);
	lua_createtable(L, ncols, 0);
	cols_idx = lua_gettop(L);
	lua_createtable(L, ncols, 0);
	names_idx = lua_gettop(L);
	for (int c = 0; c < ncols; c++) {
		Oid oid = PQftype(res, c);

		lua_pushstring(L, PQfname(res, c));
		lua_rawseti(L, names_idx, c + 1);
		lua_createtable(L, 0, 3);
		lua_pushstring(L, PQfname(res, c));
		lua_setfield(L, -2, "name");
		lua_pushinteger(L, (lua_Integer)oid);
		lua_setfield(L, -2, "oid");
		lua_pushstring(L, type_name(oid));
		lua_setfield(L, -2, "type");
		lua_rawseti(L, cols_idx, c + 1);
	}
	for (int r = 0; r < nrows; r++) {
		lua_createtable(L, 0, ncols);
		for (int c = 0; c < ncols; c++) {
			if (PQgetisnull(res, r, c))
				continue;
			lua_rawgeti(L, names_idx, c + 1);
			push_value(L, res, r, c, PQftype(res, c));
			lua_rawset(L, -3);
		}
		lua_rawseti(L, rows_idx, r + 1);
	}
	lua_pop(L, 1); /* names */
}

/* A COPY started by a statement would leave the connection stuck: end it. */
static void abort_copy(PGconn *conn, ExecStatusType st)
{
	PGresult *r;

	if (st == PGRES_COPY_IN) {
		PQputCopyEnd(conn, "COPY FROM STDIN is not supported by svccomm.db");
	} else if (st == PGRES_COPY_OUT) {
		char *buf;
		while (PQgetCopyData(conn, &buf, 0) > 0)
			PQfreemem(buf);
	}
	while ((r = PQgetResult(conn)) != NULL)
		PQclear(r);
}

/* Runs conn:query / conn:exec. want_rows: return rows, columns; else the affected count. */
static int run_statement(lua_State *L, bool want_rows)
{
	PGconn *conn = svc_lua_pg_check(L, 1);
	const char *sql = luaL_checkstring(L, 2);
	int n = lua_gettop(L) - 2;
	const char **vals = collect_params(L, 3, n);
	struct lresult *box = new_box(L);
	ExecStatusType st;

	/* statements queued before this one: their results first, and a failure is theirs */
	if (svc_pg_pipeline_pending(conn) > 0 && svc_pg_sync(conn) != 0) {
		push_late_error(L, to_lconn(L, 1));
		return lua_error(L);
	}
	if (n == 0 && !want_rows)
		box->res = svc_pg_query_text(conn, sql);
	else
		box->res = svc_pg_query(conn, sql, n, vals, false);
	st = box->res ? PQresultStatus(box->res) : PGRES_FATAL_ERROR;
	if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
		PQclear(box->res);
		box->res = NULL;
		abort_copy(conn, st);
		svc_lua_pg_push_error(L, "COPY is not supported through svccomm.db", NULL);
		return lua_error(L);
	}
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
		push_result_error(L, to_lconn(L, 1), box->res);
		PQclear(box->res);
		box->res = NULL;
		return lua_error(L);
	}
	if (want_rows) {
		push_rows(L, box->res);
	} else {
		const char *t = PQcmdTuples(box->res);
		lua_pushinteger(L, (lua_Integer)(t && *t ? strtoll(t, NULL, 10) : 0));
	}
	PQclear(box->res);
	box->res = NULL;
	return want_rows ? 2 : 1;
}

static int conn_query(lua_State *L)
{
	return run_statement(L, true);
}

static int conn_exec(lua_State *L)
{
	return run_statement(L, false);
}

/* conn:send(sql, ...) -> true: queues the statement without waiting for its result when the
 * connection allows it (pg/session.h: the consumer's pipelined handler statements), else
 * runs it as conn:exec does. A failure of a queued statement is raised by a later call. */
static int conn_send(lua_State *L)
{
	PGconn *conn = svc_lua_pg_check(L, 1);
	const char *sql = luaL_checkstring(L, 2);
	int n = lua_gettop(L) - 2;

	/* several statements need the simple protocol, which has no pipeline */
	if (n > 0 || !strchr(sql, ';')) {
		const char **vals = collect_params(L, 3, n);
		int rc = svc_pg_send(conn, sql, n, vals);

		if (rc == 0) {
			lua_pushboolean(L, 1);
			return 1;
		}
		if (rc != SVC_EINVAL) {
			push_late_error(L, to_lconn(L, 1));
			return lua_error(L);
		}
		lua_settop(L, n + 2);
	}
	run_statement(L, false);
	lua_pushboolean(L, 1);
	return 1;
}

/* core.connect(conninfo [, application_name]) -> conn | nil, err, sqlstate */
static int l_connect(lua_State *L)
{
	const char *conninfo = luaL_checkstring(L, 1);
	const char *app = luaL_optstring(L, 2, NULL);
	char err[SVC_PG_ERRSZ];
	struct lconn *c;

	/* The userdata exists before the connection, so a memory error cannot leak it. */
	svc_lua_pg_push(L, NULL, true);
	c = (struct lconn *)lua_touserdata(L, -1);
	c->conn = svc_pg_open(conninfo, app, err, sizeof(err));
	if (!c->conn) {
		lua_pushnil(L);
		lua_pushstring(L, err);
		lua_pushliteral(L, "08001");
		return 3;
	}
	return 1;
}

/* ---- registration ------------------------------------------------------------------- */

static const luaL_Reg conn_methods[] = {
    {"query", conn_query},
    {"exec", conn_exec},
    {"send", conn_send},
    {"close", conn_close},
    {"transaction_status", conn_transaction_status},
    {"pid", conn_pid},
    {"ok", conn_ok},
    {NULL, NULL},
};

static const luaL_Reg conn_meta[] = {
    {"__gc", conn_close},
    {"__close", conn_close},
    {"__tostring", conn_tostring},
    {NULL, NULL},
};

static const luaL_Reg pg_funcs[] = {
    {"connect", l_connect},
    {"pg_error", l_pg_error},
    {NULL, NULL},
};

static void ensure_metatables(lua_State *L)
{
	if (luaL_newmetatable(L, CONN_MT)) {
		luaL_setfuncs(L, conn_meta, 0);
		luaL_newlib(L, conn_methods);
		luaL_setfuncs(L, svc_lua_outbox_conn_methods, 0);
		lua_setfield(L, -2, "__index");
		lua_pushliteral(L, CONN_MT);
		lua_setfield(L, -2, "__name");
	}
	lua_pop(L, 1);
	if (luaL_newmetatable(L, RESULT_MT)) {
		lua_pushcfunction(L, result_gc);
		lua_setfield(L, -2, "__gc");
	}
	lua_pop(L, 1);
	if (luaL_newmetatable(L, ERROR_MT)) {
		lua_pushcfunction(L, error_tostring);
		lua_setfield(L, -2, "__tostring");
	}
	lua_pop(L, 1);
}

void svc_lua_pg_open(lua_State *L)
{
	ensure_metatables(L);
	luaL_setfuncs(L, pg_funcs, 0);
	lua_pushlightuserdata(L, NULL);
	lua_setfield(L, -2, "null");
	luaL_getmetatable(L, ERROR_MT);
	lua_setfield(L, -2, "pg_error_mt");
}
