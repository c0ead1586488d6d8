#include <lua.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "lua/runtime.h"
#include "util/error.h"

/* `svccomm publish` goes through the same Lua API as application code
 * (svccomm.db + publish_aggregate_event), so it writes exactly what a service would. */
int svc_cmd_publish(int argc, char **argv, struct svc_cli_ctx *ctx)
{
	lua_State *L = svc_runtime_state(ctx->rt);
	const char *pos[3] = {NULL, NULL, NULL}, *at = NULL, *tags = NULL;
	int npos = 0, rc = SVC_EXIT_OK;
	char err[4096];

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--at") == 0 || strcmp(argv[i], "--tags") == 0) {
			if (i + 1 >= argc) {
				fprintf(stderr, "svccomm publish: %s needs a value\n", argv[i]);
				return SVC_EXIT_USAGE;
			}
			*(argv[i][2] == 'a' ? &at : &tags) = argv[i + 1];
			i++;
		} else if (argv[i][0] == '-' && argv[i][1] == '-') {
			fprintf(stderr, "svccomm publish: unknown option '%s'\n", argv[i]);
			return SVC_EXIT_USAGE;
		} else if (npos < 3) {
			pos[npos++] = argv[i];
		} else {
			fprintf(stderr, "svccomm publish: unexpected argument '%s'\n", argv[i]);
			return SVC_EXIT_USAGE;
		}
	}
	if (npos != 3) {
		svc_cli_usage(stderr, "publish");
		return SVC_EXIT_USAGE;
	}
	if (svc_runtime_require(ctx->rt, "svccomm.host", err, sizeof(err)) != 0) {
		fprintf(stderr, "svccomm publish: %s\n", err);
		return SVC_EXIT_FAILURE;
	}
	lua_getfield(L, -1, "publish");
	lua_remove(L, -2);
	for (int i = 0; i < 3; i++)
		lua_pushstring(L, pos[i]);
	lua_pushstring(L, at);
	lua_pushstring(L, tags);
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
