/* `svccomm runpublisher`: the outbox relay (publisher.c). Installs the signal handlers and runs
 * the loop until SIGTERM or SIGINT. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "util/log.h"
#include "relay/relay.h"
#include "util/error.h"

static const char usage[] =
    "usage: svccomm [--settings FILE] runpublisher\n\n"
    "Relays committed outbox rows (OUTBOX_TABLE in DATABASE_URL) to RabbitMQ with publisher\n"
    "confirms and deletes each row once the broker confirmed it. Wakes on NOTIFY (PUBLISHER_MODE\n"
    "\"listen\"), polls every PUBLISHER_POLL_INTERVAL, and honours scheduled send_after times.\n"
    "Several relays may run at once: they share the rows by partition (advisory locks).\n"
    "SIGTERM/SIGINT: stop claiming, wait up to SHUTDOWN_TIMEOUT for confirms, exit 0.\n\n"
    "Exit codes: 0 stopped by a signal, 1 runtime failure, 2 usage or configuration error.\n";

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

int svc_cmd_runpublisher(int argc, char **argv, struct svc_cli_ctx *ctx)
{
	struct sigaction sa;
	int rc;

	if (svc_cli_wants_help(argc, argv)) {
		fputs(usage, stdout);
		return SVC_EXIT_OK;
	}
	if (argc > 1) {
		fprintf(stderr, "svccomm runpublisher: unexpected argument '%s'\n%s", argv[1],
		        usage);
		return SVC_EXIT_USAGE;
	}
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
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);

	rc = svc_publisher_run(ctx->config, &stop_requested);
	if (rc == SVC_ECONFIG || rc == SVC_EINVAL)
		return SVC_EXIT_USAGE;
	return rc == 0 ? SVC_EXIT_OK : SVC_EXIT_FAILURE;
}
