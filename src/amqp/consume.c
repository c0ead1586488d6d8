/* amqp_consume: the consume side of a connection; see amqp/consume.h. */
#include "amqp/consume.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <amqp_framing.h>

#include "util/error.h"

#define GET_TIMEOUT_MS 30000 /* the answer to one basic.get */

static void set_err(struct svc_amqp_consumer *cs, const char *what, int status)
{
	snprintf(cs->err, sizeof(cs->err), "%s: %s", what, amqp_error_string2(status));
}

/* A read, write or protocol error: the connection is only good for destroying (see
 * svc_amqp_mark_broken). Returns SVC_ECONN. */
static int broken(struct svc_amqp_consumer *cs)
{
	svc_amqp_mark_broken(cs->conn);
	return SVC_ECONN;
}

/* Classifies the reply of the last synchronous call. */
static int rpc_check(struct svc_amqp_consumer *cs, const char *what)
{
	amqp_rpc_reply_t r = amqp_get_rpc_reply(svc_amqp_state(cs->conn));
	switch (r.reply_type) {
	case AMQP_RESPONSE_NORMAL:
		return 0;
	case AMQP_RESPONSE_LIBRARY_EXCEPTION:
		set_err(cs, what, r.library_error);
		return broken(cs);
	case AMQP_RESPONSE_SERVER_EXCEPTION:
		if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
			amqp_channel_close_t *m = r.reply.decoded;
			snprintf(cs->err, sizeof(cs->err), "%s: channel closed: %u %.*s", what,
			         m->reply_code, (int)m->reply_text.len,
			         (char *)m->reply_text.bytes);
			amqp_channel_close_ok_t ok = {0};
			amqp_send_method(svc_amqp_state(cs->conn), svc_amqp_channel(cs->conn),
			                 AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
			return SVC_EPROTO;
		}
		if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
			amqp_connection_close_t *m = r.reply.decoded;
			snprintf(cs->err, sizeof(cs->err), "%s: connection closed: %u %.*s", what,
			         m->reply_code, (int)m->reply_text.len,
			         (char *)m->reply_text.bytes);
			amqp_connection_close_ok_t ok = {0};
			amqp_send_method(svc_amqp_state(cs->conn), 0,
			                 AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
			return broken(cs);
		}
		snprintf(cs->err, sizeof(cs->err), "%s: unexpected method 0x%08x", what,
		         r.reply.id);
		return SVC_EPROTO;
	default:
		snprintf(cs->err, sizeof(cs->err), "%s: no reply", what);
		return broken(cs);
	}
}

int svc_amqp_consumer_qos(struct svc_amqp_consumer *cs, struct svc_amqp *conn, uint16_t prefetch)
{
	cs->conn = conn;
	amqp_basic_qos(svc_amqp_state(conn), svc_amqp_channel(conn), 0, prefetch, 0);
	return rpc_check(cs, "basic.qos");
}

int svc_amqp_consumer_start(struct svc_amqp_consumer *cs, struct svc_amqp *conn, const char *queue)
{
	cs->conn = conn;
	cs->active = false;
	cs->cancelled = false;
	cs->tag[0] = '\0';
	amqp_basic_consume_ok_t *ok = amqp_basic_consume(
	    svc_amqp_state(conn), svc_amqp_channel(conn), amqp_cstring_bytes(queue),
	    amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
	int rc = rpc_check(cs, "basic.consume");
	if (rc)
		return rc;
	size_t n =
	    ok->consumer_tag.len < sizeof(cs->tag) - 1 ? ok->consumer_tag.len : sizeof(cs->tag) - 1;
	memcpy(cs->tag, ok->consumer_tag.bytes, n);
	cs->tag[n] = '\0';
	cs->active = true;
	return 0;
}

int svc_amqp_consumer_cancel(struct svc_amqp_consumer *cs)
{
	if (!cs->active)
		return 0;
	cs->active = false;
	amqp_basic_cancel(svc_amqp_state(cs->conn), svc_amqp_channel(cs->conn),
	                  amqp_cstring_bytes(cs->tag));
	return rpc_check(cs, "basic.cancel");
}

static int send_status(struct svc_amqp_consumer *cs, const char *what, int status)
{
	if (status == AMQP_STATUS_OK)
		return 0;
	set_err(cs, what, status);
	return broken(cs);
}

int svc_amqp_consumer_ack(struct svc_amqp_consumer *cs, uint64_t tag, bool multiple)
{
	return send_status(
	    cs, "basic.ack",
	    amqp_basic_ack(svc_amqp_state(cs->conn), svc_amqp_channel(cs->conn), tag, multiple));
}

int svc_amqp_consumer_nack(struct svc_amqp_consumer *cs, uint64_t tag, bool multiple, bool requeue)
{
	return send_status(cs, "basic.nack",
	                   amqp_basic_nack(svc_amqp_state(cs->conn), svc_amqp_channel(cs->conn),
	                                   tag, multiple, requeue));
}

void svc_delivery_release(struct svc_delivery *d)
{
	free(d->arena);
	free(d->headers);
	free(d->body);
	memset(d, 0, sizeof(*d));
}

const struct svc_delivery_header *svc_delivery_header(const struct svc_delivery *d, const char *key)
{
	size_t klen = strlen(key);
	for (size_t i = 0; i < d->n_headers; i++) {
		const char *k = d->headers[i].key;
		if (strncmp(k, key, klen) == 0 && k[klen] == '\0')
			return &d->headers[i];
	}
	return NULL;
}

/* Space a header value's string form takes in the arena. */
static size_t value_space(const amqp_field_value_t *v)
{
	switch (v->kind) {
	case AMQP_FIELD_KIND_UTF8:
	case AMQP_FIELD_KIND_BYTES:
		return v->value.bytes.len + 1;
	default:
		return 40;
	}
}

static char *arena_put(char **cur, const void *bytes, size_t len)
{
	char *out = *cur;
	if (len)
		memcpy(out, bytes, len);
	out[len] = '\0';
	*cur += len + 1;
	return out;
}

static const char *put_bytes(char **cur, amqp_bytes_t b)
{
	return arena_put(cur, b.bytes, b.len);
}

static void copy_value(struct svc_delivery_header *h, const amqp_field_value_t *v, char **cur)
{
	char tmp[40];
	int n = -1;
	h->kind = 'i';
	h->i = 0;
	h->f = 0;
	h->b = false;
	switch (v->kind) {
	case AMQP_FIELD_KIND_UTF8:
	case AMQP_FIELD_KIND_BYTES:
		h->kind = 's';
		h->len = v->value.bytes.len;
		h->str = put_bytes(cur, v->value.bytes);
		return;
	case AMQP_FIELD_KIND_BOOLEAN:
		h->kind = 'b';
		h->b = v->value.boolean != 0;
		n = snprintf(tmp, sizeof(tmp), "%s", h->b ? "true" : "false");
		break;
	case AMQP_FIELD_KIND_I8:
		h->i = v->value.i8;
		break;
	case AMQP_FIELD_KIND_U8:
		h->i = v->value.u8;
		break;
	case AMQP_FIELD_KIND_I16:
		h->i = v->value.i16;
		break;
	case AMQP_FIELD_KIND_U16:
		h->i = v->value.u16;
		break;
	case AMQP_FIELD_KIND_I32:
		h->i = v->value.i32;
		break;
	case AMQP_FIELD_KIND_U32:
		h->i = v->value.u32;
		break;
	case AMQP_FIELD_KIND_I64:
		h->i = v->value.i64;
		break;
	case AMQP_FIELD_KIND_U64:
	case AMQP_FIELD_KIND_TIMESTAMP:
		h->i = (long long)v->value.u64;
		break;
	case AMQP_FIELD_KIND_F32:
		h->kind = 'f';
		h->f = v->value.f32;
		n = snprintf(tmp, sizeof(tmp), "%.17g", h->f);
		break;
	case AMQP_FIELD_KIND_F64:
		h->kind = 'f';
		h->f = v->value.f64;
		n = snprintf(tmp, sizeof(tmp), "%.17g", h->f);
		break;
	default:
		h->kind = 'n';
		n = 0;
		tmp[0] = '\0';
		break;
	}
	if (h->kind == 'i')
		n = snprintf(tmp, sizeof(tmp), "%lld", h->i);
	if (n < 0)
		n = 0;
	h->len = (size_t)n;
	h->str = arena_put(cur, tmp, (size_t)n);
}

static int grow(void **buf, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return 0;
	size_t ncap = *cap ? *cap : 64;
	while (ncap < need)
		ncap *= 2;
	void *p = realloc(*buf, ncap * elem);
	if (!p)
		return SVC_ENOMEM;
	*buf = p;
	*cap = ncap;
	return 0;
}

#define PROP(flag) (props->_flags & (flag))

/* Copies the deliver method and the content header into d's own buffers. */
static int copy_meta(struct svc_delivery *d, const amqp_basic_deliver_t *m,
                     const amqp_basic_properties_t *props)
{
	size_t need = m->exchange.len + m->routing_key.len + 2;
	const amqp_bytes_t *strs[6] = {
	    PROP(AMQP_BASIC_CONTENT_TYPE_FLAG) ? &props->content_type : NULL,
	    PROP(AMQP_BASIC_MESSAGE_ID_FLAG) ? &props->message_id : NULL,
	    PROP(AMQP_BASIC_CORRELATION_ID_FLAG) ? &props->correlation_id : NULL,
	    PROP(AMQP_BASIC_APP_ID_FLAG) ? &props->app_id : NULL,
	    PROP(AMQP_BASIC_REPLY_TO_FLAG) ? &props->reply_to : NULL,
	    PROP(AMQP_BASIC_TYPE_FLAG) ? &props->type : NULL,
	};
	for (int i = 0; i < 6; i++)
		need += strs[i] ? strs[i]->len + 1 : 0;
	size_t nh = PROP(AMQP_BASIC_HEADERS_FLAG) ? (size_t)props->headers.num_entries : 0;
	for (size_t i = 0; i < nh; i++) {
		need += props->headers.entries[i].key.len + 1;
		need += value_space(&props->headers.entries[i].value);
	}
	if (grow((void **)&d->arena, &d->arena_cap, need, 1) ||
	    grow((void **)&d->headers, &d->hdr_cap, nh ? nh : 1, sizeof(*d->headers)))
		return SVC_ENOMEM;

	char *cur = d->arena;
	d->tag = m->delivery_tag;
	d->redelivered = m->redelivered != 0;
	d->exchange = put_bytes(&cur, m->exchange);
	d->routing_key = put_bytes(&cur, m->routing_key);
	const char **dst[6] = {&d->content_type, &d->message_id, &d->correlation_id,
	                       &d->app_id,       &d->reply_to,   &d->type};
	for (int i = 0; i < 6; i++)
		*dst[i] = strs[i] ? put_bytes(&cur, *strs[i]) : NULL;
	d->has_timestamp = PROP(AMQP_BASIC_TIMESTAMP_FLAG) != 0;
	d->timestamp = d->has_timestamp ? (int64_t)props->timestamp : 0;
	d->delivery_mode = PROP(AMQP_BASIC_DELIVERY_MODE_FLAG) ? props->delivery_mode : 0;
	d->n_headers = nh;
	for (size_t i = 0; i < nh; i++) {
		const amqp_table_entry_t *e = &props->headers.entries[i];
		d->headers[i].key = put_bytes(&cur, e->key);
		copy_value(&d->headers[i], &e->value, &cur);
	}
	return 0;
}

/* Waits for one frame; timeout_ms < 0 blocks (rabbitmq-c still enforces heartbeats). */
static int wait_frame(struct svc_amqp_consumer *cs, amqp_frame_t *f, int timeout_ms)
{
	amqp_connection_state_t st = svc_amqp_state(cs->conn);
	int status;
	if (timeout_ms < 0) {
		status = amqp_simple_wait_frame(st, f);
	} else {
		struct timeval tv = {.tv_sec = timeout_ms / 1000,
		                     .tv_usec = (timeout_ms % 1000) * 1000};
		status = amqp_simple_wait_frame_noblock(st, f, &tv);
	}
	if (status == AMQP_STATUS_TIMEOUT) {
		/* nothing to read: the moment to see whether the broker went silent */
		if (svc_amqp_check_alive(cs->conn) != 0) {
			snprintf(cs->err, sizeof(cs->err), "%s", svc_amqp_error(cs->conn));
			return SVC_ECONN;
		}
		return SVC_ETIMEOUT;
	}
	if (status == AMQP_STATUS_HEARTBEAT_TIMEOUT) {
		set_err(cs, "reading a frame: heartbeat timeout", status);
		return broken(cs);
	}
	if (status == AMQP_STATUS_BAD_AMQP_DATA) {
		/* most likely a frame over the size this connection reads (see README, Security) */
		set_err(cs, "reading a frame (too large, or not AMQP)", status);
		return SVC_ECONN;
	}
	if (status != AMQP_STATUS_OK) {
		set_err(cs, "reading a frame", status);
		return SVC_ECONN;
	}
	return 0;
}

/* Handles a method that is not a delivery. Returns 1 to keep reading, or an error. */
static int other_method(struct svc_amqp_consumer *cs, amqp_frame_t *f)
{
	amqp_connection_state_t st = svc_amqp_state(cs->conn);
	switch (f->payload.method.id) {
	case AMQP_BASIC_CANCEL_METHOD: {
		amqp_basic_cancel_t *m = f->payload.method.decoded;
		cs->active = false;
		cs->cancelled = true;
		snprintf(cs->err, sizeof(cs->err), "the broker cancelled consumer %.*s",
		         (int)m->consumer_tag.len, (char *)m->consumer_tag.bytes);
		if (!m->nowait) {
			amqp_basic_cancel_ok_t ok = {.consumer_tag = m->consumer_tag};
			amqp_send_method(st, f->channel, AMQP_BASIC_CANCEL_OK_METHOD, &ok);
		}
		return SVC_EPROTO;
	}
	case AMQP_CHANNEL_CLOSE_METHOD: {
		amqp_channel_close_t *m = f->payload.method.decoded;
		snprintf(cs->err, sizeof(cs->err), "channel closed by the broker: %u %.*s",
		         m->reply_code, (int)m->reply_text.len, (char *)m->reply_text.bytes);
		amqp_channel_close_ok_t ok = {0};
		amqp_send_method(st, f->channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
		cs->active = false;
		return SVC_ECONN;
	}
	case AMQP_CONNECTION_CLOSE_METHOD: {
		amqp_connection_close_t *m = f->payload.method.decoded;
		snprintf(cs->err, sizeof(cs->err), "connection closed by the broker: %u %.*s",
		         m->reply_code, (int)m->reply_text.len, (char *)m->reply_text.bytes);
		amqp_connection_close_ok_t ok = {0};
		amqp_send_method(st, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
		cs->active = false;
		return SVC_ECONN;
	}
	default:
		/* connection.blocked/unblocked, a late consume-ok, ...: nothing to do */
		return 1;
	}
}

/* Reads the content header and body frames of a delivery whose method was m. */
static int read_content(struct svc_amqp_consumer *cs, struct svc_delivery *d,
                        const amqp_basic_deliver_t *m, size_t max_body)
{
	amqp_connection_state_t st = svc_amqp_state(cs->conn);
	amqp_channel_t ch = svc_amqp_channel(cs->conn);
	amqp_frame_t f;
	int rc;

	rc = wait_frame(cs, &f, -1);
	if (rc)
		return rc;
	if (f.frame_type != AMQP_FRAME_HEADER || f.channel != ch) {
		snprintf(cs->err, sizeof(cs->err), "expected a content header, got frame type %u",
		         f.frame_type);
		return SVC_ECONN;
	}
	/* rabbitmq-c decodes the properties of the class the header names: only the basic
	 * class's are an amqp_basic_properties_t (a header of another class read as one points
	 * its fields at garbage) */
	if (f.payload.properties.class_id != AMQP_BASIC_CLASS) {
		snprintf(cs->err, sizeof(cs->err),
		         "expected a content header of class basic (60), got class %u",
		         f.payload.properties.class_id);
		return SVC_ECONN;
	}
	const amqp_basic_properties_t *props = f.payload.properties.decoded;
	uint64_t size = f.payload.properties.body_size;
	if (copy_meta(d, m, props)) {
		snprintf(cs->err, sizeof(cs->err), "out of memory copying a delivery");
		return SVC_ENOMEM;
	}
	d->body_size = size;
	d->oversize = size > max_body;
	d->body_len = 0;
	/* an oversize body keeps only a prefix, for the dead letter */
	size_t keep = !d->oversize                          ? (size_t)size
	              : max_body < SVC_DELIVERY_KEPT_PREFIX ? max_body
	                                                    : SVC_DELIVERY_KEPT_PREFIX;
	if (grow((void **)&d->body, &d->body_cap, keep + 1, 1) != 0) {
		snprintf(cs->err, sizeof(cs->err), "out of memory for a %" PRIu64 " byte body",
		         size);
		return SVC_ENOMEM;
	}
	amqp_maybe_release_buffers_on_channel(st, ch);

	uint64_t got = 0;
	while (got < size) {
		rc = wait_frame(cs, &f, -1);
		if (rc)
			return rc;
		if (f.frame_type != AMQP_FRAME_BODY || f.channel != ch) {
			snprintf(cs->err, sizeof(cs->err), "expected a body frame, got type %u",
			         f.frame_type);
			return SVC_ECONN;
		}
		size_t n = f.payload.body_fragment.len;
		if (got + n > size) {
			snprintf(cs->err, sizeof(cs->err), "body longer than announced");
			return SVC_ECONN;
		}
		if (got < keep)
			memcpy(d->body + got, f.payload.body_fragment.bytes,
			       n < keep - got ? n : (size_t)(keep - got));
		got += n;
		/* Drop the frame at once so a drained body never accumulates. */
		amqp_maybe_release_buffers_on_channel(st, ch);
	}
	d->body_len = keep;
	d->body[d->body_len] = '\0';
	return 0;
}

static int next_delivery(struct svc_amqp_consumer *cs, struct svc_delivery *d, size_t max_body,
                         int timeout_ms)
{
	amqp_frame_t f;
	int rc;

	for (;;) {
		rc = wait_frame(cs, &f, timeout_ms);
		if (rc)
			return rc;
		if (f.frame_type != AMQP_FRAME_METHOD)
			continue; /* stray content of something we did not ask for */
		if (f.payload.method.id == AMQP_BASIC_DELIVER_METHOD)
			break;
		rc = other_method(cs, &f);
		if (rc != 1)
			return rc;
	}
	/* The deliver method lives in the frame pool: keep it until the header is copied. */
	amqp_basic_deliver_t deliver = *(amqp_basic_deliver_t *)f.payload.method.decoded;

	return read_content(cs, d, &deliver, max_body);
}

/* basic.get and its answer; see svc_amqp_get(). */
static int get_one(struct svc_amqp_consumer *cs, const char *queue, struct svc_delivery *d,
                   size_t max_body)
{
	amqp_connection_state_t st = svc_amqp_state(cs->conn);
	amqp_basic_get_t m = {.queue = amqp_cstring_bytes(queue), .no_ack = 0};
	amqp_frame_t f;
	int status, rc;

	status = amqp_send_method(st, svc_amqp_channel(cs->conn), AMQP_BASIC_GET_METHOD, &m);
	if (status != AMQP_STATUS_OK) {
		set_err(cs, "basic.get", status);
		return SVC_ECONN;
	}
	for (;;) {
		rc = wait_frame(cs, &f, GET_TIMEOUT_MS);
		if (rc == SVC_ETIMEOUT) {
			snprintf(cs->err, sizeof(cs->err), "basic.get: no answer within %d s",
			         GET_TIMEOUT_MS / 1000);
			return SVC_ECONN;
		}
		if (rc)
			return rc;
		if (f.frame_type != AMQP_FRAME_METHOD)
			continue;
		if (f.payload.method.id == AMQP_BASIC_GET_EMPTY_METHOD)
			return 0;
		if (f.payload.method.id == AMQP_BASIC_GET_OK_METHOD)
			break;
		rc = other_method(cs, &f);
		if (rc != 1)
			return rc;
	}
	const amqp_basic_get_ok_t *ok = f.payload.method.decoded;
	amqp_basic_deliver_t deliver = {.delivery_tag = ok->delivery_tag,
	                                .redelivered = ok->redelivered,
	                                .exchange = ok->exchange,
	                                .routing_key = ok->routing_key};

	rc = read_content(cs, d, &deliver, max_body);
	return rc ? rc : 1;
}

int svc_amqp_get(struct svc_amqp_consumer *cs, struct svc_amqp *conn, const char *queue,
                 struct svc_delivery *d, size_t max_body)
{
	int rc;

	cs->conn = conn;
	rc = get_one(cs, queue, d, max_body);
	if (rc < 0)
		svc_amqp_mark_broken(cs->conn); /* as for a delivery: the stream is not trusted */
	return rc;
}

int svc_amqp_consumer_next(struct svc_amqp_consumer *cs, struct svc_delivery *d, size_t max_body,
                           int timeout_ms)
{
	int rc = next_delivery(cs, d, max_body, timeout_ms);
	/* Any error but "nothing came" or a cancel leaves the frame stream where no further read
	 * is safe (a refused frame, half a delivery). */
	if (rc != 0 && rc != SVC_ETIMEOUT && !cs->cancelled)
		svc_amqp_mark_broken(cs->conn);
	return rc;
}
