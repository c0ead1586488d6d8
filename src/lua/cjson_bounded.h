/* lua/cjson_bounded: the cjson that Lua code in the runtime gets from require "cjson" and
 * require "cjson.safe" (lua-cjson 2.1, loaded at run time from the cjson.so that package.cpath
 * finds: Debian's lua-cjson or the rock's dependency, never linked in), with its C buffers
 * counted against LUA_MEMORY_LIMIT_MB.
 *
 * lua-cjson writes JSON into a buffer of its own (malloc, outside the Lua allocator) grown by
 * doubling, and by default keeps it between calls: a handler that encoded a huge table pushed a
 * worker far past the memory cap. Here encode first measures the text it is about to write
 * (walking the value in cjson's order, with its number precision, sparse-array and depth
 * settings), counts the buffer it will need against the cap (svc_runtime_reserve) while it
 * runs, and refuses, as an out-of-memory error, a text that would not fit; decode counts its
 * scratch buffer (the size of the input) the same way. Texts over 1 GiB are refused even without
 * a cap (cjson's sizes are ints). encode_keep_buffer is always off, so no buffer outlives a
 * call. Everything else is cjson's: same functions, results and error messages (numbers decode
 * as floats). svccomm's own decoding (bodies, svccomm.json, svccomm.db) is lua/json_decode.h. */
#ifndef SVC_LUA_CJSON_BOUNDED_H
#define SVC_LUA_CJSON_BOUNDED_H

#include <lua.h>

/* The "cjson" module (errors raise). */
int svc_luaopen_cjson_bounded(lua_State *L);
/* The "cjson.safe" module (invalid input returns nil, message; running out of memory raises,
 * as in cjson). */
int svc_luaopen_cjson_safe_bounded(lua_State *L);
/* Raises a one-line error naming package.cpath when no cjson.so is on it; returns 0. */
int svc_cjson_check(lua_State *L);

#endif
