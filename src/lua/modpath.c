/* lua/modpath: where the runtime finds Lua code that is not compiled in. See modpath.h. */
#include "lua/modpath.h"

#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lua/cjson_bounded.h"
#include "lua/embedded.h"

#define LUA_DIR "lua/" LUA_VERSION_MAJOR "." LUA_VERSION_MINOR

/* package.preload loader of one module read from SVCCOMM_LUA_PATH: upvalue 1 is the file. */
static int load_dev_file(lua_State *L)
{
	const char *file = lua_tostring(L, lua_upvalueindex(1));

	if (luaL_loadfile(L, file) != LUA_OK)
		return lua_error(L);
	lua_pushvalue(L, 1); /* the module name require passed */
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_call(L, 2, 1);
	return 1;
}

/* Points every compiled-in module at <dir>/svccomm/<name>.lua (checked now, so a missing file
 * is one error at start-up) and puts <dir> first on package.path for modules added since. */
static void use_dev_dir(lua_State *L, const char *dir)
{
	char file[PATH_MAX];

	luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
	for (const struct svc_embedded *e = svc_embedded_lua; e->name; e++) {
		/* e->path is "@lua/svccomm/<name>.lua" */
		snprintf(file, sizeof(file), "%s/%s", dir, e->path + strlen("@lua/"));
		if (access(file, R_OK) != 0)
			luaL_error(L, "%s=%s: cannot read %s: %s", SVC_LUA_PATH_ENV, dir, file,
			           strerror(errno));
		lua_pushstring(L, file);
		lua_pushcclosure(L, load_dev_file, 1);
		lua_setfield(L, -2, e->name);
	}
	lua_pop(L, 1);
	lua_getglobal(L, LUA_LOADLIBNAME);
	lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", dir, dir);
	lua_getfield(L, -2, "path");
	lua_concat(L, 2);
	lua_setfield(L, -2, "path");
	lua_pop(L, 1);
}

/* Appends <prefix>/lib/lua/5.4/?.so, prefix being the parent of the executable's folder. */
static void add_prefix_cpath(lua_State *L)
{
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	char *slash;

	if (n <= 0)
		return;
	exe[n] = '\0';
	for (int i = 0; i < 2; i++) { /* <prefix>/bin/svccomm -> <prefix> */
		slash = strrchr(exe, '/');
		if (!slash)
			return;
		*slash = '\0';
	}
	lua_getglobal(L, LUA_LOADLIBNAME);
	lua_getfield(L, -1, "cpath");
	lua_pushfstring(L, ";%s/lib/" LUA_DIR "/?.so", exe);
	lua_concat(L, 2);
	lua_setfield(L, -2, "cpath");
	lua_pop(L, 1);
}

int svc_modpath_setup(lua_State *L)
{
	const char *dev = getenv(SVC_LUA_PATH_ENV);

	add_prefix_cpath(L);
	if (dev && *dev)
		use_dev_dir(L, dev);
	return svc_cjson_check(L);
}
