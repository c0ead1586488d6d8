/* metrics/http: the METRICS_ADDRESS listener (libmicrohttpd, one internal thread) serving
 * GET /metrics (the sum of the regions it was given), /healthz and /readyz.
 *
 * The listening socket is bound by svc_metrics_http_start itself, so an address that cannot
 * be used (does not resolve, port taken, no permission) is an error at start with the
 * system's reason. The server borrows the regions; it locks its mutex while it reads them, so
 * the owner can fold and reset a region between two requests (svc_metrics_http_lock). */
#ifndef SVC_METRICS_HTTP_H
#define SVC_METRICS_HTTP_H

#include <stddef.h>

struct svc_metrics_region;
struct svc_metrics_http;

/* Starts serving on address ("host:port", "[v6]:port"); regions (n of them, borrowed) are
 * summed. health_bound_s: /healthz answers 503 when a loop has not turned for longer.
 * Returns 0 with *out set, or SVC_ECONFIG with the reason in err. */
int svc_metrics_http_start(const char *address, struct svc_metrics_region *const *regions, size_t n,
                           double health_bound_s, struct svc_metrics_http **out, char *err,
                           size_t errsz);

/* Stops the thread, closes the socket and frees the server (NULL: nothing). */
void svc_metrics_http_stop(struct svc_metrics_http *h);

/* Holds off requests while the owner changes a region (fold + reset). */
void svc_metrics_http_lock(struct svc_metrics_http *h);
void svc_metrics_http_unlock(struct svc_metrics_http *h);

/* In a forked child: closes the inherited listening socket (the thread did not follow). */
void svc_metrics_http_forget(struct svc_metrics_http *h);

#endif
