/* amqp_conn: one RabbitMQ connection with one channel, on rabbitmq-c 0.11.
 *
 * Owns the socket, the amqp_connection_state_t and the text of the last error. It knows
 * AMQP only: no SQL, no Lua. Used by the relay (src/relay/: publish with pipelined
 * confirms) and by the consumer (src/consumer/: the consume side is in amqp/consume.c and
 * uses svc_amqp_state()).
 *
 * Error model: functions return 0 or a negative SVC_E* code. SVC_ECONN means the connection
 * is unusable (closed by the peer, socket error, heartbeat missed, channel closed): call
 * svc_amqp_close() and svc_amqp_connect() again. The text is in svc_amqp_error(). */
#ifndef SVC_AMQP_CONN_H
#define SVC_AMQP_CONN_H

#include <amqp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct svc_amqp;

/* One exchange to declare. */
struct svc_amqp_exchange {
	const char *name;
	const char *type; /* "topic", "direct", "fanout", "headers" */
};

/* A string-valued AMQP header (table entry). */
struct svc_amqp_header {
	const char *key;
	const char *value;
};

/* Message properties for svc_amqp_publish(). NULL fields are not sent. */
struct svc_amqp_props {
	const char *content_type; /* default (NULL) "application/json"; "" sends none */
	const char *message_id;
	const char *correlation_id;
	const char *app_id;
	const char *reply_to; /* a call's reply queue */
	const char *type;
	int64_t timestamp; /* seconds since the epoch; 0 = not sent */
	const struct svc_amqp_header *headers;
	size_t n_headers;
	bool persistent; /* delivery mode 2 */
	/* The caller tells a return of this message by its message_id, which no other message it
	 * has unconfirmed on this connection carries: no x-svccomm-seq header is added (see
	 * svc_amqp_return), so the broker gets the message with only the caller's headers. */
	bool return_by_message_id;
};

/* What the broker said about published messages, filled by svc_amqp_poll_confirms(). */
struct svc_amqp_confirm {
	uint64_t delivery_tag; /* publish sequence number (1, 2, ... per channel) */
	bool multiple;         /* applies to every tag <= delivery_tag not yet confirmed */
	bool ack;              /* basic.ack (true) or basic.nack (false) */
};

/* Called for a basic.return: the message with this publish sequence number was unroutable.
 * (rabbitmq-c 0.11 does not pair returns with tags; amqp_conn matches them through the
 * "x-svccomm-seq" header it adds to every mandatory publish in confirm mode, unless the
 * publish said return_by_message_id: seq is then 0 and message_id names the message.) */
struct svc_amqp_return {
	uint64_t seq;           /* publish sequence number, 0 when unknown */
	const char *message_id; /* the returned message's message_id, NULL when it had none */
	int reply_code;         /* 312 NO_ROUTE, ... */
	const char *exchange;   /* NUL-terminated copies, valid during the call */
	const char *routing_key;
	const char *text; /* "312 NO_ROUTE (exchange \"x\", routing key \"k\")" */
};
typedef void (*svc_amqp_return_fn)(void *ctx, const struct svc_amqp_return *ret);
/* (reply_text reads '312 NO_ROUTE (exchange "x", routing key "y")'.) */

/* TLS options of an amqps:// connection (BROKER_TLS); ignored for amqp://. The strings are
 * borrowed: they must outlive the connection object (the settings do). */
struct svc_amqp_tls {
	const char *ca_file;   /* trusted CAs (PEM); NULL = the system store SVC_AMQP_SYSTEM_CA */
	const char *cert_file; /* client certificate chain (PEM); NULL = none */
	const char *key_file;  /* its private key (PEM, not encrypted); with cert_file */
	bool verify_peer;      /* the broker's chain must lead to a trusted CA */
	bool verify_hostname;  /* ... and name the URL's host (DNS name or IP address SAN) */
};

/* Debian's bundle of the system's trusted CAs: rabbitmq-c loads no default trust store. */
#define SVC_AMQP_SYSTEM_CA "/etc/ssl/certs/ca-certificates.crt"

struct svc_amqp *svc_amqp_new(void);
void svc_amqp_free(struct svc_amqp *c);
/* Sets the TLS options of the next amqps:// connects (a copy of *tls; NULL = the defaults:
 * system store, peer and host name verified). */
void svc_amqp_set_tls(struct svc_amqp *c, const struct svc_amqp_tls *tls);

/* Connects to url (amqp:// or amqps://, parsed with amqp_parse_url), logs in, opens channel 1.
 * heartbeat in seconds (0 = off). Returns 0 or SVC_ECONN / SVC_EINVAL. */
int svc_amqp_connect(struct svc_amqp *c, const char *url, int heartbeat, const char *conn_name);
/* Closes politely when no error happened on it, else only destroys it; safe on a closed or
 * broken connection. */
void svc_amqp_close(struct svc_amqp *c);
/* Marks the connection broken after a read or protocol error seen outside this file (the
 * consume side): svc_amqp_close will then destroy it without reading from it. */
void svc_amqp_mark_broken(struct svc_amqp *c);
/* Raises the size of the frames this side accepts to frame_max (rabbitmq-c refuses a larger
 * one as "invalid AMQP data"); for a connection that only consumes. 0 or SVC_ECONN. */
int svc_amqp_read_frame_max(struct svc_amqp *c, int frame_max);
bool svc_amqp_is_open(const struct svc_amqp *c);
const char *svc_amqp_error(const struct svc_amqp *c);
/* "host:port" of the node this connection was opened to (an IPv6 host in brackets; never
 * the user or password), kept after an error until svc_amqp_close(); "" when not connected. */
const char *svc_amqp_node(const struct svc_amqp *c);
/* The underlying state for the consume loop (amqp/consume.c). */
amqp_connection_state_t svc_amqp_state(struct svc_amqp *c);
amqp_channel_t svc_amqp_channel(const struct svc_amqp *c);

/* Declares a durable exchange (passive: only checks it exists; a missing one is SVC_EPROTO and
 * reopens the channel so the connection stays usable). */
int svc_amqp_declare_exchange(struct svc_amqp *c, const struct svc_amqp_exchange *ex, bool passive);
/* Declares a durable queue with arguments (an amqp_table_t, may be amqp_empty_table). */
int svc_amqp_declare_queue(struct svc_amqp *c, const char *queue, amqp_table_t args, bool passive);
int svc_amqp_bind(struct svc_amqp *c, const char *queue, const char *exchange, const char *key);
/* The messages ready in queue and its consumers (queue.declare, passive). A missing queue is
 * SVC_EPROTO (404 in svc_amqp_reply_code()); the channel is reopened. */
int svc_amqp_queue_counts(struct svc_amqp *c, const char *queue, uint32_t *messages,
                          uint32_t *consumers);
/* Deletes the ready messages of queue (queue.purge; unacked ones stay); *purged: how many. */
int svc_amqp_queue_purge(struct svc_amqp *c, const char *queue, uint32_t *purged);

/* Puts the channel in confirm mode; publish sequence numbers restart at 1. */
int svc_amqp_confirm_select(struct svc_amqp *c);
/* Publishes one message (mandatory when asked). In confirm mode *seq receives its publish
 * sequence number. Does not wait for anything. Returns 0; SVC_EINVAL when a name or property
 * cannot be encoded (longer than 255 bytes: nothing was sent, the connection stays usable);
 * SVC_EPROTO when rabbitmq-c could not encode the message (the connection is closed: this
 * message can never be sent); SVC_ECONN. */
int svc_amqp_publish(struct svc_amqp *c, const char *exchange, const char *routing_key,
                     const void *body, size_t len, const struct svc_amqp_props *props,
                     bool mandatory, uint64_t *seq);
/* Corks the connection: the frames of the publishes that follow collect in memory (up to 64
 * KiB at a time) instead of leaving one message per send(). Every other call on c sends them
 * first; svc_amqp_uncork() sends what is left and returns 0 or SVC_ECONN. For a burst of
 * publishes with nothing in between, e.g. the relay's claimed batch. */
void svc_amqp_cork(struct svc_amqp *c);
int svc_amqp_uncork(struct svc_amqp *c);
/* Reads frames for up to timeout_ms (0 = only what is already buffered or readable now,
 * -1 = block until at least one confirm arrives) and reports each basic.ack/basic.nack to out
 * (up to max entries; *n receives the count) and each basic.return to on_return.
 * Returns 0, SVC_ETIMEOUT when nothing arrived in time, SVC_ECONN, or SVC_EPROTO when the
 * broker closed the channel (reply code in svc_amqp_reply_code(), text in svc_amqp_error()):
 * the channel has then been reopened, in confirm mode again with sequence numbers restarting
 * at 1, and every message not yet confirmed is lost. Entries already in out are valid in
 * every case. */
int svc_amqp_poll_confirms(struct svc_amqp *c, int timeout_ms, struct svc_amqp_confirm *out,
                           size_t max, size_t *n, svc_amqp_return_fn on_return, void *ctx);
/* Additions for the relay's event loop. */
/* The socket to poll() on, or -1 when not connected. */
int svc_amqp_fd(const struct svc_amqp *c);
/* True when frames are already buffered in rabbitmq-c: poll() on the socket would not see
 * them, so call svc_amqp_poll_confirms(c, 0, ...) first. */
bool svc_amqp_buffered(const struct svc_amqp *c);
/* Checks that the broker still talks: with heartbeats on, a connection on which nothing
 * arrived for 1.5 x HEARTBEAT is dead (marked broken, text in svc_amqp_error()). Call it
 * when the socket was just found empty. 0 or SVC_ECONN. */
int svc_amqp_check_alive(struct svc_amqp *c);
/* Sends one heartbeat frame (nothing when heartbeats are off). Only writes: it may be called
 * by another thread while the owner does not use the connection. 0 or SVC_ECONN. */
int svc_amqp_send_heartbeat(struct svc_amqp *c);
/* Reply code of the last channel.close / connection.close sent by the broker (0 = none):
 * e.g. 404 NOT_FOUND (no such exchange), 406 PRECONDITION_FAILED, 403 ACCESS_REFUSED. */
int svc_amqp_reply_code(const struct svc_amqp *c);
/* True when the channel is in confirm mode. */
bool svc_amqp_confirm_mode(const struct svc_amqp *c);
/* The publish sequence number of the last message published on this channel (0 = none). */
uint64_t svc_amqp_last_seq(const struct svc_amqp *c);

/* Publishes one message and waits (up to timeout_ms) for its confirm: 0 on ack, SVC_ENACK,
 * SVC_ERETURNED (when mandatory and unroutable), SVC_ETIMEOUT or SVC_ECONN. For rare
 * publishes (retries, dead letters); the relay uses the pipelined calls above. */
int svc_amqp_publish_confirmed(struct svc_amqp *c, const char *exchange, const char *routing_key,
                               const void *body, size_t len, const struct svc_amqp_props *props,
                               bool mandatory, int timeout_ms);

#endif
