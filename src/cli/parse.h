/* parse: the one option parser of the command line (getopt_long over the option tables).
 *
 * svccomm reads argv in two steps: the global options before the command, then the command's
 * own options, its positional arguments and the global options again (so `--settings FILE`
 * may follow the command). Both steps fill one `struct svc_cli_parse`. Errors are kept, not
 * printed, so that `--help` anywhere before `--` still wins over a bad option; the caller
 * prints the first error. Arguments that start with a single '-' ("-5", "-") other than "-h"
 * are positional after the command, and everything after `--` is. */
#ifndef SVC_CLI_PARSE_H
#define SVC_CLI_PARSE_H

#include "cli/cli.h"

/* The global options: accepted before and after the command. */
enum {
	SVC_GOPT_SETTINGS,
	SVC_GOPT_HELP,
	SVC_GOPT_VERSION,
	SVC_GOPT_COUNT,
};
extern const struct svc_opt svc_cli_global_opts[SVC_GOPT_COUNT];

struct svc_cli_parse {
	const char *settings; /* --settings FILE, NULL when not given */
	int help;             /* -h or --help was given */
	int version;          /* --version was given */
	int nargs;
	const char *arg[SVC_CLI_MAX_ARGS];
	struct svc_optval opt[SVC_CLI_MAX_OPTS]; /* the command's options, by table index */
	char err[1024]; /* the first error, one line without '\n'; "" when none */
	int err_usage;  /* the usage should follow err (an unknown option, arguments missing) */
};

/* Reads the global options of argv[1..]; returns the index of the command (argc when there is
 * none). */
int svc_cli_parse_global(int argc, char **argv, struct svc_cli_parse *p);

/* Reads what follows the command: argv[0] is the command's name. */
void svc_cli_parse_command(const struct svc_cmd *cmd, int argc, char **argv,
                           struct svc_cli_parse *p);

#endif
