/* lua/outbox: the outbox write calls of `svccomm.core` (svccomm.events is their one user).
 *
 * Registered by svc_lua_outbox_open() into the core table:
 *   core.outbox_insert(conn, table, row) -> id
 *       row: exchange, routing_key, body (or body_rest), envelope (boolean), event_time,
 *       send_after, message_id, correlation_id, headers_json, tags_json, id_sequence: strings
 *       as struct svc_outbox_row (outbox/write.h)
 *   core.outbox_cancel(conn, table, exchange, routing_key, tags_json) -> count
 *   core.envelope_members(type_json, aggregate_json, payload_json) -> members object text
 *       for an envelope row's body (outbox/envelope.h)
 * and the methods of a conn (lua/pg.h) for the consumer's deferred rows (outbox/batch.h):
 *   conn:_rows_mark() -> mark      conn:_rows_drop(mark)
 * Database failures raise the error values of lua/pg.h.
 */
#ifndef SVC_LUA_OUTBOX_H
#define SVC_LUA_OUTBOX_H

#include <lauxlib.h>
#include <lua.h>

/* Registers the functions above into the table on top of the stack. */
void svc_lua_outbox_open(lua_State *L);

/* The conn methods above, for the conn metatable (ends with {NULL, NULL}). */
extern const luaL_Reg svc_lua_outbox_conn_methods[];

#endif
