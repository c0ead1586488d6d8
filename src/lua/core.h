/* lua_core: the native module `svccomm.core`, loaded by the binary (package.preload) and
 * by a plain lua5.4 (build/lua/svccomm/core.so). It holds the small C helpers the Lua
 * modules need (URL and conninfo checks, directory listing, versions) and the PostgreSQL
 * binding of lua_pg.c. */
#ifndef SVC_LUA_CORE_H
#define SVC_LUA_CORE_H

#include <lua.h>

int luaopen_svccomm_core(lua_State *L);

#endif
