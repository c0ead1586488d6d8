/* lua/json_decode: the JSON decoder of svccomm (message bodies, svccomm.db json columns,
 * svccomm.json.decode, CLI payloads): strict RFC 8259 text in, Lua values out, built directly.
 *
 * Numbers: an integer literal (no fraction, no exponent) that fits in int64 becomes a Lua
 * integer, exactly; every other number becomes a float (strtod through lua_stringtonumber, so
 * the C locale's '.'); an integer literal beyond int64 becomes the nearest float and the loss
 * is counted and logged at debug; "-0" is the float -0.0; a number whose magnitude overflows a
 * double (1e999999) is refused. JSON null is the light userdata NULL (cjson.null, svccomm.null);
 * arrays and objects are plain tables (no metatable, as cjson 2.1 decodes them); a repeated
 * key keeps its last value. Strings must be valid UTF-8 with no raw control characters; \u
 * escapes are decoded (surrogate pairs joined, a lone surrogate refused, \u0000 kept).
 * Everything else RFC 8259 forbids is refused: leading zeros, "1.", ".5", "+1", NaN,
 * Infinity, trailing commas, comments, trailing text.
 *
 * The input is untrusted: no read outside [text, text + len), no NUL terminator needed,
 * recursion bounded by max_depth (at most SVC_JSON_MAX_DEPTH), memory only from the Lua
 * allocator (so LUA_MEMORY_LIMIT_MB counts it and an out-of-memory error leaks nothing). */
#ifndef SVC_LUA_JSON_DECODE_H
#define SVC_LUA_JSON_DECODE_H

#include <lua.h>
#include <stddef.h>

/* The deepest nesting any caller may ask for (the C recursion depth). */
#define SVC_JSON_MAX_DEPTH 1000

/* Decodes json[0..len) with at most max_depth nested arrays/objects (1..SVC_JSON_MAX_DEPTH) and
 * pushes the value (0), or pushes an error message "<what> at character <n>" (SVC_EINVAL). */
int svc_json_decode(lua_State *L, const char *json, size_t len, int max_depth);

/* Integer literals beyond int64 decoded as floats since the process started. */
unsigned long long svc_json_decode_lossy(void);

/* Registers json_decode(text[, max_depth = 1000]) -> value | nil, err and json_lossy() -> count
 * into the table on top of the stack (svccomm.core). */
void svc_lua_json_open(lua_State *L);

#endif
