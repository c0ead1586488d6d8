/* `svccomm publish <aggregate> <event_type> <payload-json> [--at TIME] [--tags JSON]`: writes
 * one event through the same Lua API as application code (svccomm.db +
 * publish_aggregate_event), so it writes exactly what a service would. svccomm.host checks
 * the payload, --at and --tags. */
#include <lua.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "lua/runtime.h"
#include "util/error.h"

enum { OPT_AT, OPT_TAGS, N_OPTS };

static const struct svc_opt opts[N_OPTS] = {
    [OPT_AT] = {"at", SVC_OPT_TEXT, "TIME",
                "due time (ISO 8601, e.g. 2026-12-01T10:00:00Z): a scheduled event"},
    [OPT_TAGS] = {"tags", SVC_OPT_TEXT, "JSON",
                  "tags of a scheduled event, a JSON object of strings (needs --at)"},
};
_Static_assert(N_OPTS <= SVC_CLI_MAX_OPTS, "too many options");

static int run(struct svc_cli_ctx *ctx)
{
	lua_State *L = svc_runtime_state(ctx->rt);
	int rc = SVC_EXIT_OK;
	char err[4096];

	if (svc_runtime_require(ctx->rt, "svccomm.host", err, sizeof(err)) != 0) {
		fprintf(stderr, "svccomm publish: %s\n", err);
		return SVC_EXIT_FAILURE;
	}
	lua_getfield(L, -1, "publish");
	lua_remove(L, -2);
	for (int i = 0; i < 3; i++)
		lua_pushstring(L, ctx->arg[i]);
	lua_pushstring(L, ctx->opt[OPT_AT].text); /* nil when not given */
	lua_pushstring(L, ctx->opt[OPT_TAGS].text);
	if (svc_lua_pcall(ctx->rt, 5, 3, 0) != SVC_LUA_OK) {
		svc_lua_error_text(L, err, sizeof(err));
		fprintf(stderr, "svccomm publish: %s\n", err);
		return SVC_EXIT_FAILURE;
	}
	if (lua_isnil(L, -3)) {
		const char *kind = lua_tostring(L, -1);
		fprintf(stderr, "svccomm publish: %s\n", lua_tostring(L, -2));
		rc = kind && strcmp(kind, "usage") == 0 ? SVC_EXIT_USAGE : SVC_EXIT_FAILURE;
	} else {
		printf("%s\n", lua_tostring(L, -3));
	}
	lua_pop(L, 3);
	return rc;
}

const struct svc_cmd svc_cmd_publish = {
    .name = "publish",
    .run = run,
    .needs = SVC_NEEDS_SETTINGS,
    .summary = "write one event to the outbox and print its eventId",
    .args = "<aggregate> <event_type> <payload-json>",
    .min_args = 3,
    .max_args = 3,
    .opts = opts,
    .n_opts = N_OPTS,
    .description =
        "Writes one outbox row in its own transaction and prints its eventId; `runpublisher`\n"
        "sends it. Options may come before or after the arguments. An argument that starts\n"
        "with a single '-' (a payload such as -5) is an argument; after `--` every one is.\n",
};
