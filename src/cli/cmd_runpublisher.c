/* `svccomm runpublisher`: the outbox relay (relay/relay.c). Installs the signal handlers and
 * runs the loop until SIGTERM or SIGINT; SIGHUP stops it the same way and starts it again. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "relay/relay.h"
#include "util/error.h"

static volatile sig_atomic_t stop_requested, reload_requested;

static void on_signal(int sig)
{
	if (sig == SIGHUP && !stop_requested)
		reload_requested = 1;
	stop_requested = 1;
}

static int run(struct svc_cli_ctx *ctx)
{
	struct sigaction sa;
	int rc;

	if (!ctx->config->database_url || !*ctx->config->database_url) {
		fprintf(stderr, "svccomm: %s: DATABASE_URL: required by runpublisher, not set\n",
		        ctx->settings_path ? ctx->settings_path : "settings.lua");
		return SVC_EXIT_USAGE;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);

	rc = svc_publisher_run(ctx->config, &stop_requested);
	/* SIGHUP: stopped as on SIGTERM (confirmed rows deleted); start again with the settings
	 * file as it is now. */
	ctx->reexec = rc == 0 && reload_requested;
	if (rc == SVC_ECONFIG || rc == SVC_EINVAL)
		return SVC_EXIT_USAGE;
	return rc == 0 ? SVC_EXIT_OK : SVC_EXIT_FAILURE;
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
        "which reads the settings file anew.\n",
    .exit_codes = "Exit codes: 0 stopped by a signal, 1 runtime failure, 2 usage or "
                  "configuration error.",
};
