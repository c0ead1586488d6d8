/* amqp_peer: see amqp_peer.h. */
#include "amqp_peer.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <amqp_framing.h>
#include <amqp_tcp_socket.h>

#include "amqp/internal.h"

static void reserve(struct peer_buf *pb, size_t more)
{
	if (pb->len + more <= pb->cap)
		return;
	size_t cap = pb->cap ? pb->cap : 4096;
	while (cap < pb->len + more)
		cap *= 2;
	pb->b = realloc(pb->b, cap);
	if (!pb->b)
		abort();
	pb->cap = cap;
}

void peer_raw(struct peer_buf *pb, const void *bytes, size_t len)
{
	reserve(pb, len);
	if (len)
		memcpy(pb->b + pb->len, bytes, len);
	pb->len += len;
}

void peer_frame(struct peer_buf *pb, uint8_t type, uint16_t ch, const void *payload, size_t len)
{
	uint8_t h[7] = {type,
	                (uint8_t)(ch >> 8),
	                (uint8_t)ch,
	                (uint8_t)(len >> 24),
	                (uint8_t)(len >> 16),
	                (uint8_t)(len >> 8),
	                (uint8_t)len};
	uint8_t end = AMQP_FRAME_END;
	peer_raw(pb, h, sizeof(h));
	peer_raw(pb, payload, len);
	peer_raw(pb, &end, 1);
}

void peer_method(struct peer_buf *pb, uint16_t ch, amqp_method_number_t id, void *decoded)
{
	uint8_t buf[4096];
	buf[0] = (uint8_t)(id >> 24);
	buf[1] = (uint8_t)(id >> 16);
	buf[2] = (uint8_t)(id >> 8);
	buf[3] = (uint8_t)id;
	amqp_bytes_t out = {.len = sizeof(buf) - 4, .bytes = buf + 4};
	int n = amqp_encode_method(id, decoded, out);
	if (n < 0)
		abort();
	peer_frame(pb, AMQP_FRAME_METHOD, ch, buf, (size_t)n + 4);
}

/* connection.start .. channel.open-ok, what every client gets first */
static void peer_open(struct peer_buf *pb)
{
	amqp_connection_start_t start = {.version_major = 0,
	                                 .version_minor = 9,
	                                 .server_properties = amqp_empty_table,
	                                 .mechanisms = amqp_cstring_bytes("PLAIN"),
	                                 .locales = amqp_cstring_bytes("en_US")};
	amqp_connection_tune_t tune = {.channel_max = 2047, .frame_max = FRAME_MAX, .heartbeat = 0};
	amqp_connection_open_ok_t open_ok = {.known_hosts = amqp_empty_bytes};
	amqp_channel_open_ok_t ch_ok = {.channel_id = amqp_empty_bytes};

	peer_method(pb, 0, AMQP_CONNECTION_START_METHOD, &start);
	peer_method(pb, 0, AMQP_CONNECTION_TUNE_METHOD, &tune);
	peer_method(pb, 0, AMQP_CONNECTION_OPEN_OK_METHOD, &open_ok);
	peer_method(pb, 1, AMQP_CHANNEL_OPEN_OK_METHOD, &ch_ok);
}

void peer_handshake(struct peer_buf *pb)
{
	amqp_basic_qos_ok_t qos_ok = {0};
	amqp_basic_consume_ok_t consume_ok = {.consumer_tag = amqp_cstring_bytes("ctag")};

	peer_open(pb);
	peer_method(pb, 1, AMQP_BASIC_QOS_OK_METHOD, &qos_ok);
	peer_method(pb, 1, AMQP_BASIC_CONSUME_OK_METHOD, &consume_ok);
}

void peer_handshake_publisher(struct peer_buf *pb)
{
	amqp_confirm_select_ok_t ok = {0};

	peer_open(pb);
	peer_method(pb, 1, AMQP_CONFIRM_SELECT_OK_METHOD, &ok);
}

/* Writes everything, then closes the broker's side: the client reads EOF after the script. */
static int feed(int fd, const struct peer_buf *pb)
{
	size_t off = 0;
	while (off < pb->len) {
		ssize_t n = write(fd, pb->b + off, pb->len - off);
		if (n <= 0)
			return -1;
		off += (size_t)n;
	}
	return 0;
}

/* The broker's end, closed with the connection: the client's acks and replies land there. */
static int broker_fd = -1;

/* The client's end of a socketpair whose broker side has sent pb then EOF, logged in with its
 * channel open; NULL when that failed. */
static struct svc_amqp *open_client(const struct peer_buf *pb)
{
	int sv[2];
	/* The script must fit the socket buffer: nothing reads the broker's side concurrently. */
	int sz = 1 << 20;
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
		abort();
	setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
	fcntl(sv[1], F_SETFL, O_NONBLOCK); /* a script too large fails instead of blocking */
	if (feed(sv[1], pb) != 0) {
		fprintf(stderr, "amqp_peer: a %zu byte script does not fit the socket buffer\n",
		        pb->len);
		abort();
	}
	/* Half close: the client's replies (close-ok, cancel-ok) still find room. */
	shutdown(sv[1], SHUT_WR);
	broker_fd = sv[1];

	struct svc_amqp *c = svc_amqp_new();
	c->st = amqp_new_connection();
	c->sock = amqp_tcp_socket_new(c->st);
	amqp_tcp_socket_set_sockfd(c->sock, sv[0]);
	amqp_rpc_reply_t r =
	    amqp_login(c->st, "/", 0, FRAME_MAX, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest");
	if (r.reply_type != AMQP_RESPONSE_NORMAL || !amqp_channel_open(c->st, c->ch)) {
		fprintf(stderr, "amqp_peer: the scripted login failed\n");
		peer_drop(c);
		return NULL;
	}
	c->open = true;
	return c;
}

struct svc_amqp *peer_connect(const struct peer_buf *pb, struct svc_amqp_consumer *cs)
{
	struct svc_amqp *c = open_client(pb);

	memset(cs, 0, sizeof(*cs));
	if (!c)
		return NULL;
	if (svc_amqp_consumer_qos(cs, c, 10) != 0 || svc_amqp_consumer_start(cs, c, "q") != 0) {
		fprintf(stderr, "amqp_peer: the scripted handshake failed: %s\n", cs->err);
		peer_drop(c);
		return NULL;
	}
	return c;
}

struct svc_amqp *peer_connect_publisher(const struct peer_buf *pb)
{
	struct svc_amqp *c = open_client(pb);

	if (c && svc_amqp_confirm_select(c) != 0) {
		fprintf(stderr, "amqp_peer: confirm.select failed: %s\n", svc_amqp_error(c));
		peer_drop(c);
		return NULL;
	}
	return c;
}

void peer_drop(struct svc_amqp *c)
{
	/* No channel.close / connection.close: rabbitmq-c 0.11 must not read again after an
	 * error (see NOTES-servers.md); this is the path svccomm takes on a broken connection. */
	c->open = false;
	svc_amqp_free(c);
	if (broker_fd >= 0)
		close(broker_fd);
	broker_fd = -1;
}

/* libFuzzer's start-up hook, for every target linked with this support: the scripted peer
 * writes into a socketpair whose reader may be gone, which must not kill the process. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	signal(SIGPIPE, SIG_IGN);
	return 0;
}
