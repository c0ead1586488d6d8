#include <amqp.h>
#include <libpq-fe.h>
#include <lua.h>
#include <stdio.h>

#include "cli/cli.h"
#include "util/error.h"

int svc_cmd_version(int argc, char **argv, struct svc_cli_ctx *ctx)
{
	int pq = PQlibVersion();

	(void)ctx;
	if (argc > 1) {
		fprintf(stderr, "svccomm version: unexpected argument '%s'\n", argv[1]);
		return SVC_EXIT_USAGE;
	}
	printf("svccomm %s\n%s\nrabbitmq-c %s\nlibpq %d.%d\n", SVCCOMM_VERSION, LUA_RELEASE,
	       amqp_version(), pq / 10000, pq % 10000);
	return SVC_EXIT_OK;
}
