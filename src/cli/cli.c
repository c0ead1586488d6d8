#include "cli/cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>

#include "cli/gen.h"
#include "cli/parse.h"
#include "cli/suggest.h"
#include "cli/usage.h"
#include "lua/runtime.h"
#include "util/error.h"
#include "util/log.h"

static const struct svc_cmd *const commands[] = {
    &svc_cmd_runconsumer,    &svc_cmd_runpublisher,  &svc_cmd_devconsumer, &svc_cmd_devpublisher,
    &svc_cmd_checkpublisher, &svc_cmd_checkconsumer, &svc_cmd_outbox,      &svc_cmd_dlq,
    &svc_cmd_publish,        &svc_cmd_migrate,       &svc_cmd_check,       &svc_cmd_init,
    &svc_cmd_version,        &svc_cmd_help,
};

#define N_COMMANDS ((int)(sizeof(commands) / sizeof(commands[0])))

const struct svc_cmd *const *svc_cli_commands(int *n)
{
	*n = N_COMMANDS;
	return commands;
}

const struct svc_cmd *svc_cli_find(const char *name)
{
	for (int i = 0; i < N_COMMANDS; i++)
		if (strcmp(commands[i]->name, name) == 0)
			return commands[i];
	return NULL;
}

const char *svc_cli_short_name(const struct svc_cmd *cmd)
{
	const char *sp = strrchr(cmd->name, ' ');

	return sp ? sp + 1 : cmd->name;
}

const struct svc_cmd *svc_cli_find_sub(const struct svc_cmd *group, const char *word)
{
	for (int i = 0; i < group->n_subs; i++)
		if (strcmp(svc_cli_short_name(group->subs[i]), word) == 0)
			return group->subs[i];
	return NULL;
}

int svc_cli_unknown_sub(const struct svc_cmd *group, const char *word)
{
	struct svc_suggest s;
	const char *best;

	svc_suggest_init(&s, word, strlen(word));
	for (int i = 0; i < group->n_subs; i++)
		svc_suggest_add(&s, svc_cli_short_name(group->subs[i]));
	best = svc_suggest_best(&s);
	fprintf(stderr, "svccomm %s: unknown command '%s'%s%s%s\n\n", group->name, word,
	        best ? " (did you mean " : "", best ? best : "", best ? "?)" : "");
	svc_cli_usage_cmd(stderr, group);
	return SVC_EXIT_USAGE;
}

int svc_cli_unknown_command(const char *name)
{
	struct svc_suggest s;
	const char *best;

	svc_suggest_init(&s, name, strlen(name));
	for (int i = 0; i < N_COMMANDS; i++)
		svc_suggest_add(&s, commands[i]->name);
	best = svc_suggest_best(&s);
	fprintf(stderr, "svccomm: unknown command '%s'%s%s%s\n\n", name,
	        best ? " (did you mean " : "", best ? best : "", best ? "?)" : "");
	svc_cli_usage_main(stderr);
	return SVC_EXIT_USAGE;
}

/* Calls require("svccomm.host").load_apps(), which answers true or nil and a message that
 * names the app, its file:line and the traceback of the failing chunk. */
static int load_apps(struct svc_runtime *rt, char *err, size_t errsz)
{
	lua_State *L = svc_runtime_state(rt);
	int rc = 0;

	if (svc_runtime_require(rt, "svccomm.host", err, errsz) != 0)
		return SVC_ELUA;
	lua_getfield(L, -1, "load_apps");
	lua_remove(L, -2);
	if (svc_lua_pcall(rt, 0, 2, 0) != SVC_LUA_OK) {
		svc_lua_error_text(L, err, errsz);
		return SVC_ELUA;
	}
	if (!lua_toboolean(L, -2)) {
		snprintf(err, errsz, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
		rc = SVC_ELUA;
	}
	lua_pop(L, 2);
	return rc;
}

static const char *dirname_of(const char *path, char *buf, size_t bufsz)
{
	const char *slash = strrchr(path, '/');

	if (!slash)
		return ".";
	if (slash == path)
		return "/";
	snprintf(buf, bufsz, "%.*s", (int)(slash - path), path);
	return buf;
}

/* Makes the runtime, loads settings into *config (ctx->config) and, when the command needs
 * them, the apps. Returns SVC_EXIT_OK, or an exit code with everything released. */
static int load(struct svc_cli_ctx *ctx, struct svc_config *config)
{
	char err[8192], dirbuf[4096];
	enum svc_log_level level;
	enum svc_log_format format;
	int rc;

	ctx->rt = svc_runtime_new(dirname_of(ctx->settings_path, dirbuf, sizeof(dirbuf)), err,
	                          sizeof(err));
	if (!ctx->rt) {
		/* a missing cjson.so or a bad SVCCOMM_LUA_PATH: the installation, not the run */
		fprintf(stderr, "svccomm: %s\n", err);
		return SVC_EXIT_USAGE;
	}
	rc = svc_config_load(svc_runtime_state(ctx->rt), ctx->settings_path, config, err,
	                     sizeof(err));
	if (rc != 0) {
		fprintf(stderr, "svccomm: %s\n", err);
		svc_runtime_free(ctx->rt);
		ctx->rt = NULL;
		return rc == SVC_ECONFIG ? SVC_EXIT_USAGE : SVC_EXIT_FAILURE;
	}
	ctx->config = config;
	if (svc_log_parse_level(config->log_level, &level) == 0)
		svc_log_threshold = level;
	if (svc_log_parse_format(config->log_format, &format) == 0)
		svc_log_format = format;
	if (ctx->cmd->needs == SVC_NEEDS_APPS && load_apps(ctx->rt, err, sizeof(err)) != 0) {
		fprintf(stderr, "svccomm: %s\n", err);
		svc_config_release(config);
		svc_runtime_free(ctx->rt);
		ctx->rt = NULL;
		return SVC_EXIT_USAGE;
	}
	svc_runtime_set_memory_limit(ctx->rt, (size_t)config->lua_memory_limit_mb << 20);
	return SVC_EXIT_OK;
}

int svc_cli_reload(struct svc_cli_ctx *ctx)
{
	svc_config_release(ctx->config);
	svc_runtime_free(ctx->rt);
	ctx->rt = NULL;
	return load(ctx, ctx->config);
}

/* Prepares what the command needs (settings, apps), runs it, and releases them. */
static int run_command(struct svc_cli_ctx *ctx)
{
	struct svc_config config;
	int rc;

	if (ctx->cmd->needs == SVC_NEEDS_NOTHING)
		return ctx->cmd->run(ctx);
	rc = load(ctx, &config);
	if (rc != SVC_EXIT_OK)
		return rc;
	rc = ctx->cmd->run(ctx);
	svc_config_release(ctx->config);
	svc_runtime_free(ctx->rt);
	return rc;
}

/* Prints the parser's first error (and the usage it calls for) on stderr. */
static int usage_error(const struct svc_cli_parse *p, const struct svc_cmd *cmd);

/* What a parsed command line answers before anything runs: --help (first, and needing
 * neither settings nor servers), a usage error, --version. -1 when none of them. */
static int answer_early(const struct svc_cli_parse *p, struct svc_cli_ctx *ctx)
{
	if (p->help) {
		svc_cli_usage_cmd(stdout, ctx->cmd);
		return SVC_EXIT_OK;
	}
	if (p->err[0])
		return usage_error(p, ctx->cmd);
	if (p->version)
		return svc_cmd_version.run(ctx);
	return -1;
}

static int usage_error(const struct svc_cli_parse *p, const struct svc_cmd *cmd)
{
	fprintf(stderr, "%s\n", p->err);
	if (p->err_usage) {
		fputc('\n', stderr);
		if (cmd)
			svc_cli_usage_cmd(stderr, cmd);
		else
			svc_cli_usage_main(stderr);
	}
	return SVC_EXIT_USAGE;
}

/* Replaces the process with the same command line (the binary as it is now on disk), once
 * the command stopped cleanly and freed its connections and Lua state. Returns only on failure. */
static int reexec(char **argv)
{
	svc_info("cli",
	         "SIGHUP or a changed settings file: starting again with the same command line");
	fflush(NULL);
	execv("/proc/self/exe", argv);
	svc_error("cli", "cannot exec /proc/self/exe: %s", strerror(errno));
	return SVC_EXIT_FAILURE;
}

int svc_cli_run(int argc, char **argv)
{
	struct svc_cli_parse p;
	struct svc_cli_ctx ctx = {0};
	const char *settings = getenv("SVCCOMM_SETTINGS");
	int at, rc;

	/* Handlers print; keep their lines whole and timely when stdout is a file or pipe. */
	setvbuf(stdout, NULL, _IOLBF, 0);
	memset(&p, 0, sizeof(p));
	at = svc_cli_parse_global(argc, argv, &p);
	if (p.help) {
		svc_cli_usage_main(stdout);
		return SVC_EXIT_OK;
	}
	if (p.err[0])
		return usage_error(&p, NULL);
	if (p.version)
		return svc_cmd_version.run(&ctx);
	if (at >= argc) {
		svc_cli_usage_main(stderr);
		return SVC_EXIT_USAGE;
	}
	/* hidden: the build makes the man pages and the completion with it (gen.h) */
	if (strcmp(argv[at], SVC_CLI_GENERATE) == 0)
		return svc_cli_generate(argc - at, argv + at);
	ctx.cmd = svc_cli_find(argv[at]);
	if (!ctx.cmd)
		return svc_cli_unknown_command(argv[at]);
	/* A group: the next word names the subcommand; without one, only --help is an answer. */
	while (ctx.cmd->n_subs > 0) {
		const struct svc_cmd *sub;

		if (at + 1 >= argc || argv[at + 1][0] == '-') {
			svc_cli_parse_command(ctx.cmd, argc - at, argv + at, &p);
			if ((rc = answer_early(&p, &ctx)) >= 0)
				return rc;
			fprintf(stderr, "svccomm %s: a command is required\n\n", ctx.cmd->name);
			svc_cli_usage_cmd(stderr, ctx.cmd);
			return SVC_EXIT_USAGE;
		}
		sub = svc_cli_find_sub(ctx.cmd, argv[at + 1]);
		if (!sub)
			return svc_cli_unknown_sub(ctx.cmd, argv[at + 1]);
		ctx.cmd = sub;
		at++;
	}
	svc_cli_parse_command(ctx.cmd, argc - at, argv + at, &p);
	if ((rc = answer_early(&p, &ctx)) >= 0)
		return rc;
	if (p.settings)
		settings = p.settings;
	else if (!settings || !*settings)
		settings = "./settings.lua";
	ctx.settings_path = settings;
	ctx.nargs = p.nargs;
	ctx.arg = p.arg;
	ctx.opt = p.opt;
	rc = run_command(&ctx);
	if (rc == SVC_EXIT_OK && ctx.reexec)
		rc = reexec(argv);
	return rc;
}
