/* lua/core: the native module `svccomm.core`, loaded by the binary (package.preload) and
 * by a plain lua5.4 (build/lua/svccomm/core.so). It holds the small C helpers the Lua
 * modules need (URL and conninfo checks, secret masking, identifier quoting, directory
 * listing, versions, time and ids), the PostgreSQL binding of lua/pg.h and the outbox calls
 * of lua/outbox.h and the JSON decoder of lua/json_decode.h. The helpers:
 *   core.time() -> seconds since the epoch (float, microseconds)
 *   core.utc_iso([t]) -> "2024-01-02T03:04:05.123456Z" (t: seconds; default now); utc_now_iso
 *   core.uuid4() -> random UUID string
 *   core.quote_ident(name) -> quoted | nil, err
 *   core.mask_secret(url), core.scrub_secret(text, url), core.parse_amqp_url(url),
 *   core.parse_conninfo(s), core.listdir(path), core.versions(), core.VERSION
 *   core.log(level, message [, {k1, v1, ...}]), core.log_enabled(level): util/log lines for
 *   svccomm.log, with the id of the message being handled (registry SVC_LUA_MESSAGE_ID_KEY) */
#ifndef SVC_LUA_CORE_H
#define SVC_LUA_CORE_H

#include <lua.h>

/* Registry field holding the id of the message whose handler runs (a string), nil between. */
#define SVC_LUA_MESSAGE_ID_KEY "svccomm.current_message_id"

int luaopen_svccomm_core(lua_State *L);

#endif
