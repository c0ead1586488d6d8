/* cli: the command table, the option tables and what every command receives.
 *
 * main() calls svc_cli_run(). It reads the global options (parse.c), finds the command in the
 * table, reads the command's options and arguments with the same parser, prepares what the
 * command needs (settings loaded and validated, the Lua runtime with every app loaded) and
 * calls it with the values already checked. Each command is one `struct svc_cmd` in its own
 * cmd_*.c: its options, its usage text and its function; usage.c prints the help from them.
 * Only cli.c and cmd_*.c may exit the process; commands return an exit code (SVC_EXIT_*). */
#ifndef SVC_CLI_H
#define SVC_CLI_H

#include "config/config.h"

struct svc_runtime;
#include <stdbool.h>

struct svc_cli_ctx;

#define SVC_CLI_MAX_OPTS 8  /* options of one command, global options not counted */
#define SVC_CLI_MAX_ARGS 64 /* positional arguments of one command */

/* What a command asks the CLI to prepare before it runs. */
enum svc_cli_needs {
	SVC_NEEDS_NOTHING = 0,
	SVC_NEEDS_SETTINGS = 1, /* settings.lua loaded and validated into ctx->config */
	SVC_NEEDS_APPS = 3,     /* settings, plus a Lua runtime with every app loaded */
};

/* How an option's value is checked before the command sees it. */
enum svc_opt_kind {
	SVC_OPT_FLAG,    /* takes no value */
	SVC_OPT_TEXT,    /* any text; the command (or Lua) checks it */
	SVC_OPT_FILE,    /* a path */
	SVC_OPT_INT,     /* an integer from min to max (strtol syntax) */
	SVC_OPT_SECONDS, /* a finite number >= 0 (strtod syntax) */
};

/* One long option: `--name value` and `--name=value` both work; abbreviations do not. */
struct svc_opt {
	const char *name;       /* without the dashes: "workers" */
	enum svc_opt_kind kind; /* SVC_OPT_FLAG takes no value, every other kind one */
	const char *value;      /* the value's name in the usage ("N"), NULL for a flag */
	const char *help;       /* one line for the usage */
	long min, max;          /* bounds of an SVC_OPT_INT */
	char short_name;        /* a one-letter alias ('h'), 0 for none */
};

/* What the parser made of one option; ctx->opt[i] belongs to cmd->opts[i]. */
struct svc_optval {
	int set;          /* given on the command line (when repeated, the last one counts) */
	const char *text; /* the value as given, NULL for a flag */
	long num;         /* SVC_OPT_INT */
	double seconds;   /* SVC_OPT_SECONDS */
};

/* A command. The usage printed by `svccomm <name> --help` is built from these fields. */
struct svc_cmd {
	const char *name;
	int (*run)(struct svc_cli_ctx *ctx); /* returns an SVC_EXIT_* code */
	enum svc_cli_needs needs;
	const char *summary;        /* one line for `svccomm --help` */
	const char *args;           /* positional arguments in the synopsis, NULL for none */
	int min_args, max_args;     /* how many positional arguments it takes */
	const struct svc_opt *opts; /* the command's own options; global ones are added */
	int n_opts;
	const char *description; /* paragraphs after the synopsis, lines ending in '\n' */
	const char *exit_codes;  /* the exit-code line, NULL for the common one */
	/* A group ("outbox", "dlq") has subcommands instead of a run function, git-style:
	 * `svccomm outbox list`. Each subcommand's name is the full "outbox list". */
	const struct svc_cmd *const *subs;
	int n_subs;
};

/* What a command receives: checked arguments and options, settings and runtime. */
struct svc_cli_ctx {
	const struct svc_cmd *cmd;
	const char *settings_path;    /* --settings, SVCCOMM_SETTINGS or ./settings.lua */
	struct svc_config *config;    /* NULL unless the command needs settings */
	struct svc_runtime *rt;       /* the Lua runtime that loaded settings (and apps) or NULL */
	int nargs;                    /* positional arguments, min_args to max_args of them */
	const char *const *arg;       /* arg[0..nargs-1] */
	const struct svc_optval *opt; /* opt[i] is the value of cmd->opts[i] */
	bool reexec; /* set by run(): after cleanup, svc_cli_run execs the same command line
	              * again (SIGHUP: new code and settings) */
};

/* The exit-code line every command shares unless it sets its own. */
#define SVC_CLI_EXIT_CODES                                                                         \
	"Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error."

/* Releases ctx's settings and Lua runtime and loads them again from the files (settings and
 * apps as they are now): a supervised worker started after a SIGHUP. Returns an SVC_EXIT_*
 * code; on failure ctx->rt is NULL. */
int svc_cli_reload(struct svc_cli_ctx *ctx);

/* Parses argv, runs the command, returns the process exit code. */
int svc_cli_run(int argc, char **argv);

/* The command called name, or NULL. */
const struct svc_cmd *svc_cli_find(const char *name);

/* The subcommand of group called word ("list" for "outbox list"), or NULL. */
const struct svc_cmd *svc_cli_find_sub(const struct svc_cmd *group, const char *word);

/* The last word of a command's name: "list" for "outbox list", "check" for "check". */
const char *svc_cli_short_name(const struct svc_cmd *cmd);

/* Reports an unknown subcommand of group (with the closest one) and the group's usage on
 * stderr; returns SVC_EXIT_USAGE. */
int svc_cli_unknown_sub(const struct svc_cmd *group, const char *word);

/* The command table in the order `svccomm --help` lists it; *n receives its length. */
const struct svc_cmd *const *svc_cli_commands(int *n);

/* Reports an unknown command (with the closest known name) and the main usage on stderr;
 * returns SVC_EXIT_USAGE. */
int svc_cli_unknown_command(const char *name);

/* Commands, one per cmd_*.c file, in the order of the table. */
extern const struct svc_cmd svc_cmd_runconsumer;
extern const struct svc_cmd svc_cmd_runpublisher;
extern const struct svc_cmd svc_cmd_devconsumer;
extern const struct svc_cmd svc_cmd_devpublisher;
extern const struct svc_cmd svc_cmd_checkpublisher;
extern const struct svc_cmd svc_cmd_checkconsumer;
extern const struct svc_cmd svc_cmd_outbox; /* group: outbox stats|list|unpark|cancel */
extern const struct svc_cmd svc_cmd_dlq;    /* group: dlq stats|list|replay|purge */
extern const struct svc_cmd svc_cmd_publish;
extern const struct svc_cmd svc_cmd_migrate;
extern const struct svc_cmd svc_cmd_check;
extern const struct svc_cmd svc_cmd_init;
extern const struct svc_cmd svc_cmd_version;
extern const struct svc_cmd svc_cmd_help;

/* The METRICS_ADDRESS listener of a long-running command (metrics_serve.c). */
struct svc_cli_metrics {
	struct svc_metrics_http *http;       /* NULL when METRICS_ADDRESS is not set */
	struct svc_metrics_region **regions; /* [0] this process; with workers [1] the retired
	                                      * counts, [2 + k] worker k + 1 (shared memory) */
	size_t n, bytes;
};
/* Starts the listener when METRICS_ADDRESS is set (workers > 1: regions for a supervisor and
 * its workers). Returns SVC_EXIT_OK, or SVC_EXIT_USAGE when the address cannot be used (the
 * reason printed). health_bound_s: /healthz fails when a loop stalls longer. */
int svc_cli_metrics_start(const struct svc_config *cfg, int workers, double health_bound_s,
                          struct svc_cli_metrics *m);
/* Stops the listener and frees the regions (nothing when not started). */
void svc_cli_metrics_stop(struct svc_cli_metrics *m);

#endif
