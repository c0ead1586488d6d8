/* amqp_peer: a scripted broker on one end of a socketpair, for the AMQP fuzz targets.
 *
 * The broker's side is written in full before the client reads anything: the handshake a
 * real broker sends (connection.start, tune, open-ok, channel.open-ok, basic.qos-ok,
 * basic.consume-ok), then whatever bytes the target appends, then end of file. The client is
 * svccomm's own connection object with rabbitmq-c reading the other end, so everything after
 * the handshake goes through the same frame parser and consume path as in production. */
#ifndef SVC_FUZZ_AMQP_PEER_H
#define SVC_FUZZ_AMQP_PEER_H

#include <stddef.h>
#include <stdint.h>

#include "amqp/consume.h"

/* Bytes the broker sends; append frames with the peer_* helpers. */
struct peer_buf {
	uint8_t *b;
	size_t len, cap;
};

/* Appends one method frame (method encoded by rabbitmq-c) on channel ch. */
void peer_method(struct peer_buf *pb, uint16_t ch, amqp_method_number_t id, void *decoded);
/* Appends one frame of the given type with a raw payload. */
void peer_frame(struct peer_buf *pb, uint8_t type, uint16_t ch, const void *payload, size_t len);
/* Appends raw bytes. */
void peer_raw(struct peer_buf *pb, const void *bytes, size_t len);
/* Appends the handshake up to basic.consume-ok. */
void peer_handshake(struct peer_buf *pb);
/* Appends the handshake of a publisher: up to channel.open-ok, then confirm.select-ok. */
void peer_handshake_publisher(struct peer_buf *pb);

/* Connects an svc_amqp over a socketpair whose broker side has sent pb then EOF, and runs
 * svccomm's basic.qos and basic.consume on it. NULL when the handshake failed (a bug in the
 * harness: the script is fixed). */
struct svc_amqp *peer_connect(const struct peer_buf *pb, struct svc_amqp_consumer *cs);
/* The same for a publisher: svccomm's confirm.select instead of basic.qos and consume. */
struct svc_amqp *peer_connect_publisher(const struct peer_buf *pb);
/* Drops the connection without the polite close (what svccomm does after a read error) and
 * frees it. */
void peer_drop(struct svc_amqp *c);

/* libFuzzer's start-up hook: ignores SIGPIPE (see amqp_peer.c). */
int LLVMFuzzerInitialize(int *argc, char ***argv);

#endif
