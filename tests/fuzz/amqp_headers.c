/* Fuzz target: the headers table of a delivery. The input is the table's encoded contents,
 * sent in a content header frame of an otherwise normal delivery; rabbitmq-c decodes it
 * (amqp_decode_properties -> amqp_decode_table, as for any message a sender publishes) and
 * svccomm copies it into struct svc_delivery (copy_meta in amqp/consume.c). The copy is
 * checked entry by entry against rabbitmq-c's own decoding of the same bytes. */
#include <stdint.h>
#include <string.h>

#include "amqp/consume.h"

#include <amqp_framing.h>

#include "support/amqp_peer.h"

/* Exported by librabbitmq 0.11, declared only in its private header. */
int amqp_decode_table(amqp_bytes_t encoded, amqp_pool_t *pool, amqp_table_t *output,
                      size_t *offset);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void put_be(uint8_t *p, uint64_t v, int n)
{
	for (int i = n - 1; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

/* deliver + content header (headers flag only, the table = the input) + a 5 byte body */
static void script(struct peer_buf *pb, const uint8_t *data, size_t size)
{
	amqp_basic_deliver_t dl = {.consumer_tag = amqp_cstring_bytes("ctag"),
	                           .delivery_tag = 1,
	                           .exchange = amqp_cstring_bytes("ex"),
	                           .routing_key = amqp_cstring_bytes("rk")};
	static uint8_t hdr[14 + 4 + 65536];

	peer_handshake(pb);
	peer_method(pb, 1, AMQP_BASIC_DELIVER_METHOD, &dl);
	put_be(hdr, AMQP_BASIC_CLASS, 2);
	put_be(hdr + 2, 0, 2);
	put_be(hdr + 4, 5, 8);
	put_be(hdr + 12, AMQP_BASIC_HEADERS_FLAG, 2);
	put_be(hdr + 14, size, 4);
	memcpy(hdr + 18, data, size);
	peer_frame(pb, AMQP_FRAME_HEADER, 1, hdr, 18 + size);
	peer_frame(pb, AMQP_FRAME_BODY, 1, "hello", 5);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct peer_buf pb;
	struct svc_amqp_consumer cs;
	struct svc_delivery d = {0};

	if (size > 65536)
		return -1;
	pb.len = 0;
	script(&pb, data, size);

	/* What rabbitmq-c makes of the table on its own: the reference for the copy. */
	amqp_pool_t pool;
	amqp_table_t ref = {0};
	uint8_t enc[4 + 65536];
	put_be(enc, size, 4);
	memcpy(enc + 4, data, size);
	size_t off = 0;
	init_amqp_pool(&pool, 4096);
	int dec =
	    amqp_decode_table((amqp_bytes_t){.len = size + 4, .bytes = enc}, &pool, &ref, &off);

	struct svc_amqp *c = peer_connect(&pb, &cs);
	if (!c)
		__builtin_trap();
	int rc = svc_amqp_consumer_next(&cs, &d, 1 << 20, -1);
	if ((rc == 0) != (dec == 0))
		__builtin_trap(); /* svccomm got a delivery iff rabbitmq-c can decode the table */
	if (rc == 0) {
		if (d.n_headers != (size_t)ref.num_entries || d.body_len != 5 ||
		    strcmp(d.body, "hello") != 0 || strcmp(d.routing_key, "rk") != 0)
			__builtin_trap();
		for (size_t i = 0; i < d.n_headers; i++) {
			const struct svc_delivery_header *h = &d.headers[i];
			const amqp_table_entry_t *e = &ref.entries[i];
			if (memcmp(h->key, e->key.bytes, e->key.len) != 0 ||
			    h->key[e->key.len] != '\0')
				__builtin_trap();
			if (h->str[h->len] != '\0')
				__builtin_trap();
			if (h->kind == 's' &&
			    (h->len != e->value.value.bytes.len ||
			     (h->len && memcmp(h->str, e->value.value.bytes.bytes, h->len) != 0)))
				__builtin_trap();
		}
		svc_delivery_header(&d, "x-svccomm-attempt");
	}
	empty_amqp_pool(&pool);
	svc_delivery_release(&d);
	peer_drop(c);
	return 0;
}
