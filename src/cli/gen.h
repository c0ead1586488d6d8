/* gen: the man pages and shell completion, generated from the command and option tables (and
 * the settings schema) that `--help` and the README use, so they cannot drift from them.
 *
 * `svccomm __generate man <dir>` writes svccomm.1, svccomm-<command>.1 and svccomm-settings.5
 * into dir; `svccomm __generate bash <file>` writes the bash completion script.
 * The subcommand is hidden (not in the command table); the build runs it (CMakeLists.txt). */
#ifndef SVC_CLI_GEN_H
#define SVC_CLI_GEN_H

#include <stdio.h>

#define SVC_CLI_GENERATE "__generate"

/* Runs `svccomm __generate <what> [dir]`: argv[0] is "__generate". Returns an exit code. */
int svc_cli_generate(int argc, char **argv);

/* Writes the man pages into dir; 0 or SVC_EXIT_* with the reason printed on stderr. */
int svc_gen_man(const char *dir);

/* Prints the bash completion script. */
void svc_gen_bash(FILE *out);

#endif
