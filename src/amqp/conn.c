/* amqp_conn: one RabbitMQ connection with one channel (rabbitmq-c 0.11). See amqp/conn.h.
 *
 * Confirms are read from frames: rabbitmq-c 0.11 has no confirm API. basic.ack / basic.nack
 * carry the publish sequence number (delivery tag) and the multiple flag. A basic.return is
 * followed by its content header and body frames, which are read (and dropped) here before the
 * next method; the returned message is identified by the "x-svccomm-seq" header this module
 * adds to every mandatory publish in confirm mode (RabbitMQ sends the return before the ack of
 * the same message, so the caller learns "returned" before "acked"). */
#include "amqp/conn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>

#include "util/log.h"
#include "util/error.h"

#define SEQ_HEADER      "x-svccomm-seq"
#define FRAME_MAX       131072
#define CONNECT_TIMEOUT 10
#define RPC_TIMEOUT     30

struct svc_amqp {
	amqp_connection_state_t st;
	amqp_socket_t *sock;
	amqp_channel_t ch;
	bool open;
	bool confirm;      /* channel in confirm mode */
	uint64_t next_seq; /* last publish sequence number handed out */
	int reply_code;    /* code of the last channel/connection close from the broker */
	char err[512];
	amqp_table_entry_t *entries; /* reusable header entries for publish */
	size_t entries_cap;
};

struct svc_amqp *svc_amqp_new(void)
{
	struct svc_amqp *c = calloc(1, sizeof(*c));

	if (c)
		c->ch = 1;
	return c;
}

static void drop_state(struct svc_amqp *c)
{
	if (c->st)
		amqp_destroy_connection(c->st);
	c->st = NULL;
	c->sock = NULL;
	c->open = false;
	c->confirm = false;
	c->next_seq = 0;
}

void svc_amqp_free(struct svc_amqp *c)
{
	if (!c)
		return;
	svc_amqp_close(c);
	free(c->entries);
	free(c);
}

bool svc_amqp_is_open(const struct svc_amqp *c)
{
	return c && c->st && c->open;
}

const char *svc_amqp_error(const struct svc_amqp *c)
{
	return c->err;
}

int svc_amqp_reply_code(const struct svc_amqp *c)
{
	return c->reply_code;
}

amqp_connection_state_t svc_amqp_state(struct svc_amqp *c)
{
	return c->st;
}

amqp_channel_t svc_amqp_channel(const struct svc_amqp *c)
{
	return c->ch;
}

int svc_amqp_fd(const struct svc_amqp *c)
{
	return svc_amqp_is_open(c) ? amqp_get_sockfd(c->st) : -1;
}

bool svc_amqp_buffered(const struct svc_amqp *c)
{
	return svc_amqp_is_open(c) && (amqp_frames_enqueued(c->st) || amqp_data_in_buffer(c->st));
}

bool svc_amqp_confirm_mode(const struct svc_amqp *c)
{
	return c->confirm;
}

static int lib_error(struct svc_amqp *c, const char *what, int status)
{
	snprintf(c->err, sizeof(c->err), "%s: %s", what, amqp_error_string2(status));
	c->open = false;
	return SVC_ECONN;
}

static void copy_text(char *dst, size_t dstsz, const char *what, int code, amqp_bytes_t text)
{
	snprintf(dst, dstsz, "%s: %d %.*s", what, code, (int)text.len, (const char *)text.bytes);
}

static int reopen_channel(struct svc_amqp *c);

/* The broker closed the channel: answer close-ok, reopen it (confirm mode again if it was on)
 * and report SVC_EPROTO; a failure to reopen makes the connection unusable (SVC_ECONN). */
static int on_channel_close(struct svc_amqp *c, const amqp_channel_close_t *m)
{
	amqp_channel_close_ok_t ok = {0};

	c->reply_code = m->reply_code;
	copy_text(c->err, sizeof(c->err), "channel closed by the broker", m->reply_code,
	          m->reply_text);
	if (amqp_send_method(c->st, c->ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok) != AMQP_STATUS_OK) {
		c->open = false;
		return SVC_ECONN;
	}
	if (reopen_channel(c) != 0)
		return SVC_ECONN;
	return SVC_EPROTO;
}

static int on_connection_close(struct svc_amqp *c, const amqp_connection_close_t *m)
{
	amqp_connection_close_ok_t ok = {0};

	c->reply_code = m->reply_code;
	copy_text(c->err, sizeof(c->err), "connection closed by the broker", m->reply_code,
	          m->reply_text);
	amqp_send_method(c->st, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
	c->open = false;
	return SVC_ECONN;
}

/* Classifies an RPC reply: 0, SVC_EPROTO (channel closed by the broker and reopened) or
 * SVC_ECONN. */
static int rpc_result(struct svc_amqp *c, amqp_rpc_reply_t r, const char *what)
{
	switch (r.reply_type) {
	case AMQP_RESPONSE_NORMAL:
		return 0;
	case AMQP_RESPONSE_NONE:
		snprintf(c->err, sizeof(c->err), "%s: missing RPC reply", what);
		c->open = false;
		return SVC_ECONN;
	case AMQP_RESPONSE_LIBRARY_EXCEPTION:
		return lib_error(c, what, r.library_error);
	case AMQP_RESPONSE_SERVER_EXCEPTION:
		if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
			int rc = on_channel_close(c, r.reply.decoded);
			char tmp[sizeof(c->err)];

			snprintf(tmp, sizeof(tmp), "%s", c->err);
			snprintf(c->err, sizeof(c->err), "%.64s: %.400s", what, tmp);
			return rc;
		}
		if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
			char tmp[sizeof(c->err)];

			on_connection_close(c, r.reply.decoded);
			snprintf(tmp, sizeof(tmp), "%s", c->err);
			snprintf(c->err, sizeof(c->err), "%.64s: %.400s", what, tmp);
			return SVC_ECONN;
		}
		snprintf(c->err, sizeof(c->err), "%s: unexpected method 0x%08x", what,
		         (unsigned)r.reply.id);
		c->open = false;
		return SVC_ECONN;
	}
	c->open = false;
	return SVC_ECONN;
}

static int reopen_channel(struct svc_amqp *c)
{
	bool confirm = c->confirm;

	c->confirm = false;
	c->next_seq = 0;
	amqp_channel_open(c->st, c->ch);
	if (rpc_result(c, amqp_get_rpc_reply(c->st), "channel.open") != 0) {
		c->open = false;
		return SVC_ECONN;
	}
	if (confirm && svc_amqp_confirm_select(c) != 0) {
		c->open = false;
		return SVC_ECONN;
	}
	return 0;
}

int svc_amqp_connect(struct svc_amqp *c, const char *url, int heartbeat, const char *conn_name)
{
	struct amqp_connection_info info;
	struct timeval tv = {.tv_sec = CONNECT_TIMEOUT};
	struct timeval rpc = {.tv_sec = RPC_TIMEOUT};
	amqp_table_entry_t props_e[2], caps_e[2];
	amqp_table_t props = {.num_entries = 0, .entries = props_e};
	char *copy = NULL;
	int rc = SVC_ECONN, st;

	svc_amqp_close(c);
	c->err[0] = '\0';
	c->reply_code = 0;
	copy = strdup(url ? url : "");
	if (!copy) {
		snprintf(c->err, sizeof(c->err), "out of memory");
		return SVC_ENOMEM;
	}
	amqp_default_connection_info(&info);
	if (amqp_parse_url(copy, &info) != AMQP_STATUS_OK) {
		snprintf(c->err, sizeof(c->err), "invalid broker URL");
		rc = SVC_EINVAL;
		goto out;
	}
	c->st = amqp_new_connection();
	if (!c->st) {
		snprintf(c->err, sizeof(c->err), "out of memory");
		rc = SVC_ENOMEM;
		goto out;
	}
	c->sock = info.ssl ? amqp_ssl_socket_new(c->st) : amqp_tcp_socket_new(c->st);
	if (!c->sock) {
		snprintf(c->err, sizeof(c->err), "cannot create the socket");
		goto fail;
	}
	st = amqp_socket_open_noblock(c->sock, info.host, info.port, &tv);
	if (st != AMQP_STATUS_OK) {
		snprintf(c->err, sizeof(c->err), "cannot connect to %s:%d: %s", info.host,
		         info.port, amqp_error_string2(st));
		goto fail;
	}
	amqp_set_handshake_timeout(c->st, &tv);
	amqp_set_rpc_timeout(c->st, &rpc);
	/* rabbitmq-c merges these capabilities with its own (authentication_failure_close);
	 * consumer_cancel_notify makes the broker tell a consumer when its queue is deleted. */
	caps_e[0].key = amqp_cstring_bytes("consumer_cancel_notify");
	caps_e[0].value.kind = AMQP_FIELD_KIND_BOOLEAN;
	caps_e[0].value.value.boolean = 1;
	caps_e[1].key = amqp_cstring_bytes("publisher_confirms");
	caps_e[1].value.kind = AMQP_FIELD_KIND_BOOLEAN;
	caps_e[1].value.value.boolean = 1;
	props_e[0].key = amqp_cstring_bytes("capabilities");
	props_e[0].value.kind = AMQP_FIELD_KIND_TABLE;
	props_e[0].value.value.table.num_entries = 2;
	props_e[0].value.value.table.entries = caps_e;
	props.num_entries = 1;
	if (conn_name && *conn_name) {
		props_e[1].key = amqp_cstring_bytes("connection_name");
		props_e[1].value.kind = AMQP_FIELD_KIND_UTF8;
		props_e[1].value.value.bytes = amqp_cstring_bytes(conn_name);
		props.num_entries = 2;
	}
	c->open = true;
	if (rpc_result(c,
	               amqp_login_with_properties(c->st, info.vhost, 0, FRAME_MAX,
	                                          heartbeat > 0 ? heartbeat : 0, &props,
	                                          AMQP_SASL_METHOD_PLAIN, info.user, info.password),
	               "login") != 0)
		goto fail;
	amqp_channel_open(c->st, c->ch);
	if (rpc_result(c, amqp_get_rpc_reply(c->st), "channel.open") != 0)
		goto fail;
	rc = 0;
	goto out;
fail:
	drop_state(c);
out:
	if (copy) {
		/* The copy holds the decoded password. A memset right before free() is a dead store
		 * the compiler may drop (GCC does at -O2); explicit_bzero is never dropped. */
		explicit_bzero(copy, strlen(url ? url : ""));
		free(copy);
	}
	return rc;
}

void svc_amqp_close(struct svc_amqp *c)
{
	if (!c || !c->st)
		return;
	if (c->open) {
		struct timeval tv = {.tv_sec = 2};

		/* Do not wait long for a close-ok from a broker that may be gone. */
		amqp_set_rpc_timeout(c->st, &tv);
		amqp_channel_close(c->st, c->ch, AMQP_REPLY_SUCCESS);
		amqp_connection_close(c->st, AMQP_REPLY_SUCCESS);
	}
	drop_state(c);
}

int svc_amqp_declare_exchange(struct svc_amqp *c, const struct svc_amqp_exchange *ex, bool passive)
{
	if (!svc_amqp_is_open(c))
		return SVC_ECONN;
	amqp_exchange_declare(c->st, c->ch, amqp_cstring_bytes(ex->name),
	                      amqp_cstring_bytes(ex->type ? ex->type : "topic"), passive, 1, 0, 0,
	                      amqp_empty_table);
	return rpc_result(c, amqp_get_rpc_reply(c->st), "exchange.declare");
}

int svc_amqp_declare_queue(struct svc_amqp *c, const char *queue, amqp_table_t args, bool passive)
{
	if (!svc_amqp_is_open(c))
		return SVC_ECONN;
	amqp_queue_declare(c->st, c->ch, amqp_cstring_bytes(queue), passive, 1, 0, 0, args);
	return rpc_result(c, amqp_get_rpc_reply(c->st), "queue.declare");
}

int svc_amqp_bind(struct svc_amqp *c, const char *queue, const char *exchange, const char *key)
{
	if (!svc_amqp_is_open(c))
		return SVC_ECONN;
	amqp_queue_bind(c->st, c->ch, amqp_cstring_bytes(queue), amqp_cstring_bytes(exchange),
	                amqp_cstring_bytes(key), amqp_empty_table);
	return rpc_result(c, amqp_get_rpc_reply(c->st), "queue.bind");
}

int svc_amqp_confirm_select(struct svc_amqp *c)
{
	if (!svc_amqp_is_open(c))
		return SVC_ECONN;
	amqp_confirm_select(c->st, c->ch);
	int rc = rpc_result(c, amqp_get_rpc_reply(c->st), "confirm.select");
	if (rc == 0) {
		c->confirm = true;
		c->next_seq = 0;
	}
	return rc;
}

uint64_t svc_amqp_last_seq(const struct svc_amqp *c)
{
	return c->next_seq;
}

static bool shortstr_ok(const char *s)
{
	return !s || strlen(s) <= 255;
}

int svc_amqp_publish(struct svc_amqp *c, const char *exchange, const char *routing_key,
                     const void *body, size_t len, const struct svc_amqp_props *props,
                     bool mandatory, uint64_t *seq)
{
	amqp_basic_properties_t p;
	size_t nh = props ? props->n_headers : 0;
	bool add_seq = c->confirm && mandatory;
	int st;

	if (!svc_amqp_is_open(c)) {
		snprintf(c->err, sizeof(c->err), "not connected");
		return SVC_ECONN;
	}
	/* Checked before anything is sent: a frame that cannot be encoded would otherwise leave
	 * half a message on the wire. */
	if (!shortstr_ok(exchange) || !shortstr_ok(routing_key)) {
		snprintf(c->err, sizeof(c->err), "exchange or routing key longer than 255 bytes");
		return SVC_EINVAL;
	}
	if (props && (!shortstr_ok(props->message_id) || !shortstr_ok(props->correlation_id) ||
	              !shortstr_ok(props->app_id) || !shortstr_ok(props->content_type))) {
		snprintf(c->err, sizeof(c->err), "a message property is longer than 255 bytes");
		return SVC_EINVAL;
	}
	if (nh + 1 > c->entries_cap) {
		size_t cap = (nh + 1) * 2;
		amqp_table_entry_t *e = realloc(c->entries, cap * sizeof(*e));

		if (!e) {
			snprintf(c->err, sizeof(c->err), "out of memory");
			return SVC_ENOMEM;
		}
		c->entries = e;
		c->entries_cap = cap;
	}
	memset(&p, 0, sizeof(p));
	p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG;
	p.content_type = amqp_cstring_bytes(props && props->content_type ? props->content_type
	                                                                 : "application/json");
	if (!props || props->persistent) {
		p._flags |= AMQP_BASIC_DELIVERY_MODE_FLAG;
		p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
	}
	if (props && props->message_id) {
		p._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
		p.message_id = amqp_cstring_bytes(props->message_id);
	}
	if (props && props->correlation_id) {
		p._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
		p.correlation_id = amqp_cstring_bytes(props->correlation_id);
	}
	if (props && props->app_id) {
		p._flags |= AMQP_BASIC_APP_ID_FLAG;
		p.app_id = amqp_cstring_bytes(props->app_id);
	}
	if (props && props->timestamp > 0) {
		p._flags |= AMQP_BASIC_TIMESTAMP_FLAG;
		p.timestamp = (uint64_t)props->timestamp;
	}
	if (nh || add_seq) {
		size_t k = 0;

		for (size_t i = 0; i < nh; i++) {
			amqp_table_entry_t *e = &c->entries[k++];

			if (!shortstr_ok(props->headers[i].key)) {
				snprintf(c->err, sizeof(c->err),
				         "header name longer than 255 bytes");
				return SVC_EINVAL;
			}
			e->key = amqp_cstring_bytes(props->headers[i].key);
			e->value.kind = AMQP_FIELD_KIND_UTF8;
			e->value.value.bytes = amqp_cstring_bytes(props->headers[i].value);
		}
		if (add_seq) {
			amqp_table_entry_t *e = &c->entries[k++];

			e->key = amqp_cstring_bytes(SEQ_HEADER);
			e->value.kind = AMQP_FIELD_KIND_I64;
			e->value.value.i64 = (int64_t)(c->next_seq + 1);
		}
		p._flags |= AMQP_BASIC_HEADERS_FLAG;
		p.headers.num_entries = (int)k;
		p.headers.entries = c->entries;
	}
	st = amqp_basic_publish(c->st, c->ch, amqp_cstring_bytes(exchange),
	                        amqp_cstring_bytes(routing_key), mandatory, 0, &p,
	                        (amqp_bytes_t){.len = len, .bytes = (void *)body});
	if (st != AMQP_STATUS_OK) {
		/* Whatever failed, the wire may hold part of a message: the connection is done. */
		lib_error(c, "basic.publish", st);
		if (st == AMQP_STATUS_BAD_AMQP_DATA || st == AMQP_STATUS_TABLE_TOO_BIG ||
		    st == AMQP_STATUS_INVALID_PARAMETER)
			return SVC_EPROTO;
		return SVC_ECONN;
	}
	if (c->confirm) {
		c->next_seq++;
		if (seq)
			*seq = c->next_seq;
	} else if (seq) {
		*seq = 0;
	}
	return 0;
}

/* Reads the content header and body frames that follow a basic.return and reports it. */
static int read_return(struct svc_amqp *c, const amqp_basic_return_t *m, svc_amqp_return_fn fn,
                       void *ctx)
{
	amqp_frame_t f;
	uint64_t seq = 0, size, got = 0;
	char text[256];
	int st;

	snprintf(text, sizeof(text), "%d %.*s", m->reply_code, (int)m->reply_text.len,
	         (const char *)m->reply_text.bytes);
	st = amqp_simple_wait_frame(c->st, &f);
	if (st != AMQP_STATUS_OK)
		return lib_error(c, "basic.return", st);
	if (f.frame_type != AMQP_FRAME_HEADER) {
		snprintf(c->err, sizeof(c->err), "basic.return: expected a content header");
		c->open = false;
		return SVC_ECONN;
	}
	size = f.payload.properties.body_size;
	{
		const amqp_basic_properties_t *p = f.payload.properties.decoded;

		if (p && (p->_flags & AMQP_BASIC_HEADERS_FLAG)) {
			for (int i = 0; i < p->headers.num_entries; i++) {
				const amqp_table_entry_t *e = &p->headers.entries[i];

				if (e->key.len == sizeof(SEQ_HEADER) - 1 &&
				    memcmp(e->key.bytes, SEQ_HEADER, e->key.len) == 0 &&
				    e->value.kind == AMQP_FIELD_KIND_I64)
					seq = (uint64_t)e->value.value.i64;
			}
		}
	}
	while (got < size) {
		st = amqp_simple_wait_frame(c->st, &f);
		if (st != AMQP_STATUS_OK)
			return lib_error(c, "basic.return", st);
		if (f.frame_type != AMQP_FRAME_BODY) {
			snprintf(c->err, sizeof(c->err), "basic.return: expected a body frame");
			c->open = false;
			return SVC_ECONN;
		}
		got += f.payload.body_fragment.len;
	}
	if (fn)
		fn(ctx, seq, text);
	return 0;
}

int svc_amqp_poll_confirms(struct svc_amqp *c, int timeout_ms, struct svc_amqp_confirm *out,
                           size_t max, size_t *n, svc_amqp_return_fn on_return, void *ctx)
{
	bool first = true, got_any = false;
	int rc = 0;

	*n = 0;
	if (!svc_amqp_is_open(c))
		return SVC_ECONN;
	while (*n < max) {
		amqp_frame_t f;
		struct timeval tv = {0, 0};
		int st;

		if (!first && !amqp_frames_enqueued(c->st) && !amqp_data_in_buffer(c->st))
			break;
		if (first && timeout_ms < 0 && !got_any) {
			st = amqp_simple_wait_frame(c->st, &f);
		} else {
			if (first && timeout_ms > 0) {
				tv.tv_sec = timeout_ms / 1000;
				tv.tv_usec = (timeout_ms % 1000) * 1000;
			}
			st = amqp_simple_wait_frame_noblock(c->st, &f, &tv);
		}
		first = false;
		if (st == AMQP_STATUS_TIMEOUT)
			break;
		if (st != AMQP_STATUS_OK) {
			rc = lib_error(c, "reading confirms", st);
			goto out;
		}
		if (f.frame_type != AMQP_FRAME_METHOD)
			continue;
		switch (f.payload.method.id) {
		case AMQP_BASIC_ACK_METHOD: {
			const amqp_basic_ack_t *a = f.payload.method.decoded;

			out[*n].delivery_tag = a->delivery_tag;
			out[*n].multiple = a->multiple;
			out[*n].ack = true;
			(*n)++;
			got_any = true;
			break;
		}
		case AMQP_BASIC_NACK_METHOD: {
			const amqp_basic_nack_t *a = f.payload.method.decoded;

			out[*n].delivery_tag = a->delivery_tag;
			out[*n].multiple = a->multiple;
			out[*n].ack = false;
			(*n)++;
			got_any = true;
			break;
		}
		case AMQP_BASIC_RETURN_METHOD: {
			amqp_basic_return_t m = *(amqp_basic_return_t *)f.payload.method.decoded;

			rc = read_return(c, &m, on_return, ctx);
			if (rc)
				goto out;
			/* a return alone is not a confirm: keep waiting when blocking */
			if (timeout_ms < 0 && !got_any)
				first = true;
			break;
		}
		case AMQP_CHANNEL_CLOSE_METHOD:
			rc = on_channel_close(c, f.payload.method.decoded);
			goto out;
		case AMQP_CONNECTION_CLOSE_METHOD:
			rc = on_connection_close(c, f.payload.method.decoded);
			goto out;
		default:
			break; /* nothing else is expected on a publishing channel */
		}
		/* In blocking mode keep the "first" wait until a confirm arrived. */
		if (timeout_ms < 0 && !got_any)
			first = true;
	}
out:
	if (c->st && c->open && !amqp_frames_enqueued(c->st))
		amqp_maybe_release_buffers(c->st);
	if (rc)
		return rc;
	return *n > 0 ? 0 : SVC_ETIMEOUT;
}

struct single_return {
	uint64_t seq;
	bool returned;
};

static void note_return(void *ctx, uint64_t seq, const char *text)
{
	struct single_return *r = ctx;

	(void)text;
	if (seq == r->seq)
		r->returned = true;
}

static int64_t now_ms(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

int svc_amqp_publish_confirmed(struct svc_amqp *c, const char *exchange, const char *routing_key,
                               const void *body, size_t len, const struct svc_amqp_props *props,
                               bool mandatory, int timeout_ms)
{
	struct single_return r = {0};
	struct svc_amqp_confirm conf[64];
	int64_t deadline = now_ms() + (timeout_ms < 0 ? 0 : timeout_ms);
	int rc;

	if (!c->confirm && (rc = svc_amqp_confirm_select(c)) != 0)
		return rc;
	rc = svc_amqp_publish(c, exchange, routing_key, body, len, props, mandatory, &r.seq);
	if (rc)
		return rc;
	for (;;) {
		size_t n = 0;
		int64_t left = deadline - now_ms();

		if (timeout_ms >= 0 && left <= 0) {
			snprintf(c->err, sizeof(c->err), "no publisher confirm within %d ms",
			         timeout_ms);
			return SVC_ETIMEOUT;
		}
		rc = svc_amqp_poll_confirms(c, timeout_ms < 0 ? -1 : (int)left, conf, 64, &n,
		                            note_return, &r);
		if (rc == SVC_ETIMEOUT)
			continue;
		if (rc)
			return rc;
		for (size_t i = 0; i < n; i++) {
			bool covers = conf[i].delivery_tag == r.seq ||
			              (conf[i].multiple && conf[i].delivery_tag >= r.seq);

			if (!covers)
				continue;
			if (!conf[i].ack) {
				snprintf(c->err, sizeof(c->err), "the broker refused the message");
				return SVC_ENACK;
			}
			if (r.returned) {
				snprintf(c->err, sizeof(c->err),
				         "unroutable: returned by the broker");
				return SVC_ERETURNED;
			}
			return 0;
		}
	}
}
