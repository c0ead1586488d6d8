#include "lua/pg.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "outbox/write.h"
#include "pg/conn.h"
#include "util/error.h"

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

/* Pushes a new error value {message=, sqlstate=}. */
static void push_error(lua_State *L, const char *msg, const char *sqlstate)
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
static void push_result_error(lua_State *L, PGconn *conn, const PGresult *res)
{
	char msg[SVC_PG_ERRSZ], st[6];

	svc_pg_result_error(conn, res, PGRES_COMMAND_OK, msg, sizeof(msg), st);
	push_error(L, msg, st);
	if (res) {
		set_field_str(L, "detail", PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL));
		set_field_str(L, "hint", PQresultErrorField(res, PG_DIAG_MESSAGE_HINT));
		set_field_str(L, "severity",
		              PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED));
		set_field_str(L, "constraint", PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME));
	}
}

/* core.pg_error(message [, sqlstate]) -> error value (for the Lua side's own errors). */
static int l_pg_error(lua_State *L)
{
	const char *msg = luaL_checkstring(L, 1);
	const char *st = luaL_optstring(L, 2, NULL);

	push_error(L, msg, st);
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
	luaL_setmetatable(L, CONN_MT);
	return 1;
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
	 * means the handler is in its transaction already. */
	if (c->conn && svc_pg_prelude_pending(c->conn))
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
					snprintf(buf, sizeof(buf), "%.17g", d);
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

	if (n == 0 && !want_rows)
		box->res = svc_pg_query_text(conn, sql);
	else
		box->res = svc_pg_query(conn, sql, n, vals, false);
	st = box->res ? PQresultStatus(box->res) : PGRES_FATAL_ERROR;
	if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
		PQclear(box->res);
		box->res = NULL;
		abort_copy(conn, st);
		push_error(L, "COPY is not supported through svccomm.db", NULL);
		return lua_error(L);
	}
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
		push_result_error(L, conn, box->res);
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

/* ---- outbox ------------------------------------------------------------------------- */

/* Pushes row[key] and returns it as a string or NULL; the value stays on the stack. */
static const char *row_field(lua_State *L, int row, const char *key)
{
	int t = lua_getfield(L, row, key);

	if (t == LUA_TNIL)
		return NULL;
	if (t != LUA_TSTRING)
		luaL_error(L, "outbox_insert: row.%s must be a string, got %s", key,
		           luaL_typename(L, -1));
	return lua_tostring(L, -1);
}

/* core.outbox_insert(conn, table, row) -> id */
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
		push_error(L, err, st);
		return lua_error(L);
	}
	lua_pushinteger(L, (lua_Integer)id);
	return 1;
}

/* core.outbox_cancel(conn, table, exchange, routing_key, tags_json) -> count */
static int l_outbox_cancel(lua_State *L)
{
	PGconn *conn = svc_lua_pg_check(L, 1);
	const char *table = luaL_checkstring(L, 2);
	const char *exchange = luaL_checkstring(L, 3);
	const char *rk = luaL_checkstring(L, 4);
	const char *tags = luaL_checkstring(L, 5);
	char err[SVC_PG_ERRSZ], st[6];
	long long n;

	n = svc_outbox_cancel(conn, table, exchange, rk, tags, err, sizeof(err), st);
	if (n < 0) {
		push_error(L, err, st);
		return lua_error(L);
	}
	lua_pushinteger(L, (lua_Integer)n);
	return 1;
}

/* core.outbox_check_table(name) -> quoted | nil, err */
static int l_outbox_check_table(lua_State *L)
{
	const char *name = luaL_checkstring(L, 1);
	char err[256], q[SVC_OUTBOX_QNAME_MAX];

	if (svc_outbox_check_table(name, err, sizeof(err)) < 0 ||
	    svc_outbox_quote_table(name, q, sizeof(q)) < 0) {
		lua_pushnil(L);
		lua_pushstring(L, err);
		return 2;
	}
	lua_pushstring(L, q);
	return 1;
}

/* ---- time and ids ------------------------------------------------------------------- */

static int l_time(lua_State *L)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)(ts.tv_nsec / 1000) / 1e6);
	return 1;
}

/* Formats seconds since the epoch as UTC ISO 8601 with microseconds and "Z". */
static void push_iso(lua_State *L, long long sec, long usec)
{
	char buf[64];
	struct tm tm;
	time_t t = (time_t)sec;

	if (!gmtime_r(&t, &tm))
		luaL_error(L, "time out of range");
	snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900,
	         tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, usec);
	lua_pushstring(L, buf);
}

/* core.utc_iso([t]) -> ISO text of t (seconds since the epoch; default now) */
static int l_utc_iso(lua_State *L)
{
	if (lua_isnoneornil(L, 1)) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		push_iso(L, (long long)ts.tv_sec, ts.tv_nsec / 1000);
	} else {
		double t = luaL_checknumber(L, 1);
		double sec;
		long usec;

		if (!isfinite(t) || t < -62135596800.0 || t > 253402300799.0)
			return luaL_argerror(L, 1, "time out of range");
		sec = floor(t);
		usec = lround((t - sec) * 1e6);
		if (usec >= 1000000) {
			sec += 1;
			usec -= 1000000;
		}
		push_iso(L, (long long)sec, usec);
	}
	return 1;
}

static int l_uuid4(lua_State *L)
{
	unsigned char b[16];
	char out[37];
	size_t got = 0;

	while (got < sizeof(b)) {
		ssize_t n = getrandom(b + got, sizeof(b) - got, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return luaL_error(L, "uuid4: getrandom: %s", strerror(errno));
		}
		got += (size_t)n;
	}
	b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
	b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
	snprintf(out, sizeof(out),
	         "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
	         b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
	         b[15]);
	lua_pushstring(L, out);
	return 1;
}

/* ---- registration ------------------------------------------------------------------- */

/* conn:_rows_mark() -> mark: writes the outbox rows deferred so far (the consumer's connection)
 * so none of them lands inside a savepoint about to open, and returns the position that
 * conn:_rows_drop(mark) goes back to when that savepoint is rolled back. */
static int conn_rows_mark(lua_State *L)
{
	PGconn *conn = svc_lua_pg_check(L, 1);
	char err[SVC_PG_ERRSZ], st[6];

	if (svc_pg_flush(conn, err, sizeof(err), st) < 0) {
		push_error(L, err, st);
		return lua_error(L);
	}
	lua_pushinteger(L, (lua_Integer)svc_pg_deferred_mark(conn));
	return 1;
}

static int conn_rows_drop(lua_State *L)
{
	PGconn *conn = svc_lua_pg_check(L, 1);
	lua_Integer mark = luaL_checkinteger(L, 2);

	svc_pg_deferred_truncate(conn, mark < 0 ? 0 : (size_t)mark);
	return 0;
}

static const luaL_Reg conn_methods[] = {
    {"query", conn_query},
    {"exec", conn_exec},
    {"_rows_mark", conn_rows_mark},
    {"_rows_drop", conn_rows_drop},
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
    {"outbox_insert", l_outbox_insert},
    {"outbox_cancel", l_outbox_cancel},
    {"outbox_check_table", l_outbox_check_table},
    {"time", l_time},
    {"utc_iso", l_utc_iso},
    {"uuid4", l_uuid4},
    {NULL, NULL},
};

static void ensure_metatables(lua_State *L)
{
	if (luaL_newmetatable(L, CONN_MT)) {
		luaL_setfuncs(L, conn_meta, 0);
		luaL_newlib(L, conn_methods);
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
	lua_pushcfunction(L, l_utc_iso);
	lua_setfield(L, -2, "utc_now_iso");
	luaL_getmetatable(L, ERROR_MT);
	lua_setfield(L, -2, "pg_error_mt");
}
