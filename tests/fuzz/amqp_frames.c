/* Fuzz target: frames from a hostile broker (or anything between it and svccomm) after a
 * normal handshake, read by svccomm's consume path (svc_amqp_consumer_next) through
 * rabbitmq-c's frame parser. The input is appended raw after basic.consume-ok. */
#include <stdint.h>
#include <string.h>

#include "amqp/consume.h"
#include "support/amqp_peer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct peer_buf pb;
	struct svc_amqp_consumer cs;
	struct svc_delivery d = {0};

	if (size > 65536)
		return -1;
	pb.len = 0;
	peer_handshake(&pb);
	peer_raw(&pb, data, size);
	struct svc_amqp *c = peer_connect(&pb, &cs);
	if (!c)
		__builtin_trap();
	/* Read deliveries the way the consumer does until the stream ends or breaks; a small
	 * body limit so both the kept and the drained path run. */
	for (int i = 0; i < 1000; i++) {
		int rc = svc_amqp_consumer_next(&cs, &d, 64, -1);
		if (rc != 0)
			break;
		/* an oversize body keeps at most a prefix: never more than the limit */
		if (d.body[d.body_len] != '\0' || (d.oversize && d.body_len > 64) ||
		    (!d.oversize && d.body_len != d.body_size))
			__builtin_trap();
		for (size_t h = 0; h < d.n_headers; h++)
			if (strlen(d.headers[h].key) > 255 ||
			    d.headers[h].str[d.headers[h].len] != '\0')
				__builtin_trap();
		svc_delivery_header(&d, "x-svccomm-attempt");
		svc_amqp_consumer_ack(&cs, d.tag, false);
	}
	svc_delivery_release(&d);
	peer_drop(c);
	return 0;
}
