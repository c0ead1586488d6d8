/* lua/pg: the PostgreSQL binding of `svccomm.core` (svccomm.db builds on it).
 *
 * Registered by svc_lua_pg_open() into the core table:
 *   core.connect(conninfo [, application_name]) -> conn | nil, err, sqlstate
 *   conn:query(sql, ...) -> rows, columns      conn:exec(sql, ...) -> affected count
 *   conn:send(sql, ...) -> true: queued without waiting when the connection allows it
 *   (pg/session.h, svc_pg_send), else run as exec; a failure of a queued statement is raised
 *   by the next statement (message "a statement queued earlier ...", field pipelined = true)
 *   conn:close(), conn:transaction_status(), conn:pid(), conn:ok(); __gc, __close, __tostring
 *   (and the deferred-rows methods of lua/outbox.h)
 *   core.pg_error(message [, sqlstate]) -> error value      core.pg_error_mt
 *   core.null (SQL NULL / JSON null: the same light userdata as cjson.null)
 *
 * Parameters ($1, $2, ... after sql): nil or core.null -> NULL, booleans, integers, floats
 * (shortest round-trip text, util/numfmt.h: 19.99 -> "19.99"; NaN and infinities spelled as
 * PostgreSQL reads them: "NaN", "Infinity", "-Infinity"), strings without zero bytes.
 * Tables are refused (the Lua side JSON-encodes them). With no parameters, exec() may run
 * several statements separated by ';' (query() runs exactly one).
 *
 * Results: rows is an array of tables keyed by column name (a later column wins on a
 * duplicate name); columns is an array of {name=, oid=, type=}. Values by type: bool ->
 * boolean; int2/int4/int8/oid -> integer; float4/float8 -> float (NaN, +-inf included);
 * numeric -> integer when it has no fraction and fits in 64 bits, else a float (a double:
 * about 15-17 significant digits; cast to text in SQL for exact decimals); json/jsonb ->
 * the JSON text (type "json"/"jsonb", decoded by svccomm.db); everything else -> its text
 * form (timestamps as ISO text in UTC, e.g. "2024-01-02 03:04:05.123456+00"; bytea as
 * "\x..." hex); NULL -> nil (the key is absent).
 *
 * Errors raise a table {message=, sqlstate=, detail=, hint=, connection_lost=} whose
 * __tostring is "message (SQLSTATE xxxxx)". Messages never contain the password.
 *
 * A conn either owns its PGconn (core.connect: closed by close/__gc/__close) or borrows it
 * (svc_lua_pg_push(..., false): the C owner keeps it; close only detaches).
 */
#ifndef SVC_LUA_PG_H
#define SVC_LUA_PG_H

#include <libpq-fe.h>
#include <lua.h>
#include <stdbool.h>

/* Registers the functions above into the table on top of the stack. */
void svc_lua_pg_open(lua_State *L);

/* The PGconn of the conn userdata at idx; raises when it is not one or it is closed. */
PGconn *svc_lua_pg_check(lua_State *L, int idx);

/* Pushes a conn userdata for conn. owned = true: Lua closes it (close/__gc); false: it is
 * lent, the caller keeps ownership and must call svc_lua_pg_detach() before PQfinish.
 * Returns 1 (values pushed). May raise on memory errors (conn is not freed then). */
int svc_lua_pg_push(lua_State *L, PGconn *conn, bool owned);

/* Pushes a new error value {message=, sqlstate=, connection_lost=} (see above). */
void svc_lua_pg_push_error(lua_State *L, const char *msg, const char *sqlstate);

/* Copies into sqlstate (and forgets) the SQLSTATE of the first statement on the conn userdata
 * at idx that failed for the infrastructure's reasons (pg/errclass.h) since the last call;
 * false and "" when none did. */
bool svc_lua_pg_take_infra(lua_State *L, int idx, char sqlstate[6]);

/* Makes the conn userdata at idx closed (without PQfinish when lent): later use from Lua
 * raises "connection is closed" instead of touching freed memory. */
void svc_lua_pg_detach(lua_State *L, int idx);

#endif
