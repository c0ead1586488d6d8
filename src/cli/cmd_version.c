/* `svccomm version` (and `svccomm --version`): the versions svccomm was built with. */
#include <amqp.h>
#include <libpq-fe.h>
#include <lua.h>
#include <stdio.h>

#include "cli/cli.h"
#include "util/error.h"

static int run(struct svc_cli_ctx *ctx)
{
	int pq = PQlibVersion();

	(void)ctx;
	printf("svccomm %s\n%s\nrabbitmq-c %s\nlibpq %d.%d\n", SVCCOMM_VERSION, LUA_RELEASE,
	       amqp_version(), pq / 10000, pq % 10000);
	return SVC_EXIT_OK;
}

const struct svc_cmd svc_cmd_version = {
    .name = "version",
    .run = run,
    .needs = SVC_NEEDS_NOTHING,
    .summary = "print the versions of svccomm, Lua, rabbitmq-c and libpq",
    .description = "Prints the versions of svccomm, Lua, rabbitmq-c and libpq, one a line.\n",
};
