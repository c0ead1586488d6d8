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
 * Files: loop.c (sessions, reconnects, housekeeping), message.c (one delivery, stage by
 * stage), batch.c (transaction, commit, ack, failures), retry.c (failure policy, copy
 * headers), topology.c (queues, the publishing connection), inbox.c, db.c (the PostgreSQL
 * connection), lua_bridge.c (calls into Lua), signals.c; internal.h joins them. The pure
 * decisions below are exported for the unit tests. */
#ifndef SVC_CONSUMER_H
#define SVC_CONSUMER_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>

#include <libpq-fe.h>

#include "amqp/conn.h"
#include "amqp/consume.h"

struct svc_config;
struct svc_runtime;

/* Runs the consume loop until SIGTERM/SIGINT or a fatal configuration problem (cfg and rt are
 * borrowed, worker is 0 without --workers) and returns SVC_EXIT_OK on a clean stop,
 * SVC_EXIT_USAGE when the configuration cannot work (e.g. DO_NOT_DECLARE and no queue at
 * startup), SVC_EXIT_FAILURE otherwise. */
int svc_consumer_run(const struct svc_config *cfg, struct svc_runtime *rt, int worker);

/* Set when the stop came from SIGHUP: the caller should start the consumer again (new code). */
extern volatile sig_atomic_t svc_consumer_reload;

/* Set by `devconsumer` before svc_consumer_run(): watch the project's files and reload the
 * apps between two messages when they change (watchfiles.c). */
extern bool svc_consumer_dev;

/* ---- pure logic (unit-tested) ---- */

enum svc_failure_action {
	SVC_FAIL_RETRY,       /* republish to the retry queue of *delay_index */
	SVC_FAIL_DEAD_LETTER, /* publish to <QUEUE>.dlq */
};

/* After attempt `attempt` (1-based) failed: retry with delays[attempt-1] (the last delay
 * repeating) while attempt < max_attempts and delays exist and the failure is not permanent,
 * else dead-letter. */
enum svc_failure_action svc_consumer_failure_action(long attempt, long max_attempts,
                                                    size_t n_delays, bool permanent,
                                                    size_t *delay_index);

/* A delay in seconds as whole milliseconds (rounded, at least 1). */
long svc_consumer_delay_ms(double seconds);

/* Writes "<queue>.retry.<ms>" into out: 0, or SVC_EINVAL when it does not fit or exceeds the
 * 255 bytes of an AMQP name. */
int svc_consumer_retry_queue(const char *queue, long delay_ms, char *out, size_t outsz);

/* Writes "<queue>.dlq" into out: 0, or SVC_EINVAL as svc_consumer_retry_queue(). */
int svc_consumer_dlq_name(const char *queue, char *out, size_t outsz);

/* Whether the open batch must be committed (and acked) now: it holds `limit` messages, or
 * `interval_s` passed since it began (the loop also commits when no message is waiting). */
bool svc_consumer_should_commit(size_t batch_len, size_t limit, double elapsed_s,
                                double interval_s);

/* The attempt number a delivery carries (x-svccomm-attempt, integer or string), 1 when absent
 * or invalid. */
long svc_consumer_attempt(const struct svc_delivery *d);

/* The exchange and routing key a delivery was first published with: those of its
 * x-svccomm-exchange and x-svccomm-routing-key headers when both are strings (a retry copy),
 * else its own. Headers anyone can set: only for a delivery svc_consumer_copy_trusted() took. */
void svc_consumer_origin(const struct svc_delivery *d, const char **exchange,
                         const char **routing_key);

/* The inbox message id into out: amqp_message_id when not empty, else "<exchange>:<eventId>"
 * from the envelope (eventId, or event_id); 0, SVC_EINVAL when there is none, or SVC_EPROTO
 * when it cannot be a key (not valid UTF-8, longer than 400 bytes or than out). */
int svc_consumer_message_id(const char *amqp_message_id, const char *exchange, const char *body,
                            size_t len, char *out, size_t outsz);

/* Copies the first max_lines lines of text into out, at most outsz-1 bytes, cut on a UTF-8
 * boundary. */
void svc_consumer_error_excerpt(const char *text, int max_lines, char *out, size_t outsz);

/* Copies svccomm republishes carry x-svccomm-signature: the hex HMAC-SHA256, under a key only
 * the deployment's broker account knows, of (queue, origin exchange, origin routing key,
 * attempt, SHA-256 of the body). Without a valid one the x-svccomm-* headers are ignored. */
#define SVC_COPY_KEY_LEN          32
#define SVC_COPY_SIGNATURE_LEN    64
#define SVC_COPY_SIGNATURE_HEADER "x-svccomm-signature"

/* Derives the signing key from the broker URL's user, password and vhost (the whole URL when it
 * does not parse): the same in every worker and process that shares the account, across
 * restarts. */
void svc_consumer_copy_key(const char *broker_url, unsigned char key[SVC_COPY_KEY_LEN]);

/* Writes the signature of a copy for queue into out; 0, or SVC_EINVAL when a name is missing or
 * longer than 255 bytes. */
int svc_consumer_sign_copy(const unsigned char key[SVC_COPY_KEY_LEN], const char *queue,
                           const char *exchange, const char *routing_key, long attempt,
                           const void *body, size_t len, char out[SVC_COPY_SIGNATURE_LEN + 1]);

/* Whether d is a copy svccomm made for queue: its origin headers, attempt and body match its
 * x-svccomm-signature (compared in constant time). */
bool svc_consumer_copy_trusted(const struct svc_delivery *d, const char *queue,
                               const unsigned char key[SVC_COPY_KEY_LEN]);

/* What to add when a failed message is republished. */
struct svc_failure_info {
	bool dead_letter;     /* false: a retry copy */
	long next_attempt;    /* retry: attempt number the copy carries */
	long attempts;        /* dead letter: attempts made */
	const char *exchange; /* original exchange and routing key */
	const char *routing_key;
	const char *error;     /* error text (excerpt) */
	const char *handler;   /* "app:file:line" or NULL */
	const char *reason;    /* dead letter: short reason token */
	const char *signature; /* x-svccomm-signature, or NULL */
};

/* Bytes the application headers of a republished copy may take. A copy (these, the x-svccomm-*
 * headers and the properties, a few KB) plus the x-death entries the broker adds when a retry
 * queue sends it back must stay well under the 131072-byte frame: a larger header frame cannot
 * be read by rabbitmq-c 0.11. */
#define SVC_COPY_HEADERS_MAX 65536

/* Whether a header is bookkeeping, not the application's: the broker's x-death,
 * x-first-death-*, x-last-death-*, or svccomm's own x-svccomm-*. A copy never carries them
 * over (a replayed dead letter starts again at attempt 1). */
bool svc_consumer_bookkeeping_header(const char *key);

/* Bytes, as encoded, of the delivery's headers that a republished copy would carry. */
size_t svc_consumer_headers_size(const struct svc_delivery *d);
/* Whether those exceed SVC_COPY_HEADERS_MAX: such a delivery is dead-lettered at its first
 * failure ("headers-too-large"), without its headers. */
bool svc_consumer_headers_too_large(const struct svc_delivery *d);

/* Builds the headers of a republished copy into out (max entries) and returns their count: the
 * delivery's own headers that have a string form, without broker bookkeeping (x-death,
 * x-first-death-*, x-last-death-*) or earlier x-svccomm-* values, and none of them when they are
 * too large (svc_consumer_headers_too_large); then the x-svccomm-* headers of info (an
 * exchange or routing key over 255 bytes left out), and x-svccomm-body-truncated = the body's
 * full size when only a prefix of it was kept; number texts point into numbuf (>= 48 bytes). */
size_t svc_consumer_build_headers(const struct svc_delivery *d, const struct svc_failure_info *info,
                                  struct svc_amqp_header *out, size_t max, char *numbuf);

/* The inbox table's size (the planner's estimate, -1 or 0 before its first ANALYZE) and the
 * age in seconds of its oldest row, for `check --connect`; 0 or a negative code with err. */
int svc_consumer_inbox_stats(PGconn *conn, const char *table, double *rows, double *oldest,
                             char *err, size_t errsz);

#endif
