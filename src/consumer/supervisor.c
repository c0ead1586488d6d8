/* supervisor: N worker processes; see supervisor.h. */
#include "consumer/supervisor.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/backoff.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/log.h"

#define LOG            "supervisor"
#define STABLE_AFTER_S 30.0 /* a worker that ran this long starts a fresh backoff */
#define MAX_BACKOFF_S  30.0

struct slot {
	pid_t pid;
	unsigned crashes;
	double started;
	double restart_at;
};

static volatile sig_atomic_t signals_seen;

static void on_signal(int sig)
{
	(void)sig;
	signals_seen++;
}

/* Restart delay after `crashes` failures in a row (1, 2, ...): 0.5 s doubling, no jitter. */
static double restart_delay(unsigned crashes)
{
	return svc_backoff((crashes > INT_MAX ? INT_MAX : (int)crashes) - 1, 0.5, MAX_BACKOFF_S,
	                   1.0);
}

static void spawn(struct slot *s, int worker, svc_worker_fn fn, void *arg)
{
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		svc_error(LOG, "fork: %s", strerror(errno));
		s->crashes++;
		s->restart_at = svc_clock_mono() + restart_delay(s->crashes);
		return;
	}
	if (pid == 0) {
		char tag[32];
		signal(SIGTERM, SIG_DFL);
		signal(SIGINT, SIG_DFL);
		snprintf(tag, sizeof(tag), "worker %d", worker);
		svc_log_set_tag(tag);
		int code = fn(worker, arg);
		fflush(NULL);
		_exit(code);
	}
	s->pid = pid;
	s->started = svc_clock_mono();
	svc_info(LOG, "worker %d started (pid %d)", worker, (int)pid);
}

static void signal_all(struct slot *slots, int n, int sig)
{
	for (int i = 0; i < n; i++)
		if (slots[i].pid > 0)
			kill(slots[i].pid, sig);
}

int svc_supervisor_run(int n, svc_worker_fn fn, void *arg)
{
	struct sigaction sa;
	struct slot *slots = calloc((size_t)n, sizeof(*slots));
	int result = SVC_EXIT_OK;
	bool stopping = false;
	sig_atomic_t forwarded = 0;

	if (!slots) {
		svc_error(LOG, "out of memory");
		return SVC_EXIT_FAILURE;
	}
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signals_seen = 0;

	for (int i = 0; i < n; i++)
		spawn(&slots[i], i + 1, fn, arg);

	for (;;) {
		if (signals_seen != forwarded) {
			forwarded = signals_seen;
			if (!stopping)
				svc_info(LOG, "stopping %d worker(s)", n);
			stopping = true;
			signal_all(slots, n, SIGTERM);
		}
		int status;
		pid_t pid;
		while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
			int i;
			for (i = 0; i < n && slots[i].pid != pid; i++)
				;
			if (i == n)
				continue;
			struct slot *s = &slots[i];
			s->pid = 0;
			bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
			if (WIFEXITED(status))
				svc_log(clean ? SVC_LOG_INFO : SVC_LOG_WARNING, LOG,
				        "worker %d (pid %d) exited with %d", i + 1, (int)pid,
				        WEXITSTATUS(status));
			else if (WIFSIGNALED(status))
				svc_warn(LOG, "worker %d (pid %d) killed by signal %d", i + 1,
				         (int)pid, WTERMSIG(status));
			if (stopping) {
				if (!clean && result == SVC_EXIT_OK)
					result = SVC_EXIT_FAILURE;
				continue;
			}
			if (WIFEXITED(status) && WEXITSTATUS(status) == SVC_EXIT_USAGE) {
				svc_error(LOG, "configuration error in worker %d: stopping all",
				          i + 1);
				result = SVC_EXIT_USAGE;
				stopping = true;
				signal_all(slots, n, SIGTERM);
				continue;
			}
			double now = svc_clock_mono();
			s->crashes = now - s->started >= STABLE_AFTER_S ? 1 : s->crashes + 1;
			double delay = restart_delay(s->crashes);
			s->restart_at = now + delay;
			svc_info(LOG, "restarting worker %d in %.1f s", i + 1, delay);
		}
		int live = 0;
		for (int i = 0; i < n; i++)
			live += slots[i].pid > 0;
		if (stopping && live == 0)
			break;
		if (!stopping) {
			double now = svc_clock_mono();
			for (int i = 0; i < n; i++)
				if (slots[i].pid == 0 && now >= slots[i].restart_at)
					spawn(&slots[i], i + 1, fn, arg);
		}
		struct timespec ts = {.tv_sec = 0, .tv_nsec = 50 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	free(slots);
	return result;
}
