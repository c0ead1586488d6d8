/* signals: how a consumer stops. The first SIGTERM/SIGINT sets a flag the loop checks between
 * messages (the open batch is committed and acked, then the process exits); a second signal, or
 * SHUTDOWN_TIMEOUT after the first, exits at once (unacked messages return to the queue).
 * SIGHUP stops the same way and also sets svc_consumer_reload, so the command starts again
 * (cli.c re-execs it) with the handler files and settings as they are now. */
#include "consumer/internal.h"

#include <math.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util/clock.h"
#include "util/error.h"

volatile sig_atomic_t svc_consumer_stop;
volatile sig_atomic_t svc_consumer_reload;
static volatile sig_atomic_t shutdown_seconds = 30;

static void on_signal(int sig)
{
	(void)sig;
	if (svc_consumer_stop) {
		static const char msg[] = "second signal: exiting now\n";
		ssize_t w = write(2, msg, sizeof(msg) - 1);
		(void)w;
		_exit(SVC_EXIT_FAILURE);
	}
	svc_consumer_stop = 1;
	alarm((unsigned)shutdown_seconds);
}

static void on_hup(int sig)
{
	if (!svc_consumer_stop)
		svc_consumer_reload = 1;
	on_signal(sig);
}

static void on_alarm(int sig)
{
	static const char msg[] = "SHUTDOWN_TIMEOUT passed: exiting now\n";
	ssize_t w;
	(void)sig;
	w = write(2, msg, sizeof(msg) - 1);
	(void)w;
	_exit(SVC_EXIT_FAILURE);
}

void svc_consumer_signals_install(double shutdown_timeout)
{
	struct sigaction sa, old;
	double s = ceil(shutdown_timeout);

	svc_consumer_stop = 0;
	svc_consumer_reload = 0;
	shutdown_seconds = (sig_atomic_t)(s < 1 ? 1 : s > 86400 ? 86400 : s);
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
	/* A supervised worker inherits SIGHUP ignored (the supervisor replaces workers itself),
	 * as does a process started under nohup: leave it ignored then. */
	sigaction(SIGHUP, NULL, &old);
	if (old.sa_handler != SIG_IGN) {
		sa.sa_handler = on_hup;
		sigaction(SIGHUP, &sa, NULL);
	}
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
}

void svc_consumer_signals_disarm(void)
{
	alarm(0);
}

void svc_consumer_nap(double seconds)
{
	double until = svc_clock_mono() + seconds;
	while (!svc_consumer_stop) {
		double left = until - svc_clock_mono();
		if (left <= 0)
			break;
		if (left > 0.1)
			left = 0.1;
		struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)(left * 1e9)};
		nanosleep(&ts, NULL);
		svc_metrics_heartbeat(); /* waiting on purpose is not a stuck loop */
	}
}
