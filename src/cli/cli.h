/* cli: the command table and what every command receives.
 *
 * main() calls svc_cli_run(); it parses the global options (--settings, --help, --version),
 * finds the command in a table of {name, fn, needs, summary, usage}, prepares what the
 * command needs (settings loaded and validated, the Lua runtime with every app loaded) and
 * calls it. Only cli.c and cmd_*.c may exit the process; commands return an exit code
 * (SVC_EXIT_*). */
#ifndef SVC_CLI_H
#define SVC_CLI_H

#include <stdio.h>

#include "config/config.h"

struct svc_runtime;

/* What a command asks the CLI to prepare before it runs. */
enum svc_cli_needs {
	SVC_NEEDS_NOTHING = 0,
	SVC_NEEDS_SETTINGS = 1, /* settings.lua loaded and validated into ctx->config */
	SVC_NEEDS_APPS = 3,     /* settings, plus a Lua runtime with every app loaded */
};

struct svc_cli_ctx {
	const char *settings_path; /* --settings, SVCCOMM_SETTINGS or ./settings.lua */
	struct svc_config *config; /* NULL unless the command needs settings */
	struct svc_runtime *rt;    /* the Lua runtime that loaded settings (and apps) or NULL */
	const char *command;       /* the command's name */
};

/* A command: argv[0] is the command name; options follow. Returns an SVC_EXIT_* code. */
typedef int (*svc_cmd_fn)(int argc, char **argv, struct svc_cli_ctx *ctx);

/* Parses argv, runs the command, returns the process exit code. */
int svc_cli_run(int argc, char **argv);

/* Prints the command's usage (from the table) to out: stdout for --help, stderr on a usage
 * error. */
void svc_cli_usage(FILE *out, const char *command);

/* True when argv holds -h or --help (commands call this before parsing their options). */
int svc_cli_wants_help(int argc, char **argv);

/* Commands, one per cmd_*.c file. */
int svc_cmd_check(int argc, char **argv, struct svc_cli_ctx *ctx);
int svc_cmd_migrate(int argc, char **argv, struct svc_cli_ctx *ctx);
int svc_cmd_version(int argc, char **argv, struct svc_cli_ctx *ctx);
int svc_cmd_publish(int argc, char **argv, struct svc_cli_ctx *ctx);
int svc_cmd_runconsumer(int argc, char **argv, struct svc_cli_ctx *ctx);
int svc_cmd_runpublisher(int argc, char **argv, struct svc_cli_ctx *ctx);
int svc_cmd_checkpublisher(int argc, char **argv, struct svc_cli_ctx *ctx);

#endif
