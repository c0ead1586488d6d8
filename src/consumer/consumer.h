/* consumer: the consume loop of `svccomm runconsumer` and its transaction/ack boundaries.
 *
 * One consumer = one broker connection that consumes QUEUE, one broker connection that
 * publishes retries and dead letters with confirms (so consume and confirm frames never
 * mix), an optional PostgreSQL connection whose transaction the handlers share, and the
 * Lua runtime (not owned) that loaded the apps.
 *
 * Per message: size and UTF-8 are checked in C; the message enters a batch (one
 * transaction, one SAVEPOINT per message, optional inbox row); lua dispatch.handle() runs
 * under svc_lua_pcall; a failure is republished to <QUEUE>.retry.<ms> (the broker holds
 * it for the delay) or to <QUEUE>.dlq, with a confirm, before the original is acked. The
 * batch commits when CONSUMER_COMMIT_INTERVAL has passed, PREFETCH_COUNT messages are in
 * it, or no further message is waiting; its messages are acked after the COMMIT.
 *
 * The pure decisions (retry or dead letter, when to commit, backoff, headers, message id,
 * identifier quoting) are exported for the unit tests. */
#ifndef SVC_CONSUMER_H
#define SVC_CONSUMER_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>

#include "amqp/conn.h"
#include "amqp/consume.h"

struct svc_config;
struct svc_runtime;

/* Set by the signal handlers that svc_consumer_run installs (first SIGTERM/SIGINT). */
extern volatile sig_atomic_t svc_consumer_stop;

/* Runs the consume loop until SIGTERM/SIGINT (or a fatal configuration problem). cfg and rt
 * are borrowed. worker is the worker number (0 without --workers). Returns SVC_EXIT_OK on
 * a clean stop, SVC_EXIT_USAGE when the configuration cannot work (e.g. DO_NOT_DECLARE and
 * the queue does not exist at startup), SVC_EXIT_FAILURE otherwise. */
int svc_consumer_run(const struct svc_config *cfg, struct svc_runtime *rt, int worker);

/* ---- pure logic (unit-tested) ---- */

enum svc_failure_action {
	SVC_FAIL_RETRY,       /* republish to the retry queue of *delay_index */
	SVC_FAIL_DEAD_LETTER, /* publish to <QUEUE>.dlq */
};

/* After attempt `attempt` (1-based) failed: retry while attempt < max_attempts and delays
 * exist, unless the failure is permanent. The delay of attempt n is delays[n-1], the last
 * delay repeating. */
enum svc_failure_action svc_consumer_failure_action(long attempt, long max_attempts,
                                                    size_t n_delays, bool permanent,
                                                    size_t *delay_index);

/* A delay in seconds as whole milliseconds (rounded, at least 1). */
long svc_consumer_delay_ms(double seconds);

/* "<queue>.retry.<ms>" into out; 0 or SVC_EINVAL when it does not fit (AMQP names are at
 * most 255 bytes). */
int svc_consumer_retry_queue(const char *queue, long delay_ms, char *out, size_t outsz);
/* "<queue>.dlq" into out; 0 or SVC_EINVAL. */
int svc_consumer_dlq_name(const char *queue, char *out, size_t outsz);

/* Whether the open batch must be committed (and acked) now: it holds `limit` messages, or
 * `interval_s` passed since it began. (The loop also commits when no message is waiting.) */
bool svc_consumer_should_commit(size_t batch_len, size_t limit, double elapsed_s,
                                double interval_s);

/* Reconnect delay after `failures` consecutive failures (1, 2, ...): 0.5 s doubling, capped at
 * max_delay, with "equal jitter" (half fixed, half rand01 in [0,1)). */
double svc_consumer_backoff(unsigned failures, double max_delay, double rand01);

/* The attempt number carried by a delivery (x-svccomm-attempt, integer or string); 1 when
 * absent or invalid. */
long svc_consumer_attempt(const struct svc_delivery *d);

/* Finds the top-level key of a JSON object and copies its value into out when it is a string
 * without escapes (its contents) or a number (its text). Nested values and strings are
 * skipped without recursion, so any depth is fine. 0 when found, SVC_EINVAL otherwise. */
int svc_json_top_field(const char *json, size_t len, const char *key, char *out, size_t outsz);

/* The inbox message id: amqp_message_id when not empty, else "<exchange>:<eventId>" from the
 * envelope (eventId, or event_id). 0, or SVC_EINVAL when there is none. */
int svc_consumer_message_id(const char *amqp_message_id, const char *exchange, const char *body,
                            size_t len, char *out, size_t outsz);

/* Validates name as an identifier or schema.identifier ([A-Za-z_][A-Za-z0-9_]*, <= 63
 * bytes each) and writes it double-quoted ("schema"."name"). 0 or SVC_EINVAL. */
int svc_consumer_quote_ident(const char *name, char *out, size_t outsz);

/* The first max_lines lines of text, at most outsz-1 bytes, cut on a UTF-8 boundary. */
void svc_consumer_error_excerpt(const char *text, int max_lines, char *out, size_t outsz);

/* What to add when a failed message is republished. */
struct svc_failure_info {
	bool dead_letter;     /* false: a retry copy */
	long next_attempt;    /* retry: attempt number the copy carries */
	long attempts;        /* dead letter: attempts made */
	const char *exchange; /* original exchange and routing key */
	const char *routing_key;
	const char *error;   /* error text (excerpt) */
	const char *handler; /* "app:file:line" or NULL */
	const char *reason;  /* dead letter: short reason token */
};

/* Builds the header list of a republished copy into out (max entries): the delivery's own
 * headers that have a string form, without broker bookkeeping (x-death, x-first-death-*,
 * x-last-death-*) or earlier x-svccomm-* values, then the x-svccomm-* headers of info.
 * numbuf (>= 48 bytes) holds the number texts the entries point to. Returns the count. */
size_t svc_consumer_build_headers(const struct svc_delivery *d, const struct svc_failure_info *info,
                                  struct svc_amqp_header *out, size_t max, char *numbuf);

#endif
