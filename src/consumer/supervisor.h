/* supervisor: runs N worker processes and keeps them running.
 *
 * The parent forks each worker before any connection is made (a worker opens its own
 * sockets and keeps its own copy of the Lua state), restarts a worker that exits or crashes
 * with a per-slot backoff, forwards SIGTERM/SIGINT to every worker and returns once they
 * are all gone. A worker that exits with SVC_EXIT_USAGE (configuration error) stops all. */
#ifndef SVC_SUPERVISOR_H
#define SVC_SUPERVISOR_H

/* The body of a worker: returns the worker's exit code. Runs in the child. */
typedef int (*svc_worker_fn)(int worker, void *arg);

/* Runs n workers (numbered 1..n) until SIGTERM/SIGINT. Returns SVC_EXIT_OK when every
 * worker stopped cleanly after the signal, SVC_EXIT_USAGE when a worker reported a
 * configuration error, SVC_EXIT_FAILURE otherwise. */
int svc_supervisor_run(int n, svc_worker_fn fn, void *arg);

#endif
