/* supervisor: runs N worker processes and keeps them running.
 *
 * The parent forks each worker before any connection is made (a worker opens its own
 * sockets and keeps its own copy of the Lua state), restarts a worker that exits or crashes
 * with a per-slot backoff, forwards SIGTERM/SIGINT to every worker and returns once they
 * are all gone. A worker that exits with SVC_EXIT_USAGE (configuration error) before it called
 * svc_supervisor_ready() stops all; after that call the status is a crash like any other
 * (restart with backoff). The readiness travels on a pipe per worker.
 *
 * SIGHUP replaces the workers one at a time so new handler code is loaded without a gap: worker
 * k gets SIGTERM (it commits and acks its batch and exits), its replacement starts at once,
 * and worker k + 1 is replaced only once that replacement said it consumes. Workers ignore
 * SIGHUP themselves; a SIGHUP during a round asks for one more round after it. A worker
 * started after a SIGHUP that exits 2 (the files as they are now do not load) is restarted
 * with backoff (reading them again) instead of stopping all: the round waits, the others serve. */
#ifndef SVC_SUPERVISOR_H
#define SVC_SUPERVISOR_H

struct svc_metrics_http;
struct svc_metrics_region;

/* The body of a worker: returns the worker's exit code. Runs in the child. */
typedef int (*svc_worker_fn)(int worker, void *arg);

/* Runs n workers (numbered 1..n) until SIGTERM/SIGINT, replacing them on SIGHUP. Returns
 * SVC_EXIT_OK when every worker stopped cleanly after the signal, SVC_EXIT_USAGE when a worker
 * reported a configuration error, SVC_EXIT_FAILURE otherwise. */
int svc_supervisor_run(int n, svc_worker_fn fn, void *arg);

/* In a worker: how many SIGHUP rounds had started when it was forked (0 before any): a worker
 * started after one loads the handler files again. */
int svc_supervisor_reloads(void);

/* Called by a worker once its configuration has proved workable (it consumes): from then on
 * its exit status 2 no longer stops the supervisor. A no-op outside a supervised worker and
 * after the first call. */
void svc_supervisor_ready(void);

/* With METRICS_ADDRESS, before svc_supervisor_run(): the supervisor serves the sum of its
 * workers on one listener (one scrape target whatever N is). Worker k writes slots[k - 1]
 * (shared memory mapped before the forks); when it ends, its counts are added to retired and
 * its slot zeroed, so counters never go backwards across crashes and SIGHUP replacements. */
void svc_supervisor_metrics(struct svc_metrics_http *http, struct svc_metrics_region *const *slots,
                            struct svc_metrics_region *retired);

#endif
