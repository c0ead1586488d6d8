/* Unit tests for lua/runtime.c: protected calls, tracebacks and error texts, deadlines, the
 * memory cap (cjson's buffers included), the embedded modules and the project's package.path,
 * error objects whose text cannot be read, os.exit and coroutines under the deadline. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <lauxlib.h>
#include <lualib.h>
#include <string.h>

#include "lua/runtime.h"

static int setup(void **state)
{
	char err[256];

	*state = svc_runtime_new(NULL, err, sizeof(err));
	return *state ? 0 : -1;
}

static int teardown(void **state)
{
	svc_runtime_free(*state);
	return 0;
}

/* Loads chunk and calls it through svc_lua_pcall with the given timeout. */
static enum svc_lua_status run(struct svc_runtime *rt, const char *chunk, double timeout)
{
	lua_State *L = svc_runtime_state(rt);

	assert_int_equal(luaL_loadstring(L, chunk), LUA_OK);
	return svc_lua_pcall(rt, 0, 1, timeout);
}

static void returns_results_and_balances_stack(void **state)
{
	struct svc_runtime *rt = *state;
	lua_State *L = svc_runtime_state(rt);

	assert_int_equal(run(rt, "return 40 + 2", 0), SVC_LUA_OK);
	assert_int_equal(lua_tointeger(L, -1), 42);
	lua_pop(L, 1);
	assert_int_equal(lua_gettop(L), 0);
}

static void string_errors_get_a_traceback(void **state)
{
	struct svc_runtime *rt = *state;
	lua_State *L = svc_runtime_state(rt);
	char text[2048];

	assert_int_equal(run(rt, "local function f() error('boom') end f()", 0), SVC_LUA_ERROR);
	svc_lua_error_text(L, text, sizeof(text));
	assert_non_null(strstr(text, "boom"));
	assert_non_null(strstr(text, "stack traceback:"));
	assert_int_equal(lua_gettop(L), 0);
}

static void table_errors_keep_their_fields(void **state)
{
	struct svc_runtime *rt = *state;
	lua_State *L = svc_runtime_state(rt);

	assert_int_equal(run(rt, "error({permanent = true, message = 'bad input'})", 0),
	                 SVC_LUA_ERROR);
	assert_int_equal(lua_type(L, -1), LUA_TTABLE);
	lua_getfield(L, -1, "permanent");
	assert_true(lua_toboolean(L, -1));
	lua_getfield(L, -2, "traceback");
	assert_non_null(strstr(lua_tostring(L, -1), "stack traceback:"));
	lua_pop(L, 3);
}

/* Error values other than tables become text with a traceback, in the shape of lua.c's
 * message handler: strings and numbers as they are, other values through __tostring, else
 * "(error object is a <type> value)". */
static void other_error_values_become_text_with_a_traceback(void **state)
{
	static const struct {
		const char *chunk, *text;
	} cases[] = {
	    {"error('x', 0)", "x\nstack traceback:\n"},
	    {"error('x')", "[string \"error('x')\"]:1: x\nstack traceback:\n"},
	    {"error(42)", "42\nstack traceback:\n"},
	    {"error(4.5)", "4.5\nstack traceback:\n"},
	    {"error(io.stdout)", "file (0x"},
	    {"error(true)", "(error object is a boolean value)\nstack traceback:\n"},
	    {"error()", "(error object is a nil value)\nstack traceback:\n"},
	    {"error(print)", "(error object is a function value)\nstack traceback:\n"},
	};
	struct svc_runtime *rt = *state;
	lua_State *L = svc_runtime_state(rt);
	char text[2048];
	int wrong = 0;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		assert_int_equal(run(rt, cases[i].chunk, 0), SVC_LUA_ERROR);
		assert_int_equal(lua_type(L, -1), LUA_TSTRING);
		svc_lua_error_text(L, text, sizeof(text));
		assert_int_equal(lua_gettop(L), 0);
		if (strncmp(text, cases[i].text, strlen(cases[i].text)) != 0 ||
		    !strstr(text, "\nstack traceback:\n")) {
			print_error("%s gave: %s\n", cases[i].chunk, text);
			wrong++;
		}
	}
	assert_int_equal(wrong, 0);
}

static void table_errors_with_tostring_keep_fields_and_text(void **state)
{
	struct svc_runtime *rt = *state;
	lua_State *L = svc_runtime_state(rt);
	char text[2048];

	assert_int_equal(
	    run(rt,
	        "error(setmetatable({code = 7}, {__tostring = function() return 'custom' end}))",
	        0),
	    SVC_LUA_ERROR);
	assert_int_equal(lua_type(L, -1), LUA_TTABLE);
	lua_getfield(L, -1, "code");
	assert_int_equal(lua_tointeger(L, -1), 7);
	lua_pop(L, 1);
	svc_lua_error_text(L, text, sizeof(text));
	assert_int_equal(strncmp(text, "custom\nstack traceback:\n", 24), 0);
	/* a table without __tostring or message */
	assert_int_equal(run(rt, "error({})", 0), SVC_LUA_ERROR);
	assert_int_equal(lua_type(L, -1), LUA_TTABLE);
	svc_lua_error_text(L, text, sizeof(text));
	assert_int_equal(strncmp(text, "(error table)\nstack traceback:\n", 31), 0);
	assert_int_equal(lua_gettop(L), 0);
}

static void project_modules_are_on_the_path_and_the_state_knows_its_runtime(void **state)
{
	char err[256];
	struct svc_runtime *rt = svc_runtime_new("/srv/proj", err, sizeof(err));
	lua_State *L, *plain;
	(void)state;

	assert_non_null(rt);
	L = svc_runtime_state(rt);
	assert_ptr_equal(svc_runtime_of(L), rt);
	assert_int_equal(run(rt, "return package.path", 0), SVC_LUA_OK);
	assert_int_equal(strncmp(lua_tostring(L, -1),
	                         "/srv/proj/apps/?.lua;/srv/proj/apps/?/init.lua;/srv/proj/?.lua;",
	                         63),
	                 0);
	lua_pop(L, 1);
	/* loading the apps later (svccomm.apps.load_all) does not add it twice */
	assert_int_equal(run(rt,
	                     "local before = package.path "
	                     "require('svccomm.apps').extend_path('/srv/proj') "
	                     "return package.path == before",
	                     0),
	                 SVC_LUA_OK);
	assert_true(lua_toboolean(L, -1));
	lua_pop(L, 1);
	svc_runtime_free(rt);
	plain = luaL_newstate();
	assert_null(svc_runtime_of(plain));
	lua_close(plain);
}

static void runaway_code_is_stopped_even_if_it_catches_the_error(void **state)
{
	struct svc_runtime *rt = *state;
	lua_State *L = svc_runtime_state(rt);
	char text[2048];

	assert_int_equal(run(rt, "while true do pcall(function() while true do end end) end", 0.05),
	                 SVC_LUA_TIMEOUT);
	svc_lua_error_text(L, text, sizeof(text));
	if (!strstr(text, "timed out"))
		print_error("unexpected error text: %s\n", text);
	assert_non_null(strstr(text, "timed out"));
	/* The deadline belongs to that call only. */
	assert_int_equal(run(rt, "local n = 0 for i = 1, 1e4 do n = n + i end return n", 10),
	                 SVC_LUA_OK);
	lua_pop(L, 1);
}

/* The allocator keeps Lua's freed small blocks for reuse (up to 256 bytes, by 16-byte class):
 * blocks taken back from its lists, and blocks moved across classes and past 256 bytes as
 * tables grow and shrink, keep their bytes, and the count of bytes in use returns to where it
 * was once the garbage is collected. */
static void reused_blocks_keep_their_bytes(void **state)
{
	struct svc_runtime *rt = *state;
	const char *chunk =
	    "local kept = {}\n"
	    "for round = 1, 3 do\n"
	    "  for n = 1, 600, 7 do\n"
	    "    local s = string.rep(string.char(65 + n % 26), n) .. round\n"
	    "    local t = {}\n"
	    "    for i = 1, n % 70 do t[i] = i * round; t['k' .. i] = s end\n"
	    "    for i = 1, n % 70, 2 do t['k' .. i] = nil end\n"
	    "    kept[#kept + 1] = {s = s, t = t, n = n, round = round}\n"
	    "  end\n"
	    "  if round < 3 then kept = {} collectgarbage() end\n"
	    "end\n"
	    "for _, e in ipairs(kept) do\n"
	    "  assert(#e.s == e.n + 1 and e.s:sub(1, 1) == string.char(65 + e.n % 26))\n"
	    "  for i = 1, e.n % 70 do\n"
	    "    assert(e.t[i] == i * e.round)\n"
	    "    assert(e.t['k' .. i] == (i % 2 == 0 and e.s or nil))\n"
	    "  end\n"
	    "end\n"
	    "return #kept";
	size_t before;

	lua_gc(svc_runtime_state(rt), LUA_GCCOLLECT, 0);
	before = svc_runtime_memory_used(rt);
	assert_int_equal(run(rt, chunk, 0), SVC_LUA_OK);
	assert_int_equal(lua_tointeger(svc_runtime_state(rt), -1), 86);
	lua_pop(svc_runtime_state(rt), 1);
	lua_gc(svc_runtime_state(rt), LUA_GCCOLLECT, 0);
	assert_true(svc_runtime_memory_used(rt) < before + 4096);
}

static void memory_cap_fails_the_call_not_the_process(void **state)
{
	struct svc_runtime *rt = *state;
	lua_State *L = svc_runtime_state(rt);
	char text[512];

	svc_runtime_set_memory_limit(rt, svc_runtime_memory_used(rt) + (4u << 20));
	assert_int_equal(run(rt, "local t = {} for i = 1, 1e8 do t[i] = ('x'):rep(64) .. i end", 0),
	                 SVC_LUA_MEMORY);
	svc_lua_error_text(L, text, sizeof(text));
	assert_non_null(strstr(text, "memory"));
	assert_int_equal(run(rt, "return 1", 0), SVC_LUA_OK);
	lua_pop(L, 1);
	svc_runtime_set_memory_limit(rt, 0);
}

static void a_full_state_is_renewed_empty_under_the_same_cap(void **state)
{
	struct svc_runtime *rt = *state;
	char err[256];

	svc_runtime_set_memory_limit(rt, svc_runtime_memory_used(rt) + (4u << 20));
	assert_int_equal(run(rt, "while true do LEAK = {LEAK, 'x' .. #tostring(LEAK)} end", 0),
	                 SVC_LUA_MEMORY);
	lua_pop(svc_runtime_state(rt), 1);
	assert_int_equal(svc_runtime_renew(rt, err, sizeof(err)), 0);
	assert_true(svc_runtime_memory_used(rt) < (1u << 20)); /* the old state's bytes are gone */
	assert_int_equal(run(rt, "assert(LEAK == nil) return require('cjson').encode({1})", 1),
	                 SVC_LUA_OK);
	lua_pop(svc_runtime_state(rt), 1);
	assert_ptr_equal(svc_runtime_of(svc_runtime_state(rt)), rt);
	svc_runtime_set_memory_limit(rt, 0);
}

/* devconsumer's reload: the new state is built beside the serving one, which serves on
 * unchanged when the new one is given back. */
static void a_new_state_is_built_beside_and_swapped_only_when_asked(void **state)
{
	struct svc_runtime *rt = *state;
	lua_State *old = svc_runtime_state(rt);
	char err[256];

	assert_int_equal(run(rt, "KEPT = 1", 0), SVC_LUA_OK);
	lua_State *L = svc_runtime_state_new(rt, err, sizeof(err));
	assert_non_null(L);
	assert_ptr_equal(svc_runtime_state(rt), old);
	assert_ptr_equal(svc_runtime_of(L), rt);
	/* a failed load: put the old state back, close the new one */
	assert_ptr_equal(svc_runtime_exchange(rt, L), old);
	assert_int_equal(run(rt, "assert(KEPT == nil) NEW = 1", 0), SVC_LUA_OK);
	assert_ptr_equal(svc_runtime_exchange(rt, old), L);
	lua_close(L);
	assert_int_equal(run(rt, "assert(KEPT == 1 and NEW == nil)", 0), SVC_LUA_OK);
	/* a good load: the new state stays, the old one is closed */
	L = svc_runtime_state_new(rt, err, sizeof(err));
	assert_non_null(L);
	lua_close(svc_runtime_exchange(rt, L));
	assert_int_equal(run(rt, "assert(KEPT == nil) return require('cjson').encode({1})", 0),
	                 SVC_LUA_OK);
	lua_pop(svc_runtime_state(rt), 1);
}

static void cjson_and_embedded_modules_are_preloaded(void **state)
{
	struct svc_runtime *rt = *state;
	lua_State *L = svc_runtime_state(rt);

	assert_int_equal(run(rt, "return require('cjson').encode({a = 1})", 0), SVC_LUA_OK);
	assert_string_equal(lua_tostring(L, -1), "{\"a\":1}");
	lua_pop(L, 1);
	assert_int_equal(run(rt, "return type(require('svccomm.message_router').consumer)", 0),
	                 SVC_LUA_OK);
	assert_string_equal(lua_tostring(L, -1), "function");
	lua_pop(L, 1);
}

/* An error object is the application's: reading its text (its __tostring, or __index for
 * "message") runs protected and under a deadline, so one that raises or loops gives a text
 * saying so instead of aborting the process or hanging it. */
static void error_objects_whose_text_raises_or_loops_do_not_stop_the_process(void **state)
{
	static const struct {
		const char *chunk, *text;
	} cases[] = {
	    {"error(setmetatable({}, {__tostring = function() error('in tostring') end}))",
	     "in tostring"},
	    {"error(setmetatable({}, {__index = function() error('in index') end}))", "in index"},
	    {"error(setmetatable({}, {__tostring = function() while true do end end}))",
	     "took too long"},
	    {"error(setmetatable({}, {__index = function() while true do end end}))",
	     "took too long"},
	};
	struct svc_runtime *rt = *state;
	lua_State *L = svc_runtime_state(rt);
	char text[2048];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		assert_int_equal(run(rt, cases[i].chunk, 5), SVC_LUA_ERROR);
		assert_int_equal(lua_type(L, -1), LUA_TTABLE);
		svc_lua_error_text(L, text, sizeof(text));
		assert_int_equal(lua_gettop(L), 0);
		if (!strstr(text, "(error object is a table value; reading its text failed: ") ||
		    !strstr(text, cases[i].text))
			print_error("%s gave: %s\n", cases[i].chunk, text);
		assert_non_null(strstr(text, cases[i].text));
	}
	/* the traceback is stored raw: a __newindex that raises is not called */
	assert_int_equal(
	    run(rt, "error(setmetatable({}, {__newindex = function() error('ni') end}))", 5),
	    SVC_LUA_ERROR);
	lua_pushliteral(L, "traceback");
	lua_rawget(L, -2);
	assert_non_null(strstr(lua_tostring(L, -1), "stack traceback:"));
	lua_pop(L, 2);
	assert_int_equal(run(rt, "return 1", 0), SVC_LUA_OK);
	lua_pop(L, 1);
}

/* Other values are turned into text by the message handler: a __tostring that raises or loops
 * (here on every function) gives "(error object is a function value)", with a deadline of its
 * own when the call has none. */
static void other_error_values_whose_tostring_raises_or_loops_become_their_type(void **state)
{
	static const char *const tostrings[] = {
	    "function() error('in tostring') end",
	    "function() while true do end end",
	};
	struct svc_runtime *rt = *state;
	lua_State *L = svc_runtime_state(rt);
	char chunk[256], text[2048];

	for (size_t i = 0; i < 2; i++) {
		snprintf(chunk, sizeof(chunk),
		         "debug.setmetatable(print, {__tostring = %s}) error(print)", tostrings[i]);
		for (double timeout = 0; timeout <= 5; timeout += 5) {
			assert_int_equal(run(rt, chunk, timeout), SVC_LUA_ERROR);
			svc_lua_error_text(L, text, sizeof(text));
			assert_int_equal(strncmp(text, "(error object is a function value)\n", 35),
			                 0);
		}
	}
	assert_int_equal(run(rt, "debug.setmetatable(print, nil) return 1", 0), SVC_LUA_OK);
	lua_pop(L, 1);
}

/* Once forbidden (a consumer that consumes), os.exit raises instead of ending the process,
 * also when it was kept in a local before. */
static void os_exit_raises_once_forbidden(void **state)
{
	struct svc_runtime *rt = *state;
	lua_State *L = svc_runtime_state(rt);
	char text[2048];

	assert_int_equal(run(rt, "kept_exit = os.exit return type(kept_exit)", 0), SVC_LUA_OK);
	assert_string_equal(lua_tostring(L, -1), "function");
	lua_pop(L, 1);
	svc_runtime_forbid_exit(rt, true);
	static const char *const chunks[] = {"os.exit(3)", "os.exit(2)", "kept_exit(0)",
	                                     "os.exit(true, true)"};
	for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
		assert_int_equal(run(rt, chunks[i], 1), SVC_LUA_ERROR);
		svc_lua_error_text(L, text, sizeof(text));
		assert_non_null(strstr(text, "os.exit() is not allowed in a handler"));
	}
	svc_runtime_forbid_exit(rt, false);
}

/* HANDLER_TIMEOUT stops a loop inside a coroutine, also one created before the call (when the
 * module loaded, without a deadline), and also when the coroutine or its caller catches the
 * error; a coroutine that behaves keeps working afterwards. */
static void the_deadline_stops_loops_inside_coroutines(void **state)
{
	static const char *const calls[] = {
	    "coroutine.resume(co)",
	    "wrapped()",
	    "while true do coroutine.resume(catching) end",
	    "pcall(wrapped2)",
	    "coroutine.resume(coroutine.create(function() while true do end end))",
	};
	struct svc_runtime *rt = *state;
	lua_State *L = svc_runtime_state(rt);
	char text[2048];

	assert_int_equal(run(rt,
	                     "co = coroutine.create(function() while true do end end) "
	                     "wrapped = coroutine.wrap(function() local n = 0 while true do "
	                     "n = n + 1 end end) "
	                     "wrapped2 = coroutine.wrap(function() while true do end end) "
	                     "catching = coroutine.create(function() while true do "
	                     "pcall(function() while true do end end) end end) "
	                     "counter = coroutine.wrap(function() local i = 0 while true do "
	                     "i = i + 1 coroutine.yield(i) end end)",
	                     0),
	                 SVC_LUA_OK);
	lua_pop(L, 1);
	for (size_t i = 0; i < sizeof(calls) / sizeof(calls[0]); i++) {
		assert_int_equal(run(rt, calls[i], 0.1), SVC_LUA_TIMEOUT);
		svc_lua_error_text(L, text, sizeof(text));
		if (!strstr(text, "timed out"))
			print_error("%s gave: %s\n", calls[i], text);
		assert_non_null(strstr(text, "timed out"));
		assert_int_equal(run(rt, "counter() return counter()", 1), SVC_LUA_OK);
		assert_int_equal(lua_tointeger(L, -1), 2 * (lua_Integer)i + 2);
		lua_pop(L, 1);
	}
	/* without a deadline the same coroutine runs to its end */
	assert_int_equal(run(rt,
	                     "local c = coroutine.wrap(function() local n = 0 "
	                     "for i = 1, 1e6 do n = n + 1 end return n end) return c()",
	                     0),
	                 SVC_LUA_OK);
	assert_int_equal(lua_tointeger(L, -1), 1000000);
	lua_pop(L, 1);
}

/* cjson's own buffer counts against the cap: a text that would not fit is refused before
 * cjson allocates it (an out-of-memory failure), through every door (cjson, cjson.safe,
 * new()); what fits is cjson's output unchanged, and cjson's own errors stay its own. */
static void cjson_buffers_count_against_the_memory_cap(void **state)
{
	static const char *const refused[] = {
	    "require('cjson').encode(big)",
	    "require('cjson.safe').encode(big)",
	    "require('cjson').new().encode(big)",
	    "require('cjson.safe').new().encode(big)",
	    "local c = require('cjson').new() c.encode_sparse_array(true, 0) "
	    "c.encode({[1e8] = 1})",
	    "require('cjson').decode(string.rep(' ', 7 << 20) .. '1')",
	};
	static const struct {
		const char *chunk, *result;
	} kept[] = {
	    {"return require('cjson').encode({a = {1, 2.5, 'x/y\\n', true}})",
	     "{\"a\":[1,2.5,\"x\\/y\\n\",true]}"},
	    {"return require('cjson').encode(string.rep('x', 1 << 20)):sub(1, 3)", "\"xx"},
	    {"return require('cjson').encode_keep_buffer(true)", NULL},
	    {"return select(2, require('cjson.safe').encode(print))", "type not supported"},
	    {"local t = {} t[1] = t return select(2, pcall(require('cjson').encode, t))",
	     "excessive nesting"},
	    {"return select(2, pcall(require('cjson').encode, {[1000] = 1}))",
	     "excessively sparse array"},
	    {"return require('cjson').decode('[1, {\"a\": null}]')[1]", "1"},
	};
	struct svc_runtime *rt = *state;
	lua_State *L = svc_runtime_state(rt);
	char text[2048];
	size_t before;
	enum svc_lua_status st;

	assert_int_equal(run(rt,
	                     "local s = string.rep('x', 1 << 20) big = {} "
	                     "for i = 1, 100 do big[i] = s end",
	                     0),
	                 SVC_LUA_OK);
	lua_pop(L, 1);
	svc_runtime_set_memory_limit(rt, svc_runtime_memory_used(rt) + (16u << 20));
	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
		before = svc_runtime_memory_used(rt);
		st = run(rt, refused[i], 5);
		svc_lua_error_text(L, text, sizeof(text));
		if (st != SVC_LUA_MEMORY || !strstr(text, "LUA_MEMORY_LIMIT_MB"))
			print_error("%s gave %d: %s\n", refused[i], (int)st, text);
		assert_int_equal(st, SVC_LUA_MEMORY);
		assert_non_null(strstr(text, "LUA_MEMORY_LIMIT_MB"));
		lua_gc(L, LUA_GCCOLLECT, 0);
		/* nothing stays reserved */
		assert_true(svc_runtime_memory_used(rt) < before + (1u << 20));
	}
	for (size_t i = 0; i < sizeof(kept) / sizeof(kept[0]); i++) {
		assert_int_equal(run(rt, kept[i].chunk, 5), SVC_LUA_OK);
		if (kept[i].result == NULL) {
			assert_false(lua_toboolean(L, -1));
		} else {
			if (!lua_tostring(L, -1) || !strstr(lua_tostring(L, -1), kept[i].result))
				print_error("%s gave: %s\n", kept[i].chunk, lua_tostring(L, -1));
			assert_non_null(strstr(lua_tostring(L, -1), kept[i].result));
		}
		lua_pop(L, 1);
	}
	svc_runtime_set_memory_limit(rt, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(returns_results_and_balances_stack, setup, teardown),
	    cmocka_unit_test_setup_teardown(reused_blocks_keep_their_bytes, setup, teardown),
	    cmocka_unit_test_setup_teardown(string_errors_get_a_traceback, setup, teardown),
	    cmocka_unit_test_setup_teardown(table_errors_keep_their_fields, setup, teardown),
	    cmocka_unit_test_setup_teardown(other_error_values_become_text_with_a_traceback, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(table_errors_with_tostring_keep_fields_and_text, setup,
	                                    teardown),
	    cmocka_unit_test(project_modules_are_on_the_path_and_the_state_knows_its_runtime),
	    cmocka_unit_test_setup_teardown(runaway_code_is_stopped_even_if_it_catches_the_error,
	                                    setup, teardown),
	    cmocka_unit_test_setup_teardown(memory_cap_fails_the_call_not_the_process, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(cjson_and_embedded_modules_are_preloaded, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(
	        error_objects_whose_text_raises_or_loops_do_not_stop_the_process, setup, teardown),
	    cmocka_unit_test_setup_teardown(
	        other_error_values_whose_tostring_raises_or_loops_become_their_type, setup,
	        teardown),
	    cmocka_unit_test_setup_teardown(os_exit_raises_once_forbidden, setup, teardown),
	    cmocka_unit_test_setup_teardown(the_deadline_stops_loops_inside_coroutines, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(cjson_buffers_count_against_the_memory_cap, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(a_full_state_is_renewed_empty_under_the_same_cap, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(a_new_state_is_built_beside_and_swapped_only_when_asked,
	                                    setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
