/* bench_common: helpers shared by the ceiling programs (raw_publish, raw_consume, pg_outbox,
 * pg_handler). Not part of svccomm: the benchmark measures svccomm against these.
 *
 * Ownership: bench_connect() hands out a connection the caller closes with bench_close();
 * error texts are written into caller-provided buffers. */
#ifndef SVCCOMM_BENCH_COMMON_H
#define SVCCOMM_BENCH_COMMON_H

#include <stdbool.h>
#include <stddef.h>

#include <amqp.h>

/* Monotonic clock in seconds. */
double bench_now(void);

/* Wall clock (CLOCK_REALTIME) in seconds since the epoch: comparable across processes. */
double bench_wall(void);

/* Events at a fixed rate: event i is due at start + i / rate on the monotonic clock. */
struct bench_schedule {
	double start, rate;
};

/* The schedule starting delay_s from now (time to connect before the first event). */
struct bench_schedule bench_schedule(double rate, double delay_s);

/* Sleeps until event i is due (not at all when it is past) and returns how late that is, in
 * seconds: a caller that fell behind catches up without sleeping. */
double bench_wait_due(const struct bench_schedule *s, long i);

/* Parse a positive integer option value; exits with status 2 on garbage. */
long bench_parse_long(const char *opt, const char *val);

/* True for a lower-case SQL identifier ([a-z_][a-z0-9_]*) of at most max bytes. */
bool bench_ident_ok(const char *s, size_t max);

/* Connect to an amqp:// URL, log in and open channel 1. Returns 0 or -1 with err filled. */
int bench_connect(const char *url, amqp_connection_state_t *out, char *err, size_t errlen);

/* Close channel 1 and the connection, then free it. Safe with NULL. */
void bench_close(amqp_connection_state_t conn);

/* Describe an RPC reply as text; returns 0 when it is a normal reply, -1 otherwise. */
int bench_rpc_ok(amqp_rpc_reply_t r, const char *what, char *err, size_t errlen);

/* Declare the durable queue `queue` of type qtype ("v1", "v2" or "quorum"), bound to the durable
 * topic exchange `exchange` with "#" when exchange is not empty. fresh: delete the queue first.
 * purge: empty it. queue NULL or "": declare the exchange only. Returns 0 or -1 with err filled. */
int bench_declare(amqp_connection_state_t conn, const char *exchange, const char *queue,
                  const char *qtype, bool fresh, bool purge, char *err, size_t errlen);

/* Message count of an existing queue (passive declare), or -1 with err filled. */
long bench_queue_count(amqp_connection_state_t conn, const char *queue, char *err, size_t errlen);

/* Minimal JSON string check: bench names are restricted to [A-Za-z0-9_.-]. */
bool bench_name_ok(const char *s);

#endif
