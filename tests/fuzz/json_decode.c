/* Fuzz target: svc_json_decode, which turns message bodies (network bytes) into Lua values.
 * The first input byte picks max_depth (1..256); the rest is the text, in a buffer of exactly
 * its size (no terminator) so any read past it is caught. Invariants: the Lua stack grows by
 * exactly one value either way; an accepted text re-encoded (integers as integers, floats with
 * 17 digits and a '.', strings escaped) decodes again to an equal value of the same types. */
#include <lauxlib.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua/json_decode.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A growable text (a luaL_Buffer would need a balanced stack between additions). */
struct text {
	char *s;
	size_t n, cap;
};

static void add(struct text *t, const char *s, size_t n)
{
	if (t->n + n > t->cap) {
		t->cap = (t->n + n) * 2 + 64;
		t->s = realloc(t->s, t->cap);
		if (!t->s)
			abort();
	}
	memcpy(t->s + t->n, s, n);
	t->n += n;
}

static void add_str(struct text *t, const char *s)
{
	add(t, s, strlen(s));
}

static void add_char(struct text *t, char c)
{
	add(t, &c, 1);
}

/* Writes the value at idx as JSON into b (arrays: tables with integer keys; objects: the rest). */
static void encode(lua_State *L, int idx, struct text *b);

static void encode_string(lua_State *L, int idx, struct text *b)
{
	size_t n;
	const char *s = lua_tolstring(L, idx, &n);
	char esc[8];

	add_char(b, '"');
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == '"' || c == '\\') {
			snprintf(esc, sizeof(esc), "\\u%04x", c);
			add_str(b, esc);
		} else {
			add_char(b, (char)c);
		}
	}
	add_char(b, '"');
}

static void encode_table(lua_State *L, int idx, struct text *b)
{
	lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
	bool first = true;

	if (n > 0) {
		add_char(b, '[');
		for (lua_Integer i = 1; i <= n; i++) {
			if (i > 1)
				add_char(b, ',');
			lua_rawgeti(L, idx, i);
			encode(L, lua_gettop(L), b);
			lua_pop(L, 1);
		}
		add_char(b, ']');
		return;
	}
	add_char(b, '{');
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		if (lua_type(L, -2) != LUA_TSTRING)
			__builtin_trap(); /* an object key is always a string */
		if (!first)
			add_char(b, ',');
		first = false;
		encode_string(L, lua_gettop(L) - 1, b);
		add_char(b, ':');
		encode(L, lua_gettop(L), b);
		lua_pop(L, 1);
	}
	add_char(b, '}');
}

static void encode(lua_State *L, int idx, struct text *b)
{
	char num[64];

	luaL_checkstack(L, 8, "fuzz encode");
	switch (lua_type(L, idx)) {
	case LUA_TTABLE:
		encode_table(L, idx, b);
		break;
	case LUA_TSTRING:
		encode_string(L, idx, b);
		break;
	case LUA_TBOOLEAN:
		add_str(b, lua_toboolean(L, idx) ? "true" : "false");
		break;
	case LUA_TLIGHTUSERDATA:
		if (lua_touserdata(L, idx) != NULL)
			__builtin_trap();
		add_str(b, "null");
		break;
	case LUA_TNUMBER:
		if (lua_isinteger(L, idx)) {
			snprintf(num, sizeof(num), "%lld", (long long)lua_tointeger(L, idx));
		} else {
			double v = lua_tonumber(L, idx);
			if (!isfinite(v))
				__builtin_trap(); /* NaN/infinity are never decoded */
			snprintf(num, sizeof(num), "%.17g", v);
			if (!strpbrk(num, ".e"))
				strcat(num, ".0"); /* stays a float when read back */
		}
		add_str(b, num);
		break;
	default:
		__builtin_trap();
	}
}

/* Deep equality with the same number subtypes (and the same sign of zero). */
static bool same(lua_State *L, int a, int b)
{
	if (lua_type(L, a) != lua_type(L, b))
		return false;
	if (lua_type(L, a) == LUA_TNUMBER) {
		if (lua_isinteger(L, a) != lua_isinteger(L, b))
			return false;
		if (!lua_isinteger(L, a) &&
		    signbit(lua_tonumber(L, a)) != signbit(lua_tonumber(L, b)))
			return false;
		return lua_rawequal(L, a, b);
	}
	if (lua_type(L, a) != LUA_TTABLE)
		return lua_rawequal(L, a, b);
	luaL_checkstack(L, 8, "fuzz same");
	size_t na = 0, nb = 0;
	lua_pushnil(L);
	while (lua_next(L, a)) {
		na++;
		lua_pushvalue(L, -2);
		lua_rawget(L, b);
		bool eq = same(L, lua_gettop(L) - 1, lua_gettop(L));
		lua_pop(L, 2);
		if (!eq) {
			lua_pop(L, 1);
			return false;
		}
	}
	lua_pushnil(L);
	while (lua_next(L, b)) {
		nb++;
		lua_pop(L, 1);
	}
	return na == nb;
}

static int check(lua_State *L)
{
	const char *text = lua_touserdata(L, 1);
	size_t len = (size_t)lua_tointeger(L, 2);
	int depth = (int)lua_tointeger(L, 3);
	struct text b = {0};

	lua_settop(L, 0);
	if (svc_json_decode(L, text, len, depth) != 0) {
		if (lua_gettop(L) != 1 || !lua_isstring(L, 1))
			__builtin_trap();
		return 0;
	}
	if (lua_gettop(L) != 1)
		__builtin_trap();
	encode(L, 1, &b);
	lua_pushlstring(L, b.s, b.n);
	free(b.s);
	size_t n;
	const char *again = lua_tolstring(L, 2, &n);
	if (svc_json_decode(L, again, n, depth) != 0)
		__builtin_trap(); /* what we wrote must read back */
	if (!same(L, 1, 3))
		__builtin_trap();
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static lua_State *L;

	if (size < 1)
		return 0;
	if (!L)
		L = luaL_newstate();
	size_t len = size - 1;
	char *text = malloc(len ? len : 1);
	if (!L || !text)
		abort();
	if (len)
		memcpy(text, data + 1, len);
	lua_settop(L, 0);
	lua_pushcfunction(L, check);
	lua_pushlightuserdata(L, text);
	lua_pushinteger(L, (lua_Integer)len);
	lua_pushinteger(L, 1 + data[0]);
	if (lua_pcall(L, 3, 0, 0) != LUA_OK)
		__builtin_trap(); /* only an out-of-memory error could get here */
	free(text);
	lua_gc(L, LUA_GCCOLLECT);
	return 0;
}
