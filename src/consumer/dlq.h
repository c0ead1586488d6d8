/* dlq: the operator's side of the consumer's dead-letter queue, <QUEUE>.dlq (`svccomm dlq
 * stats|list|replay|purge`).
 *
 * The queue's name is the one the consumer computes (svc_consumer_dlq_name()). Dead letters are
 * read with basic.get on one connection (never consumed, so nothing arrives unasked), and
 * replayed copies are published on a second one in confirm mode, as the consumer publishes its
 * own copies. A dead letter's origin (exchange, routing key) is trusted only when its
 * x-svccomm-signature matches (svc_consumer_copy_trusted(), the key derived from the broker
 * account): a message someone else put in the DLQ can be listed, never replayed.
 *
 * Replay is at-least-once: each dead letter is acked only after the broker confirmed its copy
 * (mandatory: an unroutable copy is not acked). A failure midway loses nothing: the letter in
 * flight is unacked and goes back to the DLQ when the connection closes; at most that one may
 * be delivered twice (confirmed, then its ack lost). Letters that are not replayed (other ids,
 * untrusted, truncated, unroutable) are held unacked until the end, then put back in the DLQ.
 * Replay takes only the letters that were in the DLQ when it started, so copies that fail
 * again and come back while it runs are not replayed a second time.
 *
 * Ownership: struct svc_dlq owns both connections and the delivery buffer; the config is
 * borrowed. A letter passed to a callback is valid during the call only. Errors: 0 or a
 * negative SVC_E*, the text in q->err. Knows AMQP, not SQL nor Lua. */
#ifndef SVC_CONSUMER_DLQ_H
#define SVC_CONSUMER_DLQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "amqp/conn.h"
#include "amqp/consume.h"
#include "config/config.h"
#include "consumer/consumer.h"

#define SVC_DLQ_BODY_MAX (128 << 20) /* RabbitMQ's largest message: a body read whole */

struct svc_dlq {
	const struct svc_config *cfg;
	struct svc_amqp *in;  /* basic.get, ack, nack, counts, purge */
	struct svc_amqp *out; /* replayed copies, confirm mode; NULL unless opened for replay */
	struct svc_amqp_consumer cs;
	struct svc_delivery d;
	unsigned char key[SVC_COPY_KEY_LEN];
	char name[260]; /* <QUEUE>.dlq */
	char err[600];
};

/* One dead letter as svccomm wrote it; NULL strings: the header is absent. */
struct svc_dlq_letter {
	const struct svc_delivery *d; /* the message itself (body, properties, headers) */
	const char *reason;           /* x-svccomm-reason: handler-error, max-attempts, ... */
	const char *handler;          /* x-svccomm-handler: app:file:line */
	const char *error;            /* x-svccomm-error: the error text (an excerpt) */
	long attempts;                /* x-svccomm-attempts, 0 when absent */
	const char *exchange;         /* x-svccomm-exchange: where it was first published */
	const char *routing_key;      /* x-svccomm-routing-key */
	bool trusted;                 /* signed by svccomm for this queue: the origin is real */
	bool truncated;               /* x-svccomm-body-truncated: only a prefix was kept */
};

/* Why a letter was not replayed (passed to the replay callback), or SVC_DLQ_REPLAYED. */
enum svc_dlq_outcome {
	SVC_DLQ_REPLAYED,
	SVC_DLQ_OTHER_ID,   /* --id given, another message */
	SVC_DLQ_UNTRUSTED,  /* not signed by svccomm: its origin headers cannot be trusted */
	SVC_DLQ_NO_ORIGIN,  /* no original exchange or routing key */
	SVC_DLQ_TRUNCATED,  /* the body was cut when it was dead-lettered */
	SVC_DLQ_UNROUTABLE, /* the copy was returned: no queue bound for it */
	SVC_DLQ_REFUSED,    /* the copy was nacked by the broker */
};

/* A short text for an outcome ("replayed", "not signed by svccomm ..."). */
const char *svc_dlq_outcome_text(enum svc_dlq_outcome o);

/* Connects to BROKER_CONNECTION_URL (and, with publish, a second connection in confirm mode)
 * and checks that the DLQ exists. Returns 0, SVC_EINVAL (QUEUE not set or too long),
 * SVC_EPROTO (no such queue: the consumer never ran), SVC_ECONN. Call svc_dlq_close() in every
 * case. */
int svc_dlq_open(struct svc_dlq *q, const struct svc_config *cfg, bool publish);
/* Closes the connections (unacked letters go back to the DLQ) and frees the buffers. */
void svc_dlq_close(struct svc_dlq *q);

/* Messages ready in the DLQ and its consumers. */
int svc_dlq_counts(struct svc_dlq *q, uint32_t *messages, uint32_t *consumers);

/* Calls fn for up to limit letters from the head of the DLQ (bodies cut to body_max bytes),
 * then puts them all back (nack, requeue): they keep their place, marked redelivered. *seen:
 * how many were shown. */
int svc_dlq_browse(struct svc_dlq *q, long limit, size_t body_max,
                   void (*fn)(void *ctx, const struct svc_dlq_letter *l), void *ctx, long *seen);

/* Replays the letters that were in the DLQ when called (only the one whose message_id is
 * only_id when not NULL) to their original exchange (or to_exchange when not NULL) and routing
 * key, with their properties and application headers but none of the x-svccomm-* or x-death
 * ones, so the consumer sees attempt 1. fn (may be NULL) hears of each letter taken and its
 * outcome. *replayed counts the confirmed copies even when an error stops the replay. */
int svc_dlq_replay(struct svc_dlq *q, const char *only_id, const char *to_exchange,
                   void (*fn)(void *ctx, const struct svc_dlq_letter *l, enum svc_dlq_outcome o),
                   void *ctx, long *replayed);

/* Deletes every ready letter of the DLQ; *purged: how many. */
int svc_dlq_purge(struct svc_dlq *q, uint32_t *purged);

#endif
