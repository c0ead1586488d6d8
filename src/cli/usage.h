/* usage: the help text, generated from the command table and the option tables. */
#ifndef SVC_CLI_USAGE_H
#define SVC_CLI_USAGE_H

#include <stdio.h>

#include "cli/cli.h"

/* Prints `svccomm --help`: the synopsis, every command, the global options, the exit codes. */
void svc_cli_usage_main(FILE *out);

/* Prints `svccomm <command> --help`: its synopsis, description, options and exit codes. */
void svc_cli_usage_cmd(FILE *out, const struct svc_cmd *cmd);

#endif
