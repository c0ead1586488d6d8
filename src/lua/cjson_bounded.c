/* lua/cjson_bounded: cjson with its buffers counted against the memory cap. See
 * cjson_bounded.h. */
#include "lua/cjson_bounded.h"

#include <lauxlib.h>
#include <lualib.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>

#include "lua/runtime.h"

/* The largest text either direction handles: cjson keeps sizes in ints and grows its buffer
 * to twice the text. */
#define MAX_TEXT ((size_t)1 << 30)

/* Upvalues of the bounded encode: the module's own functions. */
enum { UP_ENCODE = 1, UP_PRECISION, UP_SPARSE, UP_DEPTH };

/* The measure of one encode: what cjson will write, in the order it writes it. */
struct walk {
	lua_State *L;
	size_t out;    /* bytes of text so far */
	size_t buffer; /* size cjson's buffer grows to so far */
	size_t budget; /* the buffer + the Lua string must stay under this */
	int precision, max_depth, sparse_convert, sparse_ratio, sparse_safe;
	bool over; /* past the budget: refuse */
};

/* cjson asks its buffer for room for `ahead` more bytes (6 per byte of a string, 32 for a
 * number) before each value: the buffer (1023 bytes, doubled as needed) grows to hold the text
 * so far, that room and a terminator. Then n bytes are written. */
static bool add(struct walk *w, size_t ahead, size_t n)
{
	while (w->buffer < w->out + ahead + 1 && w->buffer <= w->budget)
		w->buffer *= 2;
	w->out += n;
	if (w->buffer > w->budget || w->out + 64 > w->budget - w->buffer)
		w->over = true;
	return !w->over;
}

static bool walk_value(struct walk *w, int depth);

/* A string at idx (a real string: a number key must not be converted in place). */
static bool walk_string(struct walk *w, int idx)
{
	size_t len, n = 2;
	const unsigned char *s = (const unsigned char *)lua_tolstring(w->L, idx, &len);

	for (size_t i = 0; i < len; i++)
		n += s[i] < 32 || s[i] == 127                     ? 6
		     : s[i] == '"' || s[i] == '\\' || s[i] == '/' ? 2
		                                                  : 1;
	return add(w, 6 * len + 2, n);
}

static bool walk_number(struct walk *w, int idx, size_t extra)
{
	char buf[64];
	int n = snprintf(buf, sizeof(buf), "%.*g", w->precision, (double)lua_tonumber(w->L, idx));

	return add(w, 32 + extra, (size_t)(n < 4 ? 4 : n) + extra);
}

/* The array of the table on top, items 1..max as cjson writes them (holes as null). */
static bool walk_array(struct walk *w, int depth, double max)
{
	if (!add(w, 2, 2))
		return false;
	if (max * 2 > (double)w->budget) { /* at least "0," each: cannot fit */
		w->out += w->budget;
		w->over = true;
		return false;
	}
	for (lua_Integer i = 1; i <= (lua_Integer)max; i++) {
		bool ok = (i == 1 || add(w, 1, 1));
		if (ok) {
			lua_rawgeti(w->L, -1, i);
			ok = walk_value(w, depth);
			lua_pop(w->L, 1);
		}
		if (!ok)
			return false;
	}
	return true;
}

/* The object of the table on top: number keys as "<number>", string keys as strings. */
static bool walk_object(struct walk *w, int depth)
{
	lua_State *L = w->L;
	bool first = true;

	if (!add(w, 2, 2))
		return false;
	lua_pushnil(L);
	while (lua_next(L, -2)) {
		bool ok = first || add(w, 1, 1);
		if (ok && lua_type(L, -2) == LUA_TNUMBER)
			ok = walk_number(w, -2, 3);
		else if (ok && lua_type(L, -2) == LUA_TSTRING)
			ok = walk_string(w, -2) && add(w, 1, 1);
		else
			ok = false; /* cjson raises "table key must be a number or string" */
		ok = ok && walk_value(w, depth);
		lua_pop(L, 1);
		if (!ok) {
			lua_pop(L, 1);
			return false;
		}
		first = false;
	}
	return true;
}

/* The table on top: an array when every key is an integer >= 1 and it is not too sparse
 * (cjson's lua_array_length), else an object. */
static bool walk_table(struct walk *w, int depth)
{
	lua_State *L = w->L;
	double k, max = 0;
	size_t items = 0;
	bool array = true;

	if (++depth > w->max_depth || !lua_checkstack(L, 3))
		return false; /* cjson raises "excessive nesting" here */
	lua_pushnil(L);
	while (lua_next(L, -2)) {
		lua_pop(L, 1);
		if (lua_type(L, -1) == LUA_TNUMBER && (k = lua_tonumber(L, -1)) != 0 &&
		    floor(k) == k && k >= 1) {
			max = k > max ? k : max;
			items++;
			continue;
		}
		lua_pop(L, 1);
		array = false;
		break;
	}
	if (array && w->sparse_ratio > 0 && max > (double)items * w->sparse_ratio &&
	    max > w->sparse_safe) {
		if (!w->sparse_convert)
			return false; /* cjson raises "excessively sparse array" here */
		array = false;
	}
	return array && max > 0 ? walk_array(w, depth, max) : walk_object(w, depth);
}

/* The value on top of the stack; false when the walk stops (over the budget, or where cjson
 * raises: everything it writes before that is counted). */
static bool walk_value(struct walk *w, int depth)
{
	switch (lua_type(w->L, -1)) {
	case LUA_TSTRING:
		return walk_string(w, -1);
	case LUA_TNUMBER:
		return walk_number(w, -1, 0);
	case LUA_TBOOLEAN:
		return add(w, 5, 5);
	case LUA_TTABLE:
		return walk_table(w, depth);
	case LUA_TNIL:
		return add(w, 4, 4);
	case LUA_TLIGHTUSERDATA:
		if (lua_touserdata(w->L, -1) == NULL)
			return add(w, 4, 4);
		return false;
	default:
		return false; /* cjson raises "type not supported" here */
	}
}

/* Calls the getter upvalue up with no arguments; its first n results as ints. */
static void get_settings(lua_State *L, int up, int n, int *out)
{
	lua_pushvalue(L, lua_upvalueindex(up));
	lua_call(L, 0, n);
	for (int i = 0; i < n; i++)
		out[i] = lua_type(L, i - n) == LUA_TBOOLEAN ? lua_toboolean(L, i - n)
		                                            : (int)lua_tointeger(L, i - n);
	lua_pop(L, n);
}

/* Calls the cjson function (upvalue 1) with the arguments, with `reserved` bytes counted
 * against the cap while it runs; returns its results or raises its error. */
static int call_counted(lua_State *L, struct svc_runtime *rt, size_t reserved)
{
	int nargs = lua_gettop(L), rc;

	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	rc = lua_pcall(L, nargs, LUA_MULTRET, 0);
	if (rt && reserved)
		svc_runtime_unreserve(rt, reserved);
	if (rc != LUA_OK)
		return lua_error(L);
	return lua_gettop(L);
}

/* Raises the refusal of a text that needs at least `need` bytes: an out-of-memory error (the
 * call fails as out of memory) when the cap is what refuses it. */
static int refuse(lua_State *L, struct svc_runtime *rt, const char *fn, size_t need)
{
	size_t limit = rt ? svc_runtime_memory_limit(rt) : 0;
	size_t used = rt ? svc_runtime_memory_used(rt) : 0;
	char msg[200];

	if (limit && svc_runtime_reserve(rt, need) != 0) {
		snprintf(
		    msg, sizeof(msg),
		    "%s: not enough memory: the JSON text needs %.1f MiB or more, %.1f MiB are "
		    "left under LUA_MEMORY_LIMIT_MB (%zu MiB)",
		    fn, need / 1048576.0, (used < limit ? limit - used : 0) / 1048576.0,
		    limit >> 20);
		return luaL_error(L, "%s", msg);
	}
	if (limit)
		svc_runtime_unreserve(rt, need);
	return luaL_error(L, "%s: the JSON text is larger than 1 GiB", fn);
}

static int bounded_encode(lua_State *L)
{
	struct svc_runtime *rt = svc_runtime_of(L);
	size_t limit = rt ? svc_runtime_memory_limit(rt) : 0, used, reserved = 0;
	struct walk w = {.L = L, .buffer = 1023, .budget = MAX_TEXT * 3};
	int sparse[3];

	if (lua_gettop(L) != 1) /* cjson's own argument error */
		return call_counted(L, rt, 0);
	if (limit) {
		used = svc_runtime_memory_used(rt);
		if (used >= limit || limit - used < w.budget)
			w.budget = used >= limit ? 0 : limit - used;
	}
	get_settings(L, UP_PRECISION, 1, &w.precision);
	get_settings(L, UP_DEPTH, 1, &w.max_depth);
	get_settings(L, UP_SPARSE, 3, sparse);
	w.sparse_convert = sparse[0];
	w.sparse_ratio = sparse[1];
	w.sparse_safe = sparse[2];
	lua_pushvalue(L, 1);
	walk_value(&w, 0);
	lua_settop(L, 1);
	if (w.over || w.out > MAX_TEXT || w.buffer > INT_MAX)
		return refuse(L, rt, "cjson.encode", w.buffer + w.out);
	if (rt && limit) {
		reserved = w.buffer;
		if (svc_runtime_reserve(rt, reserved) != 0)
			return refuse(L, rt, "cjson.encode", reserved + w.out);
	}
	return call_counted(L, rt, reserved);
}

static int bounded_decode(lua_State *L)
{
	struct svc_runtime *rt = svc_runtime_of(L);
	size_t len = 0, reserved = 0;

	if (lua_gettop(L) == 1 && lua_type(L, 1) == LUA_TSTRING) {
		lua_tolstring(L, 1, &len);
		if (len > MAX_TEXT)
			return refuse(L, NULL, "cjson.decode", len);
		/* its scratch buffer holds a copy of the input */
		if (rt && svc_runtime_memory_limit(rt)) {
			reserved = len + 64;
			if (svc_runtime_reserve(rt, reserved) != 0)
				return refuse(L, rt, "cjson.decode", reserved);
		}
	}
	return call_counted(L, rt, reserved);
}

/* encode_keep_buffer: stays off whatever is asked (a kept buffer would outlive the call,
 * uncounted); returns false as cjson does. */
static int keep_buffer_off(lua_State *L)
{
	lua_settop(L, 0);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_pushboolean(L, 0);
	lua_call(L, 1, 1);
	return 1;
}

static void bound_module(lua_State *L);

/* new(): a new instance, bounded as well. */
static int bounded_new(lua_State *L)
{
	lua_settop(L, 0);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_call(L, 0, 1);
	bound_module(L);
	return 1;
}

/* Replaces field `name` of the module on top with fn closing over the original (upvalue 1)
 * and `extra` more values pushed above the module. */
static void replace(lua_State *L, const char *name, lua_CFunction fn, int extra)
{
	lua_getfield(L, -1 - extra, name);
	lua_insert(L, -1 - extra);
	lua_pushcclosure(L, fn, 1 + extra);
	lua_setfield(L, -2, name);
}

/* Bounds the cjson module table on top of the stack in place. */
static void bound_module(lua_State *L)
{
	lua_getfield(L, -1, "encode_keep_buffer");
	lua_pushboolean(L, 0);
	lua_call(L, 1, 0); /* frees the buffer cjson keeps by default */
	lua_getfield(L, -1, "encode_number_precision");
	lua_getfield(L, -2, "encode_sparse_array");
	lua_getfield(L, -3, "encode_max_depth");
	replace(L, "encode", bounded_encode, 3);
	replace(L, "decode", bounded_decode, 0);
	replace(L, "new", bounded_new, 0);
	replace(L, "encode_keep_buffer", keep_buffer_off, 0);
}

/* Pushes package.searchpath("cjson", package.cpath): the file's name, or nil and the list of
 * files tried. The package table is taken from the registry, so Lua code that replaced the
 * global cannot divert it; leaves the package table below the two results. */
static void search_cjson(lua_State *L)
{
	luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
	lua_getfield(L, -1, LUA_LOADLIBNAME);
	lua_remove(L, -2);
	lua_getfield(L, -1, "searchpath");
	lua_pushliteral(L, "cjson");
	lua_getfield(L, -3, "cpath");
	lua_call(L, 2, 2);
}

/* Raises the one-line error of a cjson.so that package.cpath does not find (the package table
 * and searchpath's two results on top). */
static int not_found(lua_State *L)
{
	lua_getfield(L, -3, "cpath");
	return luaL_error(L, "module 'cjson' (lua-cjson) not found in package.cpath %s",
	                  lua_tostring(L, -1));
}

/* Pushes cjson's own opener `sym`, from the cjson.so that package.cpath finds. */
static void push_opener(lua_State *L, const char *sym)
{
	search_cjson(L);
	if (lua_isnil(L, -2))
		not_found(L);
	lua_pop(L, 1);
	lua_getfield(L, -2, "loadlib");
	lua_insert(L, -2);
	lua_pushstring(L, sym);
	lua_call(L, 2, 2);
	if (lua_isnil(L, -2))
		luaL_error(L, "cannot load cjson: %s", lua_tostring(L, -1));
	lua_pop(L, 1);
	lua_remove(L, -2);
}

int svc_cjson_check(lua_State *L)
{
	search_cjson(L);
	if (lua_isnil(L, -2))
		return not_found(L);
	lua_pop(L, 3);
	return 0;
}

int svc_luaopen_cjson_bounded(lua_State *L)
{
	push_opener(L, "luaopen_cjson");
	lua_call(L, 0, 1);
	bound_module(L);
	return 1;
}

int svc_luaopen_cjson_safe_bounded(lua_State *L)
{
	push_opener(L, "luaopen_cjson_safe");
	lua_call(L, 0, 1);
	bound_module(L);
	return 1;
}
