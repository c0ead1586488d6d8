/* Exponential backoff with jitter: the one formula for reconnects, worker restarts and
 * relay retries. */
#ifndef SVC_UTIL_BACKOFF_H
#define SVC_UTIL_BACKOFF_H

/* Delay before retry number attempt (0 = first): base * 2^attempt capped at cap, then
 * scaled into [d/2, d] by rnd in [0, 1] (rnd 1 gives the full delay, no jitter). */
double svc_backoff(int attempt, double base, double cap, double rnd);

#endif
