/* Unit tests for the frames amqp/publish.c encodes itself: every message must reach the wire
 * byte for byte as rabbitmq-c's amqp_basic_publish writes it (the reference), whatever its
 * properties, headers and size, one at a time or corked. The connection is a socketpair: no
 * broker. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <amqp_tcp_socket.h>

#include "amqp/internal.h"
#include "util/error.h"

struct pair {
	struct svc_amqp *c;
	int peer; /* the broker's end */
};

static void open_pair(struct pair *p, int frame_max)
{
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	p->c = svc_amqp_new();
	assert_non_null(p->c);
	p->c->st = amqp_new_connection();
	p->c->sock = amqp_tcp_socket_new(p->c->st);
	assert_non_null(p->c->sock);
	amqp_tcp_socket_set_sockfd(p->c->sock, sv[0]);
	p->c->open = true;
	p->c->raw = true;
	p->peer = sv[1];
	/* The broker's protocol header, read, moves rabbitmq-c's state from "initial" to "idle",
	 * as a login would. */
	struct timeval tv = {0, 20000};
	amqp_frame_t f;
	assert_int_equal(write(p->peer, "AMQP\0\0\x09\x01", 8), 8);
	amqp_simple_wait_frame_noblock(p->c->st, &f, &tv);
	assert_int_equal(amqp_tune_connection(p->c->st, 0, frame_max, 0), AMQP_STATUS_OK);
}

static void close_pair(struct pair *p)
{
	svc_amqp_mark_broken(p->c); /* no channel.close on a socketpair */
	svc_amqp_free(p->c);
	close(p->peer);
}

/* Everything the peer has received so far (the writer is done: nothing is on its way). */
static size_t drain(int fd, unsigned char *buf, size_t cap)
{
	size_t got = 0;
	struct pollfd pfd = {.fd = fd, .events = POLLIN};

	while (got < cap && poll(&pfd, 1, 0) > 0) {
		ssize_t n = read(fd, buf + got, cap - got);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	return got;
}

struct msg {
	const char *exchange, *rk;
	size_t len;
	struct svc_amqp_props props;
	bool mandatory;
};

static unsigned char *body_of(size_t len)
{
	unsigned char *b = malloc(len ? len : 1);

	assert_non_null(b);
	for (size_t i = 0; i < len; i++)
		b[i] = (unsigned char)('a' + i % 26);
	return b;
}

/* Publishes msgs on p (corked when asked; uncorked, each must leave at once) and returns the
 * bytes the peer received, in buf. */
static size_t publish_all(struct pair *p, const struct msg *msgs, size_t n, bool cork,
                          unsigned char *buf, size_t cap)
{
	size_t got = 0;

	if (cork)
		svc_amqp_cork(p->c);
	for (size_t i = 0; i < n; i++) {
		unsigned char *body = body_of(msgs[i].len);
		assert_int_equal(svc_amqp_publish(p->c, msgs[i].exchange, msgs[i].rk, body,
		                                  msgs[i].len, &msgs[i].props, msgs[i].mandatory,
		                                  NULL),
		                 0);
		free(body);
		if (!cork)
			assert_int_equal(p->c->out_len, 0);
		got += drain(p->peer, buf + got, cap - got);
	}
	if (cork)
		assert_int_equal(svc_amqp_uncork(p->c), 0);
	return got + drain(p->peer, buf + got, cap - got);
}

/* The bytes of msgs sent through rabbitmq-c's own publish (raw off) and through the encoder
 * (raw on, corked or not) must be equal. */
static void same_bytes(const struct msg *msgs, size_t n, int frame_max, bool cork)
{
	size_t cap = 4 << 20;
	unsigned char *want = malloc(cap), *got = malloc(cap);
	struct pair a, b;

	assert_non_null(want);
	assert_non_null(got);
	open_pair(&a, frame_max);
	open_pair(&b, frame_max);
	a.c->raw = false;
	size_t nwant = publish_all(&a, msgs, n, false, want, cap);
	size_t ngot = publish_all(&b, msgs, n, cork, got, cap);
	assert_true(nwant > 0);
	assert_int_equal(ngot, nwant);
	assert_memory_equal(got, want, nwant);
	close_pair(&a);
	close_pair(&b);
	free(want);
	free(got);
}

static const struct svc_amqp_header hdrs[] = {
    {"x-trace", "abc"}, {"x-svccomm-attempt", "2"}, {"empty", ""}};

static void plain_message(void **state)
{
	struct msg m = {"events", "user.created", 300, {.persistent = true}, true};

	(void)state;
	same_bytes(&m, 1, 131072, false);
}

static void every_property_and_headers(void **state)
{
	struct msg m = {"ex",
	                "rk",
	                57,
	                {.content_type = "text/plain",
	                 .message_id = "app:42",
	                 .correlation_id = "c-1",
	                 .app_id = "svc",
	                 .reply_to = "amq.rabbitmq.reply-to",
	                 .type = "t",
	                 .timestamp = 1764633600,
	                 .headers = hdrs,
	                 .n_headers = 3,
	                 .persistent = true},
	                false};
	struct msg none = {"", "queue-name", 0, {.content_type = ""}, false};

	(void)state;
	same_bytes(&m, 1, 131072, false);
	same_bytes(&none, 1, 131072, false); /* no properties at all, empty body */
}

/* Publishes m once on a and once on b (mandatory) and checks the sequence numbers each got and
 * that both peers received the same bytes. */
static void same_publish(struct pair *a, struct pair *b, const struct msg *m, uint64_t want_a,
                         uint64_t want_b)
{
	unsigned char x[4096], y[4096];
	uint64_t sa = 0, sb = 0;
	unsigned char *body = body_of(m->len);

	assert_int_equal(
	    svc_amqp_publish(a->c, m->exchange, m->rk, body, m->len, &m->props, true, &sa), 0);
	assert_int_equal(
	    svc_amqp_publish(b->c, m->exchange, m->rk, body, m->len, &m->props, true, &sb), 0);
	assert_int_equal(sa, want_a);
	assert_int_equal(sb, want_b);
	size_t na = drain(a->peer, x, sizeof(x)), nb = drain(b->peer, y, sizeof(y));
	assert_int_equal(na, nb);
	assert_memory_equal(x, y, na);
	free(body);
}

static void confirm_mode_sequence_header(void **state)
{
	struct msg m = {"events", "a.b", 120, {.message_id = "m", .persistent = true}, true};
	struct pair a, b;

	(void)state;
	/* mandatory in confirm mode adds x-svccomm-seq: the same value on both paths */
	open_pair(&a, 131072);
	open_pair(&b, 131072);
	a.c->raw = false;
	a.c->confirm = b.c->confirm = true;
	same_publish(&a, &b, &m, 1, 1);
	close_pair(&a);
	close_pair(&b);
}

/* return_by_message_id: the caller tells returns by message_id, so a mandatory publish in
 * confirm mode goes out without x-svccomm-seq, byte for byte as one outside confirm mode, with
 * or without headers of its own; the sequence number still counts it. */
static void return_by_message_id_adds_no_header(void **state)
{
	static const struct svc_amqp_header hs[] = {{"traceparent", "00-abc-01"}};
	struct msg plain = {
	    "events",
	    "a.b",
	    120,
	    {.message_id = "svc:42", .persistent = true, .return_by_message_id = true},
	    true};
	struct msg headed = plain;

	(void)state;
	headed.props.headers = hs;
	headed.props.n_headers = 1;
	for (int k = 0; k < 2; k++) {
		struct pair a, b;

		open_pair(&a, 131072);
		open_pair(&b, 131072);
		a.c->confirm = true; /* b: not in confirm mode, never a sequence header */
		same_publish(&a, &b, k ? &headed : &plain, 1, 0);
		close_pair(&a);
		close_pair(&b);
	}
}

static void bodies_split_at_frame_max(void **state)
{
	/* frame_max 4096: bodies of 4088 bytes fill one frame exactly, 4089 need two, 20,000
	 * need five; 40,000 is over the encoder's limit and takes rabbitmq-c's path */
	struct msg m[] = {{"e", "k", 4088, {.persistent = true}, false},
	                  {"e", "k", 4089, {.persistent = true}, false},
	                  {"e", "k", 20000, {.persistent = true}, false},
	                  {"e", "k", 40000, {.persistent = true}, false},
	                  {"e", "k", 1, {.persistent = true}, false}};

	(void)state;
	same_bytes(m, 5, 4096, false);
	same_bytes(m, 5, 4096, true);
}

static void corked_batches_flush_in_order(void **state)
{
	/* 500 messages of 300 bytes: several 64 KiB flushes and a rest sent by uncork */
	struct msg m[500];

	(void)state;
	for (int i = 0; i < 500; i++)
		m[i] = (struct msg){"events",
		                    i % 2 ? "a" : "b.c",
		                    300 + (size_t)i % 7,
		                    {.message_id = i % 3 ? "id" : NULL, .persistent = true},
		                    true};
	same_bytes(m, 500, 131072, true);
}

static void large_headers_need_a_second_attempt(void **state)
{
	/* headers larger than the first guess of the properties' room (4 KiB) */
	static char big[6000];
	struct svc_amqp_header h[] = {{"big", big}};
	struct msg m = {"e", "k", 10, {.headers = h, .n_headers = 1, .persistent = true}, false};

	(void)state;
	memset(big, 'h', sizeof(big) - 1);
	same_bytes(&m, 1, 131072, false);
}

static void other_calls_send_corked_frames_first(void **state)
{
	struct pair p;
	unsigned char buf[8192];

	(void)state;
	open_pair(&p, 131072);
	svc_amqp_cork(p.c);
	assert_int_equal(svc_amqp_publish(p.c, "e", "k", "{}", 2, NULL, false, NULL), 0);
	assert_true(p.c->out_len > 0);
	assert_int_equal(drain(p.peer, buf, sizeof(buf)), 0); /* held */
	/* a heartbeat is sent after the held frames, never before them */
	assert_int_equal(amqp_tune_connection(p.c->st, 0, 131072, 30), AMQP_STATUS_OK);
	assert_int_equal(svc_amqp_send_heartbeat(p.c), 0);
	size_t n = drain(p.peer, buf, sizeof(buf));
	assert_true(n > 8);
	assert_int_equal(buf[0], AMQP_FRAME_METHOD);
	assert_int_equal(buf[n - 8], AMQP_FRAME_HEARTBEAT);
	assert_int_equal(p.c->out_len, 0);
	close_pair(&p);
}

static void a_dead_peer_is_econn(void **state)
{
	struct pair p;

	(void)state;
	open_pair(&p, 131072);
	close(p.peer);
	p.peer = -1;
	int rc = 0;
	/* the first send may still be buffered by the kernel; one of a few must fail */
	for (int i = 0; i < 50 && rc == 0; i++)
		rc = svc_amqp_publish(p.c, "e", "k", "{}", 2, NULL, false, NULL);
	assert_int_equal(rc, SVC_ECONN);
	assert_false(svc_amqp_is_open(p.c));
	assert_int_equal(p.c->out_len, 0);
	svc_amqp_free(p.c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(plain_message),
	    cmocka_unit_test(every_property_and_headers),
	    cmocka_unit_test(confirm_mode_sequence_header),
	    cmocka_unit_test(return_by_message_id_adds_no_header),
	    cmocka_unit_test(bodies_split_at_frame_max),
	    cmocka_unit_test(corked_batches_flush_in_order),
	    cmocka_unit_test(large_headers_need_a_second_attempt),
	    cmocka_unit_test(other_calls_send_corked_frames_first),
	    cmocka_unit_test(a_dead_peer_is_econn),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
