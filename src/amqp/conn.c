/* conn: one RabbitMQ connection with one channel (rabbitmq-c 0.11): connect, close, RPC
 * replies, channel re-open, declarations. Publishing and confirms are in publish.c. See
 * amqp/conn.h. */
#include "amqp/conn.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>

#include "amqp/internal.h"
#include "util/log.h"
#include "util/error.h"

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
	c->raw = false;
	c->corked = false;
	c->out_len = 0;
	c->open = false;
	c->confirm = false;
	c->next_seq = 0;
	c->node[0] = '\0';
}

void svc_amqp_free(struct svc_amqp *c)
{
	if (!c)
		return;
	svc_amqp_close(c);
	free(c->entries);
	free(c->out);
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

const char *svc_amqp_node(const struct svc_amqp *c)
{
	return c->node;
}

int svc_amqp_reply_code(const struct svc_amqp *c)
{
	return c->reply_code;
}

amqp_connection_state_t svc_amqp_state(struct svc_amqp *c)
{
	if (c->out_len)
		svc_amqp_flush_out(c); /* a failure marks it not open: the next call reports it */
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

void svc_amqp_mark_broken(struct svc_amqp *c)
{
	c->open = false;
}

int svc_amqp_read_frame_max(struct svc_amqp *c, int frame_max)
{
	if (!svc_amqp_is_open(c))
		return SVC_ECONN;
	/* Only the local limit changes (the broker was told FRAME_MAX at login): rabbitmq-c
	 * checks each incoming frame against it and sizes outgoing body frames by it, so this is
	 * for a connection that publishes nothing. */
	int st = amqp_tune_connection(c->st, amqp_get_channel_max(c->st), frame_max,
	                              amqp_get_heartbeat(c->st));
	return st == AMQP_STATUS_OK ? 0 : svc_amqp_lib_error(c, "tuning the frame size", st);
}

int svc_amqp_lib_error(struct svc_amqp *c, const char *what, int status)
{
	if (status == AMQP_STATUS_TIMEOUT)
		snprintf(c->err, sizeof(c->err),
		         "%s: timed out: no answer from the broker within %d s", what, RPC_TIMEOUT);
	else if (status == AMQP_STATUS_HEARTBEAT_TIMEOUT)
		snprintf(c->err, sizeof(c->err), "%s: heartbeat timeout: the broker went silent",
		         what);
	else
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
 * and report SVC_EPROTO; a failure to reopen makes the connection unusable (SVC_ECONN), and so
 * does a close while reopening (no second reopen: a broker that answered every channel.open
 * with channel.close would recurse without end). */
int svc_amqp_on_channel_close(struct svc_amqp *c, const amqp_channel_close_t *m)
{
	amqp_channel_close_ok_t ok = {0};

	c->reply_code = m->reply_code;
	copy_text(c->err, sizeof(c->err), "channel closed by the broker", m->reply_code,
	          m->reply_text);
	if (amqp_send_method(c->st, c->ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok) != AMQP_STATUS_OK ||
	    c->reopening) {
		c->open = false;
		return SVC_ECONN;
	}
	if (reopen_channel(c) != 0)
		return SVC_ECONN;
	return SVC_EPROTO;
}

int svc_amqp_on_connection_close(struct svc_amqp *c, const amqp_connection_close_t *m)
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
		return svc_amqp_lib_error(c, what, r.library_error);
	case AMQP_RESPONSE_SERVER_EXCEPTION:
		if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
			int rc = svc_amqp_on_channel_close(c, r.reply.decoded);
			char tmp[sizeof(c->err)];

			snprintf(tmp, sizeof(tmp), "%s", c->err);
			snprintf(c->err, sizeof(c->err), "%.64s: %.400s", what, tmp);
			return rc;
		}
		if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
			char tmp[sizeof(c->err)];

			svc_amqp_on_connection_close(c, r.reply.decoded);
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
	int rc = 0;

	c->confirm = false;
	c->next_seq = 0;
	c->reopening = true;
	amqp_channel_open(c->st, c->ch);
	if (rpc_result(c, amqp_get_rpc_reply(c->st), "channel.open") != 0 ||
	    (confirm && svc_amqp_confirm_select(c) != 0)) {
		c->open = false;
		rc = SVC_ECONN;
	}
	c->reopening = false;
	return rc;
}

/* Client properties for connection.start-ok. rabbitmq-c merges these capabilities with its
 * own (authentication_failure_close); consumer_cancel_notify makes the broker tell a consumer
 * when its queue is deleted. The entries live in the caller's arrays. */
static amqp_table_t client_properties(amqp_table_entry_t props_e[2], amqp_table_entry_t caps_e[2],
                                      const char *conn_name)
{
	amqp_table_t props = {.num_entries = 1, .entries = props_e};

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
	if (conn_name && *conn_name) {
		props_e[1].key = amqp_cstring_bytes("connection_name");
		props_e[1].value.kind = AMQP_FIELD_KIND_UTF8;
		props_e[1].value.value.bytes = amqp_cstring_bytes(conn_name);
		props.num_entries = 2;
	}
	return props;
}

/* Creates the connection state and opens its socket (TCP, or TLS for amqps://). */
static int open_socket(struct svc_amqp *c, const struct amqp_connection_info *info)
{
	struct timeval tv = {.tv_sec = CONNECT_TIMEOUT};
	struct timeval rpc = {.tv_sec = RPC_TIMEOUT};
	int st;

	c->st = amqp_new_connection();
	if (!c->st) {
		snprintf(c->err, sizeof(c->err), "out of memory");
		return SVC_ENOMEM;
	}
	c->sock = info->ssl ? amqp_ssl_socket_new(c->st) : amqp_tcp_socket_new(c->st);
	if (!c->sock) {
		snprintf(c->err, sizeof(c->err), "cannot create the socket");
		return SVC_ECONN;
	}
	if (info->ssl && svc_amqp_tls_setup(c, info->host) != 0)
		return SVC_ECONN;
	st = amqp_socket_open_noblock(c->sock, info->host, info->port, &tv);
	if (st != AMQP_STATUS_OK) {
		snprintf(c->err, sizeof(c->err), "cannot connect to %s:%d: %s", info->host,
		         info->port, amqp_error_string2(st));
		if (info->ssl)
			svc_amqp_tls_explain(c, info->host, info->port, st);
		return SVC_ECONN;
	}
	amqp_set_handshake_timeout(c->st, &tv);
	amqp_set_rpc_timeout(c->st, &rpc);
	c->raw = !info->ssl;
	return 0;
}

/* Logs in on the open socket and opens the channel. */
static int login(struct svc_amqp *c, const struct amqp_connection_info *info, int heartbeat,
                 const char *conn_name)
{
	amqp_table_entry_t props_e[2], caps_e[2];
	amqp_table_t props = client_properties(props_e, caps_e, conn_name);

	c->open = true;
	if (rpc_result(c,
	               amqp_login_with_properties(
	                   c->st, info->vhost, 0, FRAME_MAX, heartbeat > 0 ? heartbeat : 0, &props,
	                   AMQP_SASL_METHOD_PLAIN, info->user, info->password),
	               "login") != 0) {
		if (info->ssl)
			svc_amqp_tls_explain_io(c);
		return SVC_ECONN;
	}
	amqp_channel_open(c->st, c->ch);
	return rpc_result(c, amqp_get_rpc_reply(c->st), "channel.open") != 0 ? SVC_ECONN : 0;
}

int svc_amqp_connect(struct svc_amqp *c, const char *url, int heartbeat, const char *conn_name)
{
	struct amqp_connection_info info;
	char *copy;
	int rc;

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
	} else {
		rc = open_socket(c, &info);
		if (rc == 0 && (rc = login(c, &info, heartbeat, conn_name)) != 0) {
			size_t n = strlen(c->err);

			/* Name the target (never the password): a wrong vhost is a common cause. */
			snprintf(c->err + n, sizeof(c->err) - n, " (vhost \"%s\" on %s:%d as %s)",
			         info.vhost, info.host, info.port, info.user);
		}
		if (rc != 0)
			drop_state(c);
		else
			snprintf(c->node, sizeof(c->node),
			         strchr(info.host, ':') ? "[%s]:%d" : "%s:%d", info.host,
			         info.port);
	}
	/* The copy holds the decoded password. A memset right before free() is a dead store the
	 * compiler may drop (GCC does at -O2); explicit_bzero is never dropped. */
	explicit_bzero(copy, strlen(url ? url : ""));
	free(copy);
	return rc;
}

void svc_amqp_close(struct svc_amqp *c)
{
	if (!c || !c->st)
		return;
	/* After a read or protocol error (open is false) rabbitmq-c 0.11 may still hold the size
	 * of a frame it refused: any call that reads (channel.close waits for close-ok) then
	 * writes past a heap buffer. Such a connection is only destroyed. */
	if (c->open && c->out_len)
		svc_amqp_flush_out(c); /* a failure marks it not open */
	if (c->open) {
		struct timeval tv = {.tv_sec = 2};

		/* Do not wait long for a close-ok from a broker that may be gone. */
		amqp_set_rpc_timeout(c->st, &tv);
		amqp_channel_close(c->st, c->ch, AMQP_REPLY_SUCCESS);
		amqp_connection_close(c->st, AMQP_REPLY_SUCCESS);
	}
	drop_state(c);
}

/* The frames publish.c encoded and holds (see internal.h): sent with send() on rabbitmq-c's
 * socket, which is non-blocking, so a full socket buffer is waited for as rabbitmq-c's own
 * send does. */
int svc_amqp_flush_out(struct svc_amqp *c)
{
	size_t off = 0;
	int fd = c->st ? amqp_get_sockfd(c->st) : -1;

	while (off < c->out_len && fd >= 0) {
		ssize_t n = send(fd, c->out + off, c->out_len - off, MSG_NOSIGNAL);

		if (n >= 0) {
			off += (size_t)n;
			continue;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			/* rabbitmq-c keeps its socket non-blocking and waits as long in its own
			 * send */
			struct pollfd pfd = {.fd = fd, .events = POLLOUT};

			if (poll(&pfd, 1, -1) >= 0 || errno == EINTR)
				continue;
		}
		snprintf(c->err, sizeof(c->err), "send: %s", strerror(errno));
		break;
	}
	bool sent = off == c->out_len && fd >= 0;
	c->out_len = 0;
	if (!sent) {
		if (fd < 0)
			snprintf(c->err, sizeof(c->err), "not connected");
		c->open = false;
		return SVC_ECONN;
	}
	return 0;
}

int svc_amqp_declare_exchange(struct svc_amqp *c, const struct svc_amqp_exchange *ex, bool passive)
{
	if (!svc_amqp_is_open(c))
		return SVC_ECONN;
	if (c->out_len && svc_amqp_flush_out(c))
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
	if (c->out_len && svc_amqp_flush_out(c))
		return SVC_ECONN;
	amqp_queue_declare(c->st, c->ch, amqp_cstring_bytes(queue), passive, 1, 0, 0, args);
	return rpc_result(c, amqp_get_rpc_reply(c->st), "queue.declare");
}

int svc_amqp_queue_counts(struct svc_amqp *c, const char *queue, uint32_t *messages,
                          uint32_t *consumers)
{
	amqp_queue_declare_ok_t *ok;
	int rc;

	if (!svc_amqp_is_open(c))
		return SVC_ECONN;
	if (c->out_len && svc_amqp_flush_out(c))
		return SVC_ECONN;
	ok = amqp_queue_declare(c->st, c->ch, amqp_cstring_bytes(queue), 1, 0, 0, 0,
	                        amqp_empty_table);
	rc = rpc_result(c, amqp_get_rpc_reply(c->st), "queue.declare (passive)");
	if (rc == 0 && ok) {
		*messages = ok->message_count;
		*consumers = ok->consumer_count;
	}
	return rc;
}

int svc_amqp_queue_purge(struct svc_amqp *c, const char *queue, uint32_t *purged)
{
	amqp_queue_purge_ok_t *ok;
	int rc;

	if (!svc_amqp_is_open(c))
		return SVC_ECONN;
	if (c->out_len && svc_amqp_flush_out(c))
		return SVC_ECONN;
	ok = amqp_queue_purge(c->st, c->ch, amqp_cstring_bytes(queue));
	rc = rpc_result(c, amqp_get_rpc_reply(c->st), "queue.purge");
	if (rc == 0 && ok)
		*purged = ok->message_count;
	return rc;
}

int svc_amqp_bind(struct svc_amqp *c, const char *queue, const char *exchange, const char *key)
{
	if (!svc_amqp_is_open(c))
		return SVC_ECONN;
	if (c->out_len && svc_amqp_flush_out(c))
		return SVC_ECONN;
	amqp_queue_bind(c->st, c->ch, amqp_cstring_bytes(queue), amqp_cstring_bytes(exchange),
	                amqp_cstring_bytes(key), amqp_empty_table);
	return rpc_result(c, amqp_get_rpc_reply(c->st), "queue.bind");
}

int svc_amqp_confirm_select(struct svc_amqp *c)
{
	if (!svc_amqp_is_open(c))
		return SVC_ECONN;
	if (c->out_len && svc_amqp_flush_out(c))
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

int svc_amqp_check_alive(struct svc_amqp *c)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);

	if (!svc_amqp_is_open(c))
		return SVC_ECONN;
	int hb = amqp_get_heartbeat(c->st);
	if (hb <= 0 || getsockopt(amqp_get_sockfd(c->st), IPPROTO_TCP, TCP_INFO, &ti, &len) != 0)
		return 0;
	/* A live broker sends something at least once per HEARTBEAT (a heartbeat frame when it
	 * had nothing else to say for HEARTBEAT / 2); the kernel knows when data last came,
	 * whoever read it. Half an interval more covers scheduling. */
	double silent = ti.tcpi_last_data_recv / 1000.0;
	if (silent <= 1.5 * hb)
		return 0;
	snprintf(c->err, sizeof(c->err),
	         "heartbeat timeout: nothing from the broker for %.1f s (HEARTBEAT %d s)", silent,
	         hb);
	c->open = false;
	return SVC_ECONN;
}

int svc_amqp_send_heartbeat(struct svc_amqp *c)
{
	amqp_frame_t f = {.frame_type = AMQP_FRAME_HEARTBEAT, .channel = 0};

	if (!svc_amqp_is_open(c) || amqp_get_heartbeat(c->st) <= 0)
		return 0;
	if (c->out_len && svc_amqp_flush_out(c))
		return SVC_ECONN;
	return amqp_send_frame(c->st, &f) == AMQP_STATUS_OK ? 0 : SVC_ECONN;
}
