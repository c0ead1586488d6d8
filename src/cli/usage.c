#include "cli/usage.h"

#include <string.h>

#include "cli/parse.h"

#define MIN_COLUMN 15 /* width of the option column: "--settings FILE" */

/* The left column of an option: "-h, --help", "--workers N". */
static void opt_left(const struct svc_opt *o, char *buf, size_t size)
{
	char alias[8] = "";

	if (o->short_name)
		snprintf(alias, sizeof(alias), "-%c, ", o->short_name);
	snprintf(buf, size, "%s--%s%s%s", alias, o->name, o->value ? " " : "",
	         o->value ? o->value : "");
}

static int column_width(const struct svc_opt *opts, int n, int width)
{
	char left[96];

	for (int i = 0; i < n; i++) {
		opt_left(&opts[i], left, sizeof(left));
		if ((int)strlen(left) > width)
			width = (int)strlen(left);
	}
	return width;
}

static void print_opts(FILE *out, const char *title, const struct svc_opt *opts, int n, int width)
{
	char left[96];

	fprintf(out, "\n%s\n", title);
	for (int i = 0; i < n; i++) {
		opt_left(&opts[i], left, sizeof(left));
		fprintf(out, "  %-*s  %s\n", width, left, opts[i].help);
	}
}

void svc_cli_usage_main(FILE *out)
{
	const struct svc_cmd *const *cmds;
	int n;

	cmds = svc_cli_commands(&n);
	fprintf(out, "usage: svccomm [--settings FILE] <command> [options]\n\n"
	             "Commands:\n");
	for (int i = 0; i < n; i++)
		fprintf(out, "  %-16s %s\n", cmds[i]->name, cmds[i]->summary);
	print_opts(out, "Global options:", svc_cli_global_opts, SVC_GOPT_COUNT,
	           column_width(svc_cli_global_opts, SVC_GOPT_COUNT, MIN_COLUMN));
	fprintf(out,
	        "\nGlobal options may also follow the command. `svccomm <command> --help` shows\n"
	        "a command's own options.\n"
	        "\nEnvironment: SVCCOMM_BROKER_URL, SVCCOMM_DATABASE_URL, SVCCOMM_LOG_LEVEL and\n"
	        "SVCCOMM_LOG_FORMAT override the settings file.\n"
	        "\n" SVC_CLI_EXIT_CODES "\n");
}

void svc_cli_usage_cmd(FILE *out, const struct svc_cmd *cmd)
{
	int width = column_width(cmd->opts, cmd->n_opts, MIN_COLUMN);
	char left[96];

	width = column_width(svc_cli_global_opts, SVC_GOPT_COUNT, width);
	fprintf(out, "usage: svccomm [--settings FILE] %s", cmd->name);
	if (cmd->args)
		fprintf(out, " %s", cmd->args);
	for (int i = 0; i < cmd->n_opts; i++) {
		opt_left(&cmd->opts[i], left, sizeof(left));
		fprintf(out, " [%s]", left);
	}
	fputc('\n', out);
	if (cmd->description)
		fprintf(out, "\n%s", cmd->description);
	if (cmd->n_subs > 0) {
		fprintf(out, "\nCommands:\n");
		for (int i = 0; i < cmd->n_subs; i++)
			fprintf(out, "  %-10s %s\n", svc_cli_short_name(cmd->subs[i]),
			        cmd->subs[i]->summary);
	}
	if (cmd->n_opts > 0)
		print_opts(out, "Options:", cmd->opts, cmd->n_opts, width);
	print_opts(out, "Global options (before or after the command):", svc_cli_global_opts,
	           SVC_GOPT_COUNT, width);
	fprintf(out, "\n%s\n", cmd->exit_codes ? cmd->exit_codes : SVC_CLI_EXIT_CODES);
}
