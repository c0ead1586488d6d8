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
	if (ctx->nargs > 1) {
		const struct svc_cmd *sub = cmd->n_subs ? svc_cli_find_sub(cmd, ctx->arg[1]) : NULL;

		if (!cmd->n_subs) {
			fprintf(stderr, "svccomm help: unexpected argument '%s'\n", ctx->arg[1]);
			return SVC_EXIT_USAGE;
		}
		if (!sub)
			return svc_cli_unknown_sub(cmd, ctx->arg[1]);
		cmd = sub;
	}
	svc_cli_usage_cmd(stdout, cmd);
	return SVC_EXIT_OK;
}

const struct svc_cmd svc_cmd_help = {
    .name = "help",
    .run = run,
    .needs = SVC_NEEDS_NOTHING,
    .summary = "show the usage of a command",
    .args = "[<command> [<subcommand>]]",
    .min_args = 0,
    .max_args = 2,
    .description = "Prints the usage of <command> (as `svccomm <command> --help` does), or of\n"
                   "svccomm without one; `svccomm help outbox list` the usage of a subcommand.\n",
};
