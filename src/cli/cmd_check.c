/* `svccomm check`: validates settings and apps and prints the topology and routing table. */
#include <lua.h>
#include <stdio.h>

#include "cli/cli.h"
#include "lua/runtime.h"
#include "util/error.h"

/* The report is built by svccomm.host (Lua), which has the router's registrations at hand. */
static int run(struct svc_cli_ctx *ctx)
{
	lua_State *L = svc_runtime_state(ctx->rt);
	char err[4096];

	if (svc_runtime_require(ctx->rt, "svccomm.host", err, sizeof(err)) != 0) {
		fprintf(stderr, "svccomm check: %s\n", err);
		return SVC_EXIT_FAILURE;
	}
	lua_getfield(L, -1, "check_report");
	lua_remove(L, -2);
	if (svc_lua_pcall(ctx->rt, 0, 1, 0) != SVC_LUA_OK) {
		svc_lua_error_text(L, err, sizeof(err));
		fprintf(stderr, "svccomm check: %s\n", err);
		return SVC_EXIT_FAILURE;
	}
	fputs(lua_tostring(L, -1), stdout);
	lua_pop(L, 1);
	return SVC_EXIT_OK;
}

const struct svc_cmd svc_cmd_check = {
    .name = "check",
    .run = run,
    .needs = SVC_NEEDS_APPS,
    .summary = "load settings and apps; print the topology and routing table",
    .description =
        "Validates settings.lua, loads every app and prints the exchanges, queue, bindings and\n"
        "the routing table (exchange, routing key pattern, handler). Passwords are masked.\n",
};
