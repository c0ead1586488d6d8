/* bench_common: connection, topology and option helpers for the raw ceiling programs. */
#include "bench_common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <amqp_tcp_socket.h>

double bench_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double bench_wall(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct bench_schedule bench_schedule(double rate, double delay_s)
{
	return (struct bench_schedule){bench_now() + delay_s, rate};
}

double bench_wait_due(const struct bench_schedule *s, long i)
{
	double due = s->start + (double)i / s->rate;
	struct timespec t = {(time_t)due, (long)((due - (double)(time_t)due) * 1e9)};

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL) == EINTR) {
	}
	return bench_now() - due;
}

bool bench_ident_ok(const char *s, size_t max)
{
	size_t n = strlen(s);

	if (n == 0 || n > max || !((*s >= 'a' && *s <= 'z') || *s == '_'))
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
			return false;
	return true;
}

long bench_parse_long(const char *opt, const char *val)
{
	char *end = NULL;
	long v;

	errno = 0;
	v = val ? strtol(val, &end, 10) : -1;
	if (!val || errno || end == val || *end || v <= 0) {
		fprintf(stderr, "%s: expected a positive integer, got '%s'\n", opt,
		        val ? val : "(nothing)");
		exit(2);
	}
	return v;
}

bool bench_name_ok(const char *s)
{
	if (!s || !*s || strlen(s) > 200)
		return false;
	for (; *s; s++) {
		char ch = *s;

		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' || ch == '-'))
			return false;
	}
	return true;
}

int bench_rpc_ok(amqp_rpc_reply_t r, const char *what, char *err, size_t errlen)
{
	switch (r.reply_type) {
	case AMQP_RESPONSE_NORMAL:
		return 0;
	case AMQP_RESPONSE_NONE:
		snprintf(err, errlen, "%s: missing RPC reply", what);
		break;
	case AMQP_RESPONSE_LIBRARY_EXCEPTION:
		snprintf(err, errlen, "%s: %s", what, amqp_error_string2(r.library_error));
		break;
	case AMQP_RESPONSE_SERVER_EXCEPTION:
		if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
			amqp_connection_close_t *m = r.reply.decoded;

			snprintf(err, errlen, "%s: connection closed by broker: %u %.*s", what,
			         m->reply_code, (int)m->reply_text.len,
			         (const char *)m->reply_text.bytes);
		} else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
			amqp_channel_close_t *m = r.reply.decoded;

			snprintf(err, errlen, "%s: channel closed by broker: %u %.*s", what,
			         m->reply_code, (int)m->reply_text.len,
			         (const char *)m->reply_text.bytes);
		} else {
			snprintf(err, errlen, "%s: unexpected server method 0x%08x", what,
			         r.reply.id);
		}
		break;
	}
	return -1;
}

int bench_connect(const char *url, amqp_connection_state_t *out, char *err, size_t errlen)
{
	struct amqp_connection_info ci;
	amqp_connection_state_t conn = NULL;
	amqp_socket_t *sock;
	char *copy = strdup(url);
	int rc = -1, st;

	*out = NULL;
	if (!copy) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	amqp_default_connection_info(&ci);
	if (amqp_parse_url(copy, &ci) != AMQP_STATUS_OK) {
		snprintf(err, errlen, "cannot parse the broker URL");
		goto out;
	}
	if (ci.ssl) {
		snprintf(err, errlen, "amqps is not supported by the benchmark");
		goto out;
	}
	conn = amqp_new_connection();
	sock = conn ? amqp_tcp_socket_new(conn) : NULL;
	if (!sock) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	st = amqp_socket_open(sock, ci.host, ci.port);
	if (st != AMQP_STATUS_OK) {
		snprintf(err, errlen, "connect %s:%d: %s", ci.host, ci.port,
		         amqp_error_string2(st));
		goto out;
	}
	if (bench_rpc_ok(amqp_login(conn, ci.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, ci.user,
	                            ci.password),
	                 "login", err, errlen))
		goto out;
	amqp_channel_open(conn, 1);
	if (bench_rpc_ok(amqp_get_rpc_reply(conn), "channel.open", err, errlen))
		goto out;
	*out = conn;
	conn = NULL;
	rc = 0;
out:
	if (conn)
		amqp_destroy_connection(conn);
	free(copy);
	return rc;
}

void bench_close(amqp_connection_state_t conn)
{
	if (!conn)
		return;
	amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
	amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(conn);
}

int bench_declare(amqp_connection_state_t conn, const char *exchange, const char *queue,
                  const char *qtype, bool fresh, bool purge, char *err, size_t errlen)
{
	amqp_table_entry_t entry;
	amqp_table_t args = {0, &entry};

	if (strcmp(qtype, "v2") == 0) {
		entry.key = amqp_cstring_bytes("x-queue-version");
		entry.value.kind = AMQP_FIELD_KIND_I32;
		entry.value.value.i32 = 2;
		args.num_entries = 1;
	} else if (strcmp(qtype, "quorum") == 0) {
		entry.key = amqp_cstring_bytes("x-queue-type");
		entry.value.kind = AMQP_FIELD_KIND_UTF8;
		entry.value.value.bytes = amqp_cstring_bytes("quorum");
		args.num_entries = 1;
	} else if (strcmp(qtype, "v1") != 0) {
		snprintf(err, errlen, "unknown queue type '%s' (v1, v2, quorum)", qtype);
		return -1;
	}
	if (fresh && queue && *queue) {
		amqp_queue_delete(conn, 1, amqp_cstring_bytes(queue), 0, 0);
		if (bench_rpc_ok(amqp_get_rpc_reply(conn), "queue.delete", err, errlen))
			return -1;
	}
	if (exchange && *exchange) {
		amqp_exchange_declare(conn, 1, amqp_cstring_bytes(exchange),
		                      amqp_cstring_bytes("topic"), 0, 1, 0, 0, amqp_empty_table);
		if (bench_rpc_ok(amqp_get_rpc_reply(conn), "exchange.declare", err, errlen))
			return -1;
	}
	if (!queue || !*queue)
		return 0; /* the exchange only */
	amqp_queue_declare(conn, 1, amqp_cstring_bytes(queue), 0, 1, 0, 0, args);
	if (bench_rpc_ok(amqp_get_rpc_reply(conn), "queue.declare", err, errlen))
		return -1;
	if (exchange && *exchange) {
		amqp_queue_bind(conn, 1, amqp_cstring_bytes(queue), amqp_cstring_bytes(exchange),
		                amqp_cstring_bytes("#"), amqp_empty_table);
		if (bench_rpc_ok(amqp_get_rpc_reply(conn), "queue.bind", err, errlen))
			return -1;
	}
	if (purge) {
		amqp_queue_purge(conn, 1, amqp_cstring_bytes(queue));
		if (bench_rpc_ok(amqp_get_rpc_reply(conn), "queue.purge", err, errlen))
			return -1;
	}
	return 0;
}

long bench_queue_count(amqp_connection_state_t conn, const char *queue, char *err, size_t errlen)
{
	amqp_queue_declare_ok_t *ok;

	ok = amqp_queue_declare(conn, 1, amqp_cstring_bytes(queue), 1, 0, 0, 0, amqp_empty_table);
	if (bench_rpc_ok(amqp_get_rpc_reply(conn), "queue.declare passive", err, errlen))
		return -1;
	return (long)ok->message_count;
}
