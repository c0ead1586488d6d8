/* supervisor: N worker processes; see supervisor.h. */
#include "consumer/supervisor.h"

#include <errno.h>
#include <fcntl.h>
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

#include "metrics/http.h"
#include "metrics/metrics.h"
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
	int ready_fd;       /* read end of the worker's readiness pipe, -1 when none */
	bool ready;         /* the worker said it consumes: an exit status 2 is no longer a
	                     * configuration error */
	pid_t replaced_pid; /* SIGHUP: the worker asked to stop for a replacement, 0 when none */
};

static volatile sig_atomic_t signals_seen, hups_seen;

/* SIGHUP rounds started so far; a forked worker keeps the count of its fork. */
static int reload_rounds;

int svc_supervisor_reloads(void)
{
	return reload_rounds;
}

/* In a worker: the write end of its readiness pipe (-1 in the supervisor, and in a process
 * run without one). */
static int worker_ready_fd = -1;

void svc_supervisor_ready(void)
{
	if (worker_ready_fd < 0)
		return;
	while (write(worker_ready_fd, "r", 1) < 0 && errno == EINTR)
		;
	close(worker_ready_fd);
	worker_ready_fd = -1;
}

/* METRICS_ADDRESS (svc_supervisor_metrics): the listener of this process and the regions the
 * workers write, shared memory mapped before any fork. */
static struct svc_metrics_http *metrics_http;
static struct svc_metrics_region *const *metrics_slots;
static struct svc_metrics_region *metrics_retired;

void svc_supervisor_metrics(struct svc_metrics_http *http, struct svc_metrics_region *const *slots,
                            struct svc_metrics_region *retired)
{
	metrics_http = http;
	metrics_slots = slots;
	metrics_retired = retired;
}

/* Worker i + 1 is gone: its counts move to the retired region (so the sum served never goes
 * back) and its slot starts from zero for the next worker. */
static void metrics_retire(int i)
{
	if (!metrics_slots)
		return;
	svc_metrics_http_lock(metrics_http);
	svc_metrics_fold(metrics_retired, metrics_slots[i]);
	memset(metrics_slots[i], 0, sizeof(*metrics_slots[i]));
	svc_metrics_http_unlock(metrics_http);
}

static void on_signal(int sig)
{
	if (sig == SIGHUP)
		hups_seen++;
	else
		signals_seen++;
}

/* Restart delay after `crashes` failures in a row (1, 2, ...): 0.5 s doubling, no jitter. */
static double restart_delay(unsigned crashes)
{
	return svc_backoff((crashes > INT_MAX ? INT_MAX : (int)crashes) - 1, 0.5, MAX_BACKOFF_S,
	                   1.0);
}

struct supervisor {
	struct slot *slots;
	int n;
	svc_worker_fn fn;
	void *arg;
	bool stopping;
	int result;
	int rolling;     /* SIGHUP: the slot being replaced, -1 when no replacement runs */
	bool roll_again; /* another SIGHUP came during the replacement: one more round after */
};

/* Reads what worker slot s wrote on its readiness pipe, without blocking. */
static void read_ready(struct slot *s)
{
	char buf[8];

	if (s->ready_fd >= 0 && read(s->ready_fd, buf, sizeof(buf)) > 0)
		s->ready = true;
}

static void close_ready(struct slot *s)
{
	if (s->ready_fd >= 0)
		close(s->ready_fd);
	s->ready_fd = -1;
}

/* Starts worker i + 1 with a readiness pipe (a worker without one only loses the
 * distinction between a configuration error and a crash). */
static void spawn(struct supervisor *sv, int i)
{
	struct slot *s = &sv->slots[i];
	int fds[2] = {-1, -1};

	if (pipe(fds) != 0)
		svc_warn(LOG, "pipe: %s", strerror(errno));
	else
		fcntl(fds[0], F_SETFL, O_NONBLOCK);
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		svc_error(LOG, "fork: %s", strerror(errno));
		if (fds[0] >= 0) {
			close(fds[0]);
			close(fds[1]);
		}
		s->crashes++;
		s->restart_at = svc_clock_mono() + restart_delay(s->crashes);
		return;
	}
	if (pid == 0) {
		char tag[32];
		signal(SIGTERM, SIG_DFL);
		signal(SIGINT, SIG_DFL);
		signal(SIGHUP, SIG_IGN); /* the supervisor replaces workers on SIGHUP */
		for (int j = 0; j < sv->n; j++)
			close_ready(&sv->slots[j]);
		if (fds[0] >= 0)
			close(fds[0]);
		worker_ready_fd = fds[1];
		snprintf(tag, sizeof(tag), "worker %d", i + 1);
		svc_log_set_tag(tag);
		if (metrics_slots) { /* the listener stays the supervisor's */
			svc_metrics_http_forget(metrics_http);
			svc_metrics_use(metrics_slots[i]);
		}
		int code = sv->fn(i + 1, sv->arg);
		fflush(NULL);
		_exit(code);
	}
	if (fds[1] >= 0)
		close(fds[1]);
	s->ready_fd = fds[0];
	s->ready = false;
	s->pid = pid;
	s->started = svc_clock_mono();
	svc_info(LOG, "worker %d started (pid %d)", i + 1, (int)pid);
}

static void signal_all(struct supervisor *sv, int sig)
{
	for (int i = 0; i < sv->n; i++)
		if (sv->slots[i].pid > 0)
			kill(sv->slots[i].pid, sig);
}

/* Logs how worker i + 1 ended; true when it exited with 0. */
static bool log_exit(int i, pid_t pid, int status)
{
	bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
	if (WIFEXITED(status))
		svc_log(clean ? SVC_LOG_INFO : SVC_LOG_WARNING, LOG,
		        "worker %d (pid %d) exited with %d", i + 1, (int)pid, WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		svc_warn(LOG, "worker %d (pid %d) killed by signal %d", i + 1, (int)pid,
		         WTERMSIG(status));
	return clean;
}

/* Worker i + 1 ended: while stopping it only counts towards the result; one stopped for a
 * SIGHUP replacement starts again at once; a configuration error (status 2 before the worker
 * said it consumes) stops all, unless files were reloaded since start; otherwise it is
 * restarted after its backoff. */
static void worker_ended(struct supervisor *sv, int i, pid_t pid, int status)
{
	struct slot *s = &sv->slots[i];
	bool clean = log_exit(i, pid, status);
	metrics_retire(i);
	read_ready(s); /* it may have said so just before it exited */
	close_ready(s);
	if (pid == s->replaced_pid && !sv->stopping) {
		/* asked to stop by a SIGHUP replacement: start the new one now, no backoff */
		if (!clean)
			svc_warn(LOG, "worker %d did not stop cleanly for its replacement", i + 1);
		s->crashes = 0;
		s->restart_at = 0;
		return;
	}
	if (sv->stopping) {
		if (!clean && sv->result == SVC_EXIT_OK)
			sv->result = SVC_EXIT_FAILURE;
		return;
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == SVC_EXIT_USAGE && s->ready)
		svc_warn(LOG,
		         "worker %d exited with %d after it started consuming: a crash, not a "
		         "configuration error",
		         i + 1, SVC_EXIT_USAGE);
	else if (WIFEXITED(status) && WEXITSTATUS(status) == SVC_EXIT_USAGE && reload_rounds > 0)
		/* Files changed under a running service: keep the workers that still run the old
		 * code rather than stop them all; this one retries with backoff. */
		svc_error(LOG,
		          "worker %d: the handler files or settings as they are now do not load "
		          "(exit %d); the other workers go on, fix them and send SIGHUP again",
		          i + 1, SVC_EXIT_USAGE);
	else if (WIFEXITED(status) && WEXITSTATUS(status) == SVC_EXIT_USAGE) {
		svc_error(LOG, "configuration error in worker %d: stopping all", i + 1);
		sv->result = SVC_EXIT_USAGE;
		sv->stopping = true;
		signal_all(sv, SIGTERM);
		return;
	}
	double now = svc_clock_mono();
	s->crashes = now - s->started >= STABLE_AFTER_S ? 1 : s->crashes + 1;
	double delay = restart_delay(s->crashes);
	s->restart_at = now + delay;
	svc_info(LOG, "restarting worker %d in %.1f s", i + 1, delay);
}

/* Collects every worker that ended since the last call. */
static void reap(struct supervisor *sv)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		int i;
		for (i = 0; i < sv->n && sv->slots[i].pid != pid; i++)
			;
		if (i == sv->n)
			continue;
		sv->slots[i].pid = 0;
		worker_ended(sv, i, pid, status);
	}
}

static int live_workers(const struct supervisor *sv)
{
	int live = 0;
	for (int i = 0; i < sv->n; i++)
		live += sv->slots[i].pid > 0;
	return live;
}

/* Starts again every ended worker whose backoff has passed. */
static void restart_due(struct supervisor *sv)
{
	double now = svc_clock_mono();
	for (int i = 0; i < sv->n; i++)
		if (sv->slots[i].pid == 0 && now >= sv->slots[i].restart_at)
			spawn(sv, i);
}

/* SIGHUP, step one: ask worker i + 1 to stop (it commits and acks its batch, its prefetched
 * messages go back to the queue for the others); reap() and restart_due() start the new one. */
static void replace(struct supervisor *sv, int i)
{
	struct slot *s = &sv->slots[i];

	sv->rolling = i;
	s->replaced_pid = s->pid > 0 ? s->pid : -1;
	if (s->pid > 0) {
		svc_info(LOG, "replacing worker %d (pid %d)", i + 1, (int)s->pid);
		kill(s->pid, SIGTERM);
	} else {
		s->restart_at = 0; /* waiting for its backoff: start it now with the new code */
	}
}

/* Starts a round of replacements, or asks for one more after the current round. */
static void start_round(struct supervisor *sv)
{
	if (sv->rolling >= 0) {
		sv->roll_again = true;
		return;
	}
	reload_rounds++;
	svc_info(LOG, "SIGHUP: replacing %d worker(s) one at a time", sv->n);
	replace(sv, 0);
}

/* Moves on once the replacement of the current slot consumes (said so on its pipe). */
static void roll_step(struct supervisor *sv)
{
	struct slot *s;

	if (sv->rolling < 0)
		return;
	s = &sv->slots[sv->rolling];
	if (s->pid <= 0 || s->pid == s->replaced_pid || !s->ready)
		return;
	svc_info(LOG, "worker %d replaced (pid %d consumes)", sv->rolling + 1, (int)s->pid);
	s->replaced_pid = 0;
	if (sv->rolling + 1 < sv->n) {
		replace(sv, sv->rolling + 1);
		return;
	}
	sv->rolling = -1;
	svc_info(LOG, "SIGHUP: all %d worker(s) replaced", sv->n);
	if (sv->roll_again) {
		sv->roll_again = false;
		start_round(sv);
	}
}

int svc_supervisor_run(int n, svc_worker_fn fn, void *arg)
{
	struct sigaction sa;
	struct supervisor sv = {.n = n, .fn = fn, .arg = arg, .result = SVC_EXIT_OK, .rolling = -1};
	sig_atomic_t forwarded = 0, hups_handled = 0;

	sv.slots = calloc((size_t)n, sizeof(*sv.slots));
	if (!sv.slots) {
		svc_error(LOG, "out of memory");
		return SVC_EXIT_FAILURE;
	}
	for (int i = 0; i < n; i++)
		sv.slots[i].ready_fd = -1;
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signals_seen = 0;
	hups_seen = 0;

	for (int i = 0; i < n; i++)
		spawn(&sv, i);

	for (;;) {
		if (signals_seen != forwarded) {
			forwarded = signals_seen;
			if (!sv.stopping)
				svc_info(LOG, "stopping %d worker(s)", n);
			sv.stopping = true;
			signal_all(&sv, SIGTERM);
		}
		if (hups_seen != hups_handled) {
			hups_handled = hups_seen;
			if (!sv.stopping)
				start_round(&sv);
		}
		for (int i = 0; i < n; i++)
			read_ready(&sv.slots[i]);
		reap(&sv);
		if (sv.stopping && live_workers(&sv) == 0)
			break;
		if (!sv.stopping) {
			restart_due(&sv);
			roll_step(&sv);
		}
		struct timespec ts = {.tv_sec = 0, .tv_nsec = 50 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	free(sv.slots);
	return sv.result;
}
