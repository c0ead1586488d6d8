/* Fuzz target: what a hostile broker sends a publisher in confirm mode, read by svccomm's
 * confirm path (svc_amqp_poll_confirms in amqp/publish.c): basic.ack and basic.nack, and
 * basic.return with its content header (the message_id and x-svccomm-seq the relay matches a
 * return by) and body frames. The input is appended raw after confirm.select-ok. */
#include <stdint.h>
#include <string.h>

#include "amqp/conn.h"
#include "support/amqp_peer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Every string of a return is a NUL-terminated copy of a shortstr. */
static void on_return(void *ctx, const struct svc_amqp_return *ret)
{
	(void)ctx;
	if (strlen(ret->exchange) > 255 || strlen(ret->routing_key) > 255 ||
	    (ret->message_id && strlen(ret->message_id) > 255) || strlen(ret->text) >= 800)
		__builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct peer_buf pb;
	struct svc_amqp_confirm out[64];

	if (size > 65536)
		return -1;
	pb.len = 0;
	peer_handshake_publisher(&pb);
	peer_raw(&pb, data, size);
	struct svc_amqp *c = peer_connect_publisher(&pb);
	if (!c)
		__builtin_trap();
	for (int i = 0; i < 1000; i++) {
		size_t n = 0;
		int rc = svc_amqp_poll_confirms(c, 0, out, 64, &n, on_return, NULL);
		if (n > 64)
			__builtin_trap();
		if (rc != 0 || (n == 0 && !svc_amqp_is_open(c)))
			break;
	}
	peer_drop(c);
	return 0;
}
