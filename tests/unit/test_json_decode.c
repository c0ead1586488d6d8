/* Unit tests for lua/json_decode.c: strict JSON to Lua values, int64 exact. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <lauxlib.h>
#include <lualib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lua/json_decode.h"
#include "util/error.h"

static int setup(void **state)
{
	lua_State *L = luaL_newstate();
	if (!L)
		return -1;
	*state = L;
	return 0;
}

static int teardown(void **state)
{
	lua_close(*state);
	return 0;
}

/* Decodes the C string s (depth 128), asserting success; the value is left on top. */
static void ok(lua_State *L, const char *s)
{
	int rc = svc_json_decode(L, s, strlen(s), 128);
	if (rc != 0)
		fail_msg("'%s' refused: %s", s, lua_tostring(L, -1));
	assert_int_equal(lua_gettop(L), 1);
}

/* Decodes s expecting a refusal whose message contains what. */
static void bad(lua_State *L, const char *s, size_t len, int depth, const char *what)
{
	assert_int_equal(svc_json_decode(L, s, len, depth), SVC_EINVAL);
	assert_int_equal(lua_gettop(L), 1);
	if (!strstr(lua_tostring(L, -1), what))
		fail_msg("'%.40s': '%s' lacks '%s'", s, lua_tostring(L, -1), what);
	lua_settop(L, 0);
}

static void integer(lua_State *L, const char *s, lua_Integer want)
{
	ok(L, s);
	if (!lua_isinteger(L, -1))
		fail_msg("'%s' is not an integer", s);
	assert_true(lua_tointeger(L, -1) == want);
	lua_settop(L, 0);
}

static void number(lua_State *L, const char *s, double want)
{
	ok(L, s);
	if (lua_type(L, -1) != LUA_TNUMBER || lua_isinteger(L, -1))
		fail_msg("'%s' is not a float", s);
	assert_true(lua_tonumber(L, -1) == want);
	assert_true(signbit(lua_tonumber(L, -1)) == signbit(want));
	lua_settop(L, 0);
}

static void test_integers_exact(void **state)
{
	lua_State *L = *state;
	integer(L, "42", 42);
	integer(L, " -7 ", -7);
	integer(L, "0", 0);
	integer(L, "9007199254740993", 9007199254740993LL); /* 2^53 + 1 */
	integer(L, "9223372036854775807", INT64_MAX);
	integer(L, "-9223372036854775808", INT64_MIN);
	integer(L, "-9223372036854775807", -INT64_MAX);
}

static void test_floats(void **state)
{
	lua_State *L = *state;
	unsigned long long lossy = svc_json_decode_lossy();
	number(L, "42.0", 42.0);
	number(L, "1e2", 100.0);
	number(L, "1E+2", 100.0);
	number(L, "-2.5e-3", -2.5e-3);
	number(L, "-0", -0.0);
	number(L, "-0.0", -0.0);
	number(L, "1e-999999", 0.0);
	assert_true(svc_json_decode_lossy() == lossy);
	number(L, "9223372036854775808", 9223372036854775808.0); /* 2^63 */
	number(L, "-9223372036854775809", -9223372036854775808.0);
	number(L, "18446744073709551616", 18446744073709551616.0); /* 2^64: past uint64 */
	assert_true(svc_json_decode_lossy() == lossy + 3);
	char big[402];
	memset(big, '9', 400);
	big[0] = '1';
	big[400] = '\0';
	bad(L, big, 400, 8, "number out of range"); /* 1e399 */
	memcpy(big, "1.", 2);                       /* a long float: through a Lua string */
	memset(big + 2, '0', 398);
	big[399] = '5';
	number(L, big, 1.0);
}

static void test_bad_numbers(void **state)
{
	lua_State *L = *state;
	bad(L, "01", 2, 8, "leading zero");
	bad(L, "-01", 3, 8, "leading zero");
	bad(L, "1.", 2, 8, "no digit after '.'");
	bad(L, ".5", 2, 8, "invalid token");
	bad(L, "+1", 2, 8, "invalid token");
	bad(L, "1e", 2, 8, "exponent");
	bad(L, "-", 1, 8, "invalid number");
	bad(L, "1e999999", 8, 8, "out of range");
	bad(L, "NaN", 3, 8, "invalid token");
	bad(L, "Infinity", 8, 8, "invalid token");
	bad(L, "-Infinity", 9, 8, "invalid number");
	bad(L, "0x10", 4, 8, "trailing text");
	bad(L, "1 2", 3, 8, "trailing text after the value at character 3");
}

static void test_structures(void **state)
{
	lua_State *L = *state;
	ok(L, "{\"id\": 9007199254740993, \"a\": [1, null, \"x\", true, false, {}], \"a\": []}");
	assert_int_equal(lua_getfield(L, 1, "id"), LUA_TNUMBER);
	assert_true(lua_tointeger(L, -1) == 9007199254740993LL);
	assert_int_equal(lua_getfield(L, 1, "a"), LUA_TTABLE); /* the last "a" wins */
	assert_int_equal(lua_rawlen(L, -1), 0);
	lua_settop(L, 0);
	ok(L, "[1, null, \"x\"]");
	assert_int_equal(lua_rawlen(L, 1), 3);
	assert_int_equal(lua_rawgeti(L, 1, 2), LUA_TLIGHTUSERDATA);
	assert_null(lua_touserdata(L, -1)); /* cjson.null */
	lua_settop(L, 0);
	bad(L, "[1,]", 4, 8, "expected a value");
	bad(L, "{\"a\":1,}", 8, 8, "object key");
	bad(L, "{\"a\" 1}", 7, 8, "expected ':'");
	bad(L, "[1 2]", 5, 8, "expected ',' or ']'");
	bad(L, "{1:2}", 5, 8, "object key");
	bad(L, "", 0, 8, "text ended");
	bad(L, "[", 1, 8, "text ended");
	bad(L, "tru", 3, 8, "invalid token");
	bad(L, "nul", 3, 8, "invalid token");
	bad(L, "[1] x", 5, 8, "trailing text");
	bad(L, "/* c */ 1", 9, 8, "invalid token");
}

static void test_depth(void **state)
{
	lua_State *L = *state;
	const char *at3 = "[[{\"n\": -9223372036854775808}]]";
	assert_int_equal(svc_json_decode(L, at3, strlen(at3), 3), 0);
	lua_settop(L, 0);
	bad(L, "[[[[1]]]]", 9, 3, "too many nested data structures (4)");
	char deep[4001];
	memset(deep, '[', 4000);
	bad(L, deep, 4000, 100000, "too many nested data structures (1001)");
}

/* Containers larger than the members the decoder holds on the stack before creating or growing
 * their table (32): every element in its place, a key repeated across that boundary keeps its
 * last value, nested containers stay whole, and the stack holds only the result. */
static void test_large_containers(void **state)
{
	lua_State *L = *state;
	static char buf[65536];
	size_t n = 0;

	n += (size_t)snprintf(buf + n, sizeof(buf) - n, "[");
	for (int i = 1; i <= 100; i++)
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s%d", i > 1 ? "," : "", i * 3);
	snprintf(buf + n, sizeof(buf) - n, "]");
	ok(L, buf);
	assert_int_equal(lua_rawlen(L, 1), 100);
	for (int i = 1; i <= 100; i++) {
		assert_int_equal(lua_rawgeti(L, 1, i), LUA_TNUMBER);
		assert_int_equal(lua_tointeger(L, -1), i * 3);
		lua_pop(L, 1);
	}
	lua_settop(L, 0);

	/* 70 keys, k5 again as the 70th (after two flushes), each value an object of 40 keys */
	n = (size_t)snprintf(buf, sizeof(buf), "{");
	for (int i = 1; i <= 70; i++) {
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s\"k%d\":{", i > 1 ? "," : "",
		                      i == 70 ? 5 : i);
		for (int j = 1; j <= 40; j++)
			n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s\"m%d\":%d",
			                      j > 1 ? "," : "", j, i * 100 + j);
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, "}");
	}
	snprintf(buf + n, sizeof(buf) - n, "}");
	assert_true(n + 2 < sizeof(buf));
	ok(L, buf);
	int keys = 0;
	lua_pushnil(L);
	while (lua_next(L, 1)) {
		keys++;
		lua_pop(L, 1);
	}
	assert_int_equal(keys, 69);
	for (int i = 1; i < 70; i++) {
		char k[8];
		snprintf(k, sizeof(k), "k%d", i);
		assert_int_equal(lua_getfield(L, 1, k), LUA_TTABLE);
		for (int j = 1; j <= 40; j += 13) {
			snprintf(k, sizeof(k), "m%d", j);
			assert_int_equal(lua_getfield(L, -1, k), LUA_TNUMBER);
			assert_int_equal(lua_tointeger(L, -1), (i == 5 ? 70 : i) * 100 + j);
			lua_pop(L, 1);
		}
		lua_pop(L, 1);
	}
	assert_int_equal(lua_gettop(L), 1);
	lua_settop(L, 0);

	/* a failure inside a held member leaves only the error */
	const char *broken = "{\"a\":1,\"b\":[1,2,{\"c\":tru}]}";
	bad(L, broken, strlen(broken), 8, "invalid token");
}

static void test_strings(void **state)
{
	lua_State *L = *state;
	size_t n;
	ok(L, "\"a\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\\u0000z\"");
	const char *s = lua_tolstring(L, 1, &n);
	assert_int_equal(n, 17);
	assert_memory_equal(s, "a\"\\/\b\f\n\r\t\xc3\xa9\xf0\x9f\x98\x80\0z", 17);
	lua_settop(L, 0);
	ok(L, "\"caf\xc3\xa9\"");
	lua_settop(L, 0);
	bad(L, "\"\\ud800\"", 8, 8, "lone high surrogate");
	bad(L, "\"\\ud800\\u0041\"", 14, 8, "lone high surrogate");
	bad(L, "\"\\udc00\"", 8, 8, "lone low surrogate");
	bad(L, "\"\\u12\"", 6, 8, "invalid unicode escape");
	bad(L, "\"\\x\"", 4, 8, "invalid escape");
	bad(L, "\"\xff\"", 3, 8, "invalid UTF-8");
	bad(L, "\"\xc3\"", 3, 8, "invalid UTF-8");
	bad(L, "\"a\\n\xed\xa0\x80\"", 8, 8, "invalid UTF-8");
	bad(L, "\"a\tb\"", 5, 8, "control character");
	bad(L, "\"a\0b\"", 5, 8, "control character");
	bad(L, "\"abc", 4, 8, "unterminated string");
	bad(L, "\"ab\\", 4, 8, "unterminated string");
}

static void test_lua_face(void **state)
{
	lua_State *L = *state;
	luaL_openlibs(L);
	lua_newtable(L);
	svc_lua_json_open(L);
	lua_setglobal(L, "core");
	const char *chunk =
	    "local v = core.json_decode('{\"n\": 42, \"f\": 42.0}')\n"
	    "assert(math.type(v.n) == 'integer' and math.type(v.f) == 'float')\n"
	    "local x, err = core.json_decode('{\"n\": 01}')\n"
	    "assert(x == nil and err:find('(leading zero) at character 7', 1, true), err)\n"
	    "assert(core.json_decode('[[1]]', 1) == nil)\n"
	    "assert(not pcall(core.json_decode, '1', 1001))\n"
	    "assert(math.type(core.json_lossy()) == 'integer')\n";
	if (luaL_dostring(L, chunk) != LUA_OK)
		fail_msg("%s", lua_tostring(L, -1));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_integers_exact, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_floats, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bad_numbers, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_structures, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_depth, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_large_containers, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_strings, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_lua_face, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
