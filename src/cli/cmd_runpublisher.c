/* `svccomm runpublisher`: the outbox relay (relay/relay.c). Installs the signal handlers and
 * runs the loop until SIGTERM or SIGINT; SIGHUP stops it the same way and starts it again.
 * `svccomm devpublisher` does the same when settings.lua changes (a thread watches it). */
#include <errno.h>
#include <lua.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "cli/cli.h"
#include "config/config.h"
#include "lua/runtime.h"
#include "metrics/metrics.h"
#include "relay/relay.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/log.h"

static volatile sig_atomic_t stop_requested, reload_requested;

static void on_signal(int sig)
{
	if (sig == SIGHUP && !stop_requested)
		reload_requested = 1;
	stop_requested = 1;
}

#define QUIET_S 0.2 /* saves closer than this restart once */

/* True when the settings file at path loads and validates; else logs why. */
static bool settings_valid(const char *dir, const char *path)
{
	char err[4096];
	struct svc_config cfg;
	struct svc_runtime *rt = svc_runtime_new(dir, err, sizeof(err));
	int rc = rt ? svc_config_load(svc_runtime_state(rt), path, &cfg, err, sizeof(err)) : -1;

	if (rc == 0)
		svc_config_release(&cfg);
	else
		svc_error("cli",
		          "%s changed but does not validate, the relay keeps the old settings: %s",
		          path, err);
	svc_runtime_free(rt);
	return rc == 0;
}

/* devpublisher's thread: waits for a change to the settings file, then stops the relay for a
 * re-exec once the file validates. */
static void *watch_settings(void *arg)
{
	const struct svc_config *cfg = arg;
	const char *dir = cfg->dir ? cfg->dir : ".";
	const char *base = strrchr(cfg->path, '/');
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	int fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
	double last = 0;

	base = base ? base + 1 : cfg->path;
	if (fd < 0 || inotify_add_watch(fd, dir, IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE) < 0) {
		svc_error("cli", "devpublisher: cannot watch %s: %s", dir, strerror(errno));
		return NULL;
	}
	svc_info("cli", "devpublisher: watching %s", cfg->path);
	while (!stop_requested) {
		ssize_t n = read(fd, buf, sizeof(buf));
		for (char *p = buf; n > 0 && p < buf + n;) {
			const struct inotify_event *ev = (const struct inotify_event *)p;
			if (ev->len && strcmp(ev->name, base) == 0)
				last = svc_clock_mono();
			p += sizeof(*ev) + ev->len;
		}
		if (last && svc_clock_mono() - last >= QUIET_S) {
			last = 0;
			if (settings_valid(dir, cfg->path)) {
				svc_info("cli", "%s changed: restarting the relay", cfg->path);
				reload_requested = 1;
				stop_requested = 1;
			}
		}
		usleep(50 * 1000);
	}
	close(fd);
	return NULL;
}

static int run_relay(struct svc_cli_ctx *ctx, bool dev)
{
	struct sigaction sa;
	pthread_t th;
	bool watching = false;
	int rc;

	if (!ctx->config->database_url || !*ctx->config->database_url) {
		fprintf(stderr, "svccomm: %s: DATABASE_URL: required by runpublisher, not set\n",
		        ctx->settings_path ? ctx->settings_path : "settings.lua");
		return SVC_EXIT_USAGE;
	}
	struct svc_cli_metrics m;
	rc = svc_cli_metrics_start(ctx->config, 1, 60.0, &m);
	if (rc != SVC_EXIT_OK)
		return rc;
	if (ctx->rt) /* the relay runs no Lua: the state that read the settings, once */
		svc_metric_set(svc_metrics_series(SVC_M_LUA_MEMORY, ""),
		               (double)lua_gc(svc_runtime_state(ctx->rt), LUA_GCCOUNT, 0) * 1024.0);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);

	if (dev) {
		if (ctx->config->log_level_default) /* neither the file nor the env set it */
			svc_log_threshold = SVC_LOG_DEBUG;
		watching = pthread_create(&th, NULL, watch_settings, ctx->config) == 0;
	}
	rc = svc_publisher_run(ctx->config, &stop_requested);
	svc_cli_metrics_stop(&m);
	stop_requested = 1;
	if (watching)
		pthread_join(th, NULL);
	/* SIGHUP: stopped as on SIGTERM (confirmed rows deleted); start again with the settings
	 * file as it is now. */
	ctx->reexec = rc == 0 && reload_requested;
	if (rc == SVC_ECONFIG || rc == SVC_EINVAL)
		return SVC_EXIT_USAGE;
	return rc == 0 ? SVC_EXIT_OK : SVC_EXIT_FAILURE;
}

static int run(struct svc_cli_ctx *ctx)
{
	return run_relay(ctx, false);
}

static int run_dev(struct svc_cli_ctx *ctx)
{
	return run_relay(ctx, true);
}

const struct svc_cmd svc_cmd_runpublisher = {
    .name = "runpublisher",
    .run = run,
    .needs = SVC_NEEDS_SETTINGS,
    .summary = "relay committed outbox rows to RabbitMQ",
    .description =
        "Relays committed outbox rows (OUTBOX_TABLE in DATABASE_URL) to RabbitMQ with publisher\n"
        "confirms and deletes each row once the broker confirmed it. Wakes on NOTIFY\n"
        "(PUBLISHER_MODE \"listen\"), polls every PUBLISHER_POLL_INTERVAL, and honours scheduled\n"
        "send_after times. Several relays may run at once: they share the rows by partition\n"
        "(advisory locks). SIGTERM/SIGINT: stop claiming, wait up to SHUTDOWN_TIMEOUT for\n"
        "confirms, exit 0. SIGHUP: stop the same way, then exec the same command line again,\n"
        "which reads the settings file anew. With METRICS_ADDRESS set, serves /metrics\n"
        "(Prometheus), /healthz and /readyz there.\n",
    .exit_codes = "Exit codes: 0 stopped by a signal, 1 runtime failure, 2 usage or "
                  "configuration error.",
};

const struct svc_cmd svc_cmd_devpublisher = {
    .name = "devpublisher",
    .run = run_dev,
    .needs = SVC_NEEDS_SETTINGS,
    .summary = "runpublisher for development: restart when settings.lua changes",
    .description =
        "Runs as runpublisher with LOG_LEVEL debug (unless settings.lua or SVCCOMM_LOG_LEVEL set "
        "it) and\n"
        "watches the settings file. When it changes (saves within 200 ms count once) and\n"
        "validates, the relay stops as on SIGHUP (confirmed rows deleted) and execs the same\n"
        "command line again; settings that do not validate are ignored and the reason logged.\n"
        "Not for production: use runpublisher.\n",
    .exit_codes = "Exit codes: 0 stopped by a signal, 1 runtime failure, 2 usage or "
                  "configuration error.",
};
