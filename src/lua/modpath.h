/* lua/modpath: where the runtime finds the Lua code that is not compiled into the binary.
 *
 * The svccomm modules are compiled in (package.preload), so an installed svccomm needs no Lua
 * files and never runs against mismatched ones. Two things come from the file system:
 * - cjson.so (lua-cjson), through package.cpath: Lua's default path (Debian's lua-cjson lives
 *   there) plus <prefix>/lib/lua/5.4 of the prefix the executable runs from (bin/..), which is
 *   where `luarocks --tree` puts the rock's lua-cjson;
 * - for development, SVCCOMM_LUA_PATH=<dir>: the svccomm modules are read from
 *   <dir>/svccomm/<name>.lua instead of the compiled-in copies (edit, run, no rebuild). */
#ifndef SVC_LUA_MODPATH_H
#define SVC_LUA_MODPATH_H

#include <lua.h>

#define SVC_LUA_PATH_ENV "SVCCOMM_LUA_PATH"

/* Extends package.cpath, applies SVCCOMM_LUA_PATH over the preloaded modules and checks that
 * cjson is found; raises a one-line error naming the path when a file is missing. Runs after
 * package.preload holds the compiled-in modules. */
int svc_modpath_setup(lua_State *L);

#endif
