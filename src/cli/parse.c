#include "cli/parse.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/suggest.h"

const struct svc_opt svc_cli_global_opts[SVC_GOPT_COUNT] = {
    [SVC_GOPT_SETTINGS] = {"settings", SVC_OPT_FILE, "FILE",
                           "settings file (env SVCCOMM_SETTINGS, default ./settings.lua)"},
    [SVC_GOPT_HELP] = {"help", SVC_OPT_FLAG, NULL,
                       "this help; `svccomm <command> --help` for a command", .short_name = 'h'},
    [SVC_GOPT_VERSION] = {"version", SVC_OPT_FLAG, NULL, "same as `svccomm version`"},
};

/* getopt_long's val of the command's option i is VAL_CMD + i, of global option g VAL_GLOBAL + g:
 * never 0 (getopt's optopt for an unknown option) and never a short option's letter. */
#define VAL_CMD    0x100
#define VAL_GLOBAL 0x200

/* The reading of the options before the command (cmd NULL) or after it. */
struct reader {
	const struct svc_cmd *cmd;
	struct svc_cli_parse *p;
	char who[64]; /* "svccomm <command>": the prefix of the command's messages */
	struct option longopts[SVC_CLI_MAX_OPTS + SVC_GOPT_COUNT + 1];
};

static void fail(struct svc_cli_parse *p, int usage, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Keeps the first error only: it is the one the user has to fix first. */
static void fail(struct svc_cli_parse *p, int usage, const char *fmt, ...)
{
	va_list ap;

	if (p->err[0])
		return;
	va_start(ap, fmt);
	vsnprintf(p->err, sizeof(p->err), fmt, ap);
	va_end(ap);
	p->err_usage = usage;
}

static struct option getopt_entry(const struct svc_opt *o, int val)
{
	return (struct option){o->name, o->kind == SVC_OPT_FLAG ? no_argument : required_argument,
	                       NULL, val};
}

static void reader_init(struct reader *r, const struct svc_cmd *cmd, struct svc_cli_parse *p)
{
	int n = 0, n_opts = cmd ? cmd->n_opts : 0;

	r->cmd = cmd;
	r->p = p;
	snprintf(r->who, sizeof(r->who), "svccomm%s%s", cmd ? " " : "", cmd ? cmd->name : "");
	if (n_opts > SVC_CLI_MAX_OPTS)
		n_opts = SVC_CLI_MAX_OPTS; /* the cmd_*.c files assert this at compile time */
	for (int i = 0; i < n_opts; i++)
		r->longopts[n++] = getopt_entry(&cmd->opts[i], VAL_CMD + i);
	for (int g = 0; g < SVC_GOPT_COUNT; g++)
		r->longopts[n++] = getopt_entry(&svc_cli_global_opts[g], VAL_GLOBAL + g);
	r->longopts[n] = (struct option){NULL, 0, NULL, 0};
}

/* An option is "-h" or "--name[=value]"; "--" alone is not one (it ends the options). */
static int is_option(const char *a)
{
	return strcmp(a, "-h") == 0 || (a[0] == '-' && a[1] == '-' && a[2] != '\0');
}

/* The option getopt_long answered with val, or NULL. */
static const struct svc_opt *opt_of(const struct reader *r, int val)
{
	if (val >= VAL_GLOBAL && val < VAL_GLOBAL + SVC_GOPT_COUNT)
		return &svc_cli_global_opts[val - VAL_GLOBAL];
	if (r->cmd && val >= VAL_CMD && val < VAL_CMD + r->cmd->n_opts)
		return &r->cmd->opts[val - VAL_CMD];
	return val == 'h' ? &svc_cli_global_opts[SVC_GOPT_HELP] : NULL;
}

/* The prefix of a message about option val: a global option's messages do not name the
 * command. */
static const char *who_of(const struct reader *r, int val)
{
	return val >= VAL_CMD && val < VAL_GLOBAL ? r->who : "svccomm";
}

/* Records "unknown option" with the closest known option, if one is close. */
static void unknown_option(struct reader *r, const char *arg)
{
	int len = (int)strcspn(arg, "=");
	const char *best = NULL;
	struct svc_suggest s;

	if (arg[0] == '-' && arg[1] == '-') {
		svc_suggest_init(&s, arg + 2, (size_t)len - 2);
		for (int i = 0; r->cmd && i < r->cmd->n_opts; i++)
			svc_suggest_add(&s, r->cmd->opts[i].name);
		for (int g = 0; g < SVC_GOPT_COUNT; g++)
			svc_suggest_add(&s, svc_cli_global_opts[g].name);
		best = svc_suggest_best(&s);
	}
	fail(r->p, 1, "svccomm: unknown option '%.*s'%s%s%s%s%s", len, arg, r->cmd ? " for " : "",
	     r->cmd ? r->cmd->name : "", best ? " (did you mean --" : "", best ? best : "",
	     best ? "?)" : "");
}

static const char *needs_what(enum svc_opt_kind kind)
{
	switch (kind) {
	case SVC_OPT_FILE:
		return "a file";
	case SVC_OPT_INT:
		return "a number";
	case SVC_OPT_SECONDS:
		return "a number of seconds";
	default:
		return "a value";
	}
}

/* Checks text against o's kind and stores it in v; records the error otherwise. */
static void store_value(struct svc_cli_parse *p, const char *who, const struct svc_opt *o,
                        const char *text, struct svc_optval *v)
{
	char *end;

	errno = 0;
	if (o->kind == SVC_OPT_INT) {
		v->num = strtol(text, &end, 10);
		if (errno || end == text || *end || v->num < o->min || v->num > o->max)
			goto bad;
	} else if (o->kind == SVC_OPT_SECONDS) {
		v->seconds = strtod(text, &end);
		if (errno || end == text || *end || !isfinite(v->seconds) || v->seconds < 0)
			goto bad;
	}
	v->text = text;
	v->set = 1;
	return;
bad:
	if (o->kind == SVC_OPT_SECONDS)
		fail(p, 0, "%s: --%s: expected a number of seconds >= 0, got '%s'", who, o->name,
		     text);
	else if (o->max == LONG_MAX)
		fail(p, 0, "%s: --%s: expected an integer >= %ld, got '%s'", who, o->name, o->min,
		     text);
	else
		fail(p, 0, "%s: --%s: expected a number from %ld to %ld, got '%s'", who, o->name,
		     o->min, o->max, text);
}

static void apply(struct reader *r, int val, const struct svc_opt *o, const char *value)
{
	struct svc_cli_parse *p = r->p;

	if (o == &svc_cli_global_opts[SVC_GOPT_SETTINGS])
		p->settings = value;
	else if (o == &svc_cli_global_opts[SVC_GOPT_HELP])
		p->help = 1;
	else if (o == &svc_cli_global_opts[SVC_GOPT_VERSION])
		p->version = 1;
	else if (o->kind == SVC_OPT_FLAG)
		p->opt[val - VAL_CMD].set = 1;
	else
		store_value(p, r->who, o, value, &p->opt[val - VAL_CMD]);
}

/* Reads the option at argv[i] (is_option() holds); returns how many elements it used. */
static int read_option(struct reader *r, int argc, char **argv, int i)
{
	const char *a = argv[i];
	const struct svc_opt *o;
	size_t len;
	int c, used;

	/* A fresh getopt_long over argv[i - 1 ..], so argv[i] is its first argument: optind = 0
	 * restarts glibc's scanner, and nothing of an earlier call carries over. "+": stop at
	 * the first non-option; ":": report a missing value as ':'. */
	optind = 0;
	opterr = 0;
	c = getopt_long(argc - i + 1, argv + i - 1, "+:h", r->longopts, NULL);
	used = optind > 1 ? optind - 1 : 1;
	o = opt_of(r, c == '?' || c == ':' ? optopt : c);
	if (c == -1 || (c == '?' && !o)) {
		unknown_option(r, a); /* or ambiguous: getopt found several names it begins */
		return 1;
	}
	if (c == '?') {
		fail(r->p, 0, "%s: --%s takes no value", who_of(r, optopt), o->name);
		return 1;
	}
	if (c == ':') {
		fail(r->p, 0, "%s: --%s needs %s", who_of(r, optopt), o->name, needs_what(o->kind));
		return 1;
	}
	/* getopt_long also takes an unambiguous abbreviation; svccomm does not, so that a typo
	 * ("--worker") is reported with the right name rather than guessed. */
	len = strcspn(a + 2, "=");
	if (a[1] == '-' && (len != strlen(o->name) || strncmp(a + 2, o->name, len) != 0)) {
		unknown_option(r, a);
		return 1;
	}
	apply(r, c, o, optarg);
	return used;
}

int svc_cli_parse_global(int argc, char **argv, struct svc_cli_parse *p)
{
	struct reader r;
	int i = 1;

	reader_init(&r, NULL, p);
	while (i < argc && argv[i][0] == '-') {
		if (strcmp(argv[i], "--") == 0)
			return i + 1;
		if (is_option(argv[i])) {
			i += read_option(&r, argc, argv, i);
		} else {
			unknown_option(&r, argv[i]); /* "-x", "-" */
			i++;
		}
	}
	return i;
}

static void add_arg(struct reader *r, const char *a)
{
	struct svc_cli_parse *p = r->p;

	if (p->nargs < r->cmd->max_args && p->nargs < SVC_CLI_MAX_ARGS)
		p->arg[p->nargs++] = a;
	else
		fail(p, 0, "%s: unexpected argument '%s'", r->who, a);
}

void svc_cli_parse_command(const struct svc_cmd *cmd, int argc, char **argv,
                           struct svc_cli_parse *p)
{
	struct reader r;
	int i = 1, only_args = 0;

	reader_init(&r, cmd, p);
	while (i < argc) {
		if (!only_args && strcmp(argv[i], "--") == 0) {
			only_args = 1;
			i++;
		} else if (!only_args && is_option(argv[i])) {
			i += read_option(&r, argc, argv, i);
		} else {
			add_arg(&r, argv[i]); /* "-5" and "-" too: a payload may look like that */
			i++;
		}
	}
	if (p->nargs < cmd->min_args)
		fail(p, 1, "%s: expected %s, got %d argument%s", r.who, cmd->args, p->nargs,
		     p->nargs == 1 ? "" : "s");
}
