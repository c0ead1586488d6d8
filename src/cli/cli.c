#include "cli/cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "util/log.h"
#include "lua/runtime.h"
#include "util/error.h"

struct svc_cmd {
	const char *name;
	svc_cmd_fn fn;
	enum svc_cli_needs needs;
	const char *summary;
	const char *usage; /* options after "svccomm <name>", then a description */
};

static const struct svc_cmd commands[] = {
    {"runconsumer", svc_cmd_runconsumer, SVC_NEEDS_APPS,
     "consume QUEUE and dispatch each message to the Lua handlers",
     "[--workers N]\n\n"
     "Declares the exchanges, QUEUE, bindings, retry and dead-letter queues, then hands every\n"
     "message to the matching handler of apps/*/consumers.lua inside a database transaction\n"
     "(when DATABASE_URL is set) and acks it after the commit.\n\n"
     "  --workers N   run N worker processes under a supervisor (default 1)\n"},
    {"runpublisher", svc_cmd_runpublisher, SVC_NEEDS_SETTINGS,
     "relay committed outbox rows to RabbitMQ",
     "\n\n"
     "Publishes every due outbox row to the exchange named by its aggregate (routing key = event\n"
     "type) with publisher confirms, and deletes a row once the broker confirmed it. Several\n"
     "relays may run at once.\n"},
    {"checkpublisher", svc_cmd_checkpublisher, SVC_NEEDS_SETTINGS,
     "exit 1 when outbox rows wait too long (health check)",
     "[--max-queue-size N] [--max-delay S]\n\n"
     "Prints \"publisher healthy\" and exits 0 unless more than N rows (default 0) have been due\n"
     "for longer than S seconds (default 10); then prints the counts and exits 1.\n"},
    {"publish", svc_cmd_publish, SVC_NEEDS_SETTINGS,
     "write one event to the outbox and print its eventId",
     "<aggregate> <event_type> <payload-json> [--at TIME] [--tags JSON]\n\n"
     "Writes one outbox row in its own transaction; `runpublisher` sends it.\n\n"
     "  --at TIME     due time (ISO 8601, e.g. 2026-12-01T10:00:00Z): a scheduled event\n"
     "  --tags JSON   tags of a scheduled event, a JSON object of strings (needs --at)\n"},
    {"migrate", svc_cmd_migrate, SVC_NEEDS_SETTINGS,
     "create or upgrade the outbox and inbox tables in DATABASE_URL",
     "\n\n"
     "Applies the versioned migrations that are missing; idempotent and safe to run from\n"
     "several processes at once.\n"},
    {"check", svc_cmd_check, SVC_NEEDS_APPS,
     "load settings and apps; print the topology and routing table",
     "\n\n"
     "Validates settings.lua, loads every app and prints the exchanges, queue, bindings and\n"
     "the routing table (exchange, routing key pattern, handler). Passwords are masked.\n"},
    {"version", svc_cmd_version, SVC_NEEDS_NOTHING,
     "print the versions of svccomm, Lua, rabbitmq-c and libpq", "\n"},
    {"help", NULL, SVC_NEEDS_NOTHING, "show the usage of a command", "<command>\n"},
};

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static void print_main_usage(FILE *out)
{
	fprintf(out, "usage: svccomm [--settings FILE] <command> [options]\n\n"
	             "Commands:\n");
	for (size_t i = 0; i < N_COMMANDS; i++)
		fprintf(out, "  %-16s %s\n", commands[i].name, commands[i].summary);
	fprintf(out,
	        "\nGlobal options:\n"
	        "  --settings FILE  settings file (env SVCCOMM_SETTINGS, default ./settings.lua)\n"
	        "  -h, --help       this help; `svccomm <command> --help` for a command\n"
	        "  --version        same as `svccomm version`\n"
	        "\nEnvironment: SVCCOMM_BROKER_URL, SVCCOMM_DATABASE_URL and SVCCOMM_LOG_LEVEL\n"
	        "override the settings file.\n"
	        "\nExit codes: 0 success, 1 runtime failure, 2 usage or configuration error.\n");
}

static const struct svc_cmd *find_command(const char *name)
{
	for (size_t i = 0; i < N_COMMANDS; i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

void svc_cli_usage(FILE *out, const char *command)
{
	const struct svc_cmd *cmd = find_command(command);

	if (!cmd) {
		print_main_usage(out);
		return;
	}
	fprintf(out, "usage: svccomm [--settings FILE] %s%s%s", cmd->name,
	        cmd->usage[0] == '\n' ? "" : " ", cmd->usage);
}

int svc_cli_wants_help(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0)
			return 0;
		if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)
			return 1;
	}
	return 0;
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

static int run_command(const struct svc_cmd *cmd, int argc, char **argv, const char *settings)
{
	struct svc_cli_ctx ctx = {.settings_path = settings, .command = cmd->name};
	struct svc_config config;
	char err[8192], dirbuf[4096];
	int rc;

	if (svc_cli_wants_help(argc, argv)) {
		svc_cli_usage(stdout, cmd->name);
		return SVC_EXIT_OK;
	}
	if (cmd->needs == SVC_NEEDS_NOTHING)
		return cmd->fn(argc, argv, &ctx);

	ctx.rt = svc_runtime_new(dirname_of(settings, dirbuf, sizeof(dirbuf)), err, sizeof(err));
	if (!ctx.rt) {
		fprintf(stderr, "svccomm: %s\n", err);
		return SVC_EXIT_FAILURE;
	}
	rc = svc_config_load(svc_runtime_state(ctx.rt), settings, &config, err, sizeof(err));
	if (rc != 0) {
		fprintf(stderr, "svccomm: %s\n", err);
		svc_runtime_free(ctx.rt);
		return rc == SVC_ECONFIG ? SVC_EXIT_USAGE : SVC_EXIT_FAILURE;
	}
	ctx.config = &config;
	{
		enum svc_log_level level;
		if (svc_log_parse_level(config.log_level, &level) == 0)
			svc_log_threshold = level;
	}
	if (cmd->needs == SVC_NEEDS_APPS && load_apps(ctx.rt, err, sizeof(err)) != 0) {
		fprintf(stderr, "svccomm: %s\n", err);
		rc = SVC_EXIT_USAGE;
		goto out;
	}
	svc_runtime_set_memory_limit(ctx.rt, (size_t)config.lua_memory_limit_mb << 20);
	rc = cmd->fn(argc, argv, &ctx);
out:
	svc_config_release(&config);
	svc_runtime_free(ctx.rt);
	return rc;
}

int svc_cli_run(int argc, char **argv)
{
	const char *settings = getenv("SVCCOMM_SETTINGS");
	const struct svc_cmd *cmd;
	int i;

	/* Handlers print; keep their lines whole and timely when stdout is a file or pipe. */
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!settings || !*settings)
		settings = "./settings.lua";
	for (i = 1; i < argc && argv[i][0] == '-'; i++) {
		if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			print_main_usage(stdout);
			return SVC_EXIT_OK;
		} else if (strcmp(argv[i], "--version") == 0) {
			return svc_cmd_version(1, argv + i, NULL);
		} else if (strcmp(argv[i], "--settings") == 0) {
			if (i + 1 >= argc) {
				fprintf(stderr, "svccomm: --settings needs a file\n");
				return SVC_EXIT_USAGE;
			}
			settings = argv[++i];
		} else if (strncmp(argv[i], "--settings=", 11) == 0) {
			settings = argv[i] + 11;
		} else {
			fprintf(stderr, "svccomm: unknown option '%s'\n\n", argv[i]);
			print_main_usage(stderr);
			return SVC_EXIT_USAGE;
		}
	}
	if (i >= argc) {
		print_main_usage(stderr);
		return SVC_EXIT_USAGE;
	}
	cmd = find_command(argv[i]);
	if (!cmd) {
		fprintf(stderr, "svccomm: '%s' is not a command. See 'svccomm --help'.\n", argv[i]);
		return SVC_EXIT_USAGE;
	}
	if (strcmp(cmd->name, "help") == 0) {
		if (i + 1 < argc && !find_command(argv[i + 1])) {
			fprintf(stderr, "svccomm: '%s' is not a command. See 'svccomm --help'.\n",
			        argv[i + 1]);
			return SVC_EXIT_USAGE;
		}
		if (i + 1 < argc)
			svc_cli_usage(stdout, argv[i + 1]);
		else
			print_main_usage(stdout);
		return SVC_EXIT_OK;
	}
	return run_command(cmd, argc - i, argv + i, settings);
}
