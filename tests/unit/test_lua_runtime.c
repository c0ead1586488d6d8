/* Unit tests for lua/runtime.c: protected calls, tracebacks and error texts, deadlines, the
 * memory cap, the embedded modules and the project's package.path. */
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

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(returns_results_and_balances_stack, setup, teardown),
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
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
