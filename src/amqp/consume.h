/* amqp_consume: the consume side of one svc_amqp connection (rabbitmq-c 0.11).
 *
 * basic.qos, basic.consume, reading deliveries frame by frame, ack/nack and
 * basic.cancel in both directions. A delivery is read method -> content header -> body
 * frames; the declared body size is checked against a limit BEFORE any body byte is kept,
 * and an oversize body is drained frame by frame, only its first SVC_DELIVERY_KEPT_PREFIX
 * bytes kept.
 *
 * Ownership: struct svc_delivery owns every string and the body it points to (copied out
 * of rabbitmq-c's frame pool, which is released after each delivery). Its buffers are
 * reused by the next svc_amqp_consumer_next() call, so a delivery is valid until then.
 * Release it with svc_delivery_release(). struct svc_amqp_consumer does not own the
 * struct svc_amqp connection it reads from. */
#ifndef SVC_AMQP_CONSUME_H
#define SVC_AMQP_CONSUME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "amqp/conn.h"

/* One AMQP header of a delivery. Every value also has a string form (str, len), used when
 * the message is republished (svc_amqp_publish takes string headers only). */
struct svc_delivery_header {
	const char *key;
	char kind; /* 's' string/bytes, 'i' integer, 'f' float, 'b' boolean, 'n' other (table,
	              array, void, decimal): str is "" */
	const char *str;
	size_t len;
	long long i;
	double f;
	bool b;
};

/* Bytes of an oversize body that are kept (for its dead letter); the rest is drained. */
#define SVC_DELIVERY_KEPT_PREFIX 4096

struct svc_delivery {
	uint64_t tag;
	bool redelivered;
	const char *exchange;
	const char *routing_key;
	/* properties: NULL (or false) when the message did not carry them */
	const char *content_type;
	const char *message_id;
	const char *correlation_id;
	const char *app_id;
	const char *reply_to;
	const char *type;
	int64_t timestamp;
	bool has_timestamp;
	uint8_t delivery_mode;
	struct svc_delivery_header *headers;
	size_t n_headers;
	/* body: NUL-terminated copy of body_len bytes; when oversize, only its first bytes (at
	 * most SVC_DELIVERY_KEPT_PREFIX and max_body) */
	char *body;
	size_t body_len;
	uint64_t body_size; /* size announced in the content header */
	bool oversize;      /* body_size > the limit: the rest of the body was drained */

	/* private: reusable buffers */
	char *arena;
	size_t arena_cap;
	size_t hdr_cap;
	size_t body_cap;
};

/* Frees the buffers of a delivery (safe on a zeroed struct) and zeroes it. */
void svc_delivery_release(struct svc_delivery *d);
/* Looks up a header by key; NULL when absent. */
const struct svc_delivery_header *svc_delivery_header(const struct svc_delivery *d,
                                                      const char *key);

struct svc_amqp_consumer {
	struct svc_amqp *conn; /* not owned */
	char tag[128];         /* consumer tag given by the broker */
	bool active;           /* basic.consume-ok received, no cancel since */
	bool cancelled;        /* the broker cancelled the consumer (queue deleted, ...) */
	char err[256];         /* text of the last error */
};

/* Sets basic.qos prefetch_count on the connection's channel. 0 or SVC_ECONN/SVC_EPROTO. */
int svc_amqp_consumer_qos(struct svc_amqp_consumer *cs, struct svc_amqp *conn, uint16_t prefetch);
/* Starts consuming queue (manual acks). 0, SVC_EPROTO (refused, e.g. no such queue; the
 * channel is then closed by the broker: treat the connection as lost) or SVC_ECONN. */
int svc_amqp_consumer_start(struct svc_amqp_consumer *cs, struct svc_amqp *conn, const char *queue);
/* Reads the next delivery into d. timeout_ms: how long to wait for its first frame (0 = only
 * what is already available, < 0 = until one arrives); once a delivery started its frames are
 * read to the end. Bodies larger than max_body are drained, keeping a prefix (d->oversize). Returns
 * 0, SVC_ETIMEOUT (nothing came), SVC_EPROTO with cs->cancelled set when the broker cancelled the
 * consumer, or SVC_ECONN (connection or channel lost; text in cs->err). */
int svc_amqp_consumer_next(struct svc_amqp_consumer *cs, struct svc_delivery *d, size_t max_body,
                           int timeout_ms);
/* Takes one message from queue with basic.get (to be acked or nacked with the calls below,
 * on the same connection) into d, read like a delivery. Returns 1 (a message in d), 0 (the
 * queue is empty) or SVC_ECONN (the connection is then unusable: a missing queue closes the
 * channel too). For the operator's commands (dlq list, replay), not for consuming. */
int svc_amqp_get(struct svc_amqp_consumer *cs, struct svc_amqp *conn, const char *queue,
                 struct svc_delivery *d, size_t max_body);
/* Acks tag (and, with multiple, every earlier unacked tag); 0 or SVC_ECONN. */
int svc_amqp_consumer_ack(struct svc_amqp_consumer *cs, uint64_t tag, bool multiple);
/* Nacks tag (multiple as for ack), requeueing it or letting the broker drop or dead-letter it;
 * 0 or SVC_ECONN. */
int svc_amqp_consumer_nack(struct svc_amqp_consumer *cs, uint64_t tag, bool multiple, bool requeue);
/* Cancels the consumer (basic.cancel and its -ok). Deliveries arriving meanwhile are left
 * unacked: they return to the queue when the channel closes. */
int svc_amqp_consumer_cancel(struct svc_amqp_consumer *cs);

#endif
