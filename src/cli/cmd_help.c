/* `svccomm help [<command>]`: the usage of svccomm or of one command, on stdout. */
#include <stdio.h>

#include "cli/cli.h"
#include "cli/usage.h"
#include "util/error.h"

static int run(struct svc_cli_ctx *ctx)
{
	const struct svc_cmd *cmd;

	if (ctx->nargs == 0) {
		svc_cli_usage_main(stdout);
		return SVC_EXIT_OK;
	}
	cmd = svc_cli_find(ctx->arg[0]);
	if (!cmd)
		return svc_cli_unknown_command(ctx->arg[0]);
	svc_cli_usage_cmd(stdout, cmd);
	return SVC_EXIT_OK;
}

const struct svc_cmd svc_cmd_help = {
    .name = "help",
    .run = run,
    .needs = SVC_NEEDS_NOTHING,
    .summary = "show the usage of a command",
    .args = "[<command>]",
    .min_args = 0,
    .max_args = 1,
    .description = "Prints the usage of <command> (as `svccomm <command> --help` does), or of\n"
                   "svccomm without one.\n",
};
