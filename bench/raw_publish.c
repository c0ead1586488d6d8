/* raw_publish: the publish ceiling. Persistent, mandatory publishes of SIZE-byte JSON bodies to a
 * durable topic exchange bound to a durable queue, with publisher confirms pipelined in a sliding
 * window (at most WINDOW unconfirmed). rabbitmq-c 0.11 has no confirm API, so basic.ack,
 * basic.nack and basic.return are read from frames here.
 *
 *   raw_publish [--url URL] [--exchange X] [--queue Q] [--queue-type v1|v2|quorum]
 *               [--size BYTES] [--count N] [--window W[,W...]] [--fresh] [--keep]
 *               [--routing-key RK] [--no-declare]
 *
 * Each window is one run of N messages; the queue is purged before each run (so the last run
 * leaves exactly N messages for raw_consume) unless --keep. --no-declare: publish to the exchange
 * only (declared durable topic if missing) and leave the queues alone: preloads a queue that
 * svccomm declared. Prints one JSON line on stdout. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <amqp.h>

#include "bench_common.h"

#define MAX_WINDOWS 16

struct run {
	long window;
	double seconds;
	long acked, nacked, returned;
	char err[512];
};

struct pub {
	amqp_connection_state_t conn;
	unsigned char *done; /* done[tag] = 1 once acked or nacked */
	uint64_t base;       /* delivery tags of this run start after base (one channel) */
	uint64_t low;        /* every tag below low is done (tags relative to base) */
	long ndone;
	struct run *r;
	uint64_t max; /* messages in this run: no tag beyond it */
};

static void settle(struct pub *p, uint64_t tag, bool multiple, bool ack)
{
	uint64_t t;

	if (tag <= p->base)
		return; /* a late confirm of an earlier run */
	tag -= p->base;
	if (tag > p->max)
		tag = p->max;
	t = multiple ? p->low : tag;

	for (; t <= tag; t++) {
		if (p->done[t])
			continue;
		p->done[t] = 1;
		p->ndone++;
		if (ack)
			p->r->acked++;
		else
			p->r->nacked++;
	}
	while (p->done[p->low])
		p->low++;
}

/* Skip the content header and body frames that follow a basic.return. */
static int skip_content(struct pub *p)
{
	amqp_frame_t f;
	uint64_t size, got = 0;

	if (amqp_simple_wait_frame(p->conn, &f) != AMQP_STATUS_OK ||
	    f.frame_type != AMQP_FRAME_HEADER)
		return -1;
	size = f.payload.properties.body_size;
	while (got < size) {
		if (amqp_simple_wait_frame(p->conn, &f) != AMQP_STATUS_OK ||
		    f.frame_type != AMQP_FRAME_BODY)
			return -1;
		got += f.payload.body_fragment.len;
	}
	return 0;
}

/* Read one frame (blocking, or not at all when nothing is there) and account for it.
 * Returns 1 when a frame was handled, 0 when none was waiting, -1 on error. */
static int read_frame(struct pub *p, bool block)
{
	amqp_frame_t f;
	struct timeval zero = {0, 0};
	int st;

	if (block)
		st = amqp_simple_wait_frame(p->conn, &f);
	else
		st = amqp_simple_wait_frame_noblock(p->conn, &f, &zero);
	if (st == AMQP_STATUS_TIMEOUT)
		return 0;
	if (st != AMQP_STATUS_OK) {
		snprintf(p->r->err, sizeof(p->r->err), "wait frame: %s", amqp_error_string2(st));
		return -1;
	}
	if (f.frame_type != AMQP_FRAME_METHOD)
		return 1;
	switch (f.payload.method.id) {
	case AMQP_BASIC_ACK_METHOD: {
		amqp_basic_ack_t *a = f.payload.method.decoded;

		settle(p, a->delivery_tag, a->multiple, true);
		break;
	}
	case AMQP_BASIC_NACK_METHOD: {
		amqp_basic_nack_t *n = f.payload.method.decoded;

		settle(p, n->delivery_tag, n->multiple, false);
		break;
	}
	case AMQP_BASIC_RETURN_METHOD:
		p->r->returned++;
		if (skip_content(p)) {
			snprintf(p->r->err, sizeof(p->r->err), "bad frames after basic.return");
			return -1;
		}
		break;
	case AMQP_CHANNEL_CLOSE_METHOD:
	case AMQP_CONNECTION_CLOSE_METHOD:
		snprintf(p->r->err, sizeof(p->r->err), "closed by the broker during publishing");
		return -1;
	default:
		break;
	}
	return 1;
}

/* Write a SIZE-byte JSON body: a svccomm envelope padded to size, with the id in a fixed-width
 * slot at offset 12 (returns true), or, when size is too small for one, {"p":"xx..."} (false;
 * below 9 bytes plain x's, not JSON). */
static bool fill_body(char *body, size_t size, long id)
{
	int n =
	    snprintf(body, size + 1,
	             "{\"eventId\":\"%012ld\",\"eventTime\":\"2026-01-01T00:00:00Z\","
	             "\"eventType\":\"bench.event\",\"aggregate\":\"bench\",\"payload\":{\"p\":\"",
	             id);
	size_t i;

	if (n >= 0 && (size_t)n + 3 <= size) {
		for (i = (size_t)n; i < size - 3; i++)
			body[i] = 'x';
		memcpy(body + size - 3, "\"}}", 3);
		return true;
	}
	memset(body, 'x', size);
	if (size >= 9) {
		memcpy(body, "{\"p\":\"", 6);
		memcpy(body + size - 2, "\"}", 2);
	}
	return false;
}

static int one_run(amqp_connection_state_t conn, const char *exchange, const char *rk, long count,
                   size_t size, uint64_t base, struct run *r)
{
	struct pub p = {conn, NULL, base, 1, 0, r, (uint64_t)count};
	amqp_basic_properties_t props;
	char *body = malloc(size + 1);
	char mid[32];
	long sent = 0;
	bool envelope;
	double t0;
	int rc = -1;

	p.done = calloc((size_t)count + 2, 1);
	if (!body || !p.done) {
		snprintf(r->err, sizeof(r->err), "out of memory");
		goto out;
	}
	envelope = fill_body(body, size, 0);
	memset(&props, 0, sizeof(props));
	props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
	               AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_APP_ID_FLAG |
	               AMQP_BASIC_TIMESTAMP_FLAG;
	props.content_type = amqp_cstring_bytes("application/json");
	props.delivery_mode = 2;
	props.app_id = amqp_cstring_bytes("svccomm-bench");
	t0 = bench_now();
	while (sent < count) {
		int st;

		while (sent - p.ndone >= r->window)
			if (read_frame(&p, true) < 0)
				goto out;
		sent++;
		if (envelope) {
			char idbuf[24];

			snprintf(idbuf, sizeof(idbuf), "%012ld", sent);
			memcpy(body + 12, idbuf, 12);
		}
		snprintf(mid, sizeof(mid), "%ld", sent);
		props.message_id = amqp_cstring_bytes(mid);
		props.timestamp = (uint64_t)time(NULL);
		st = amqp_basic_publish(conn, 1, amqp_cstring_bytes(exchange),
		                        amqp_cstring_bytes(rk), 1, 0, &props,
		                        (amqp_bytes_t){size, body});
		if (st != AMQP_STATUS_OK) {
			snprintf(r->err, sizeof(r->err), "publish: %s", amqp_error_string2(st));
			goto out;
		}
		if ((sent & 15) == 0)
			while (read_frame(&p, false) == 1)
				;
		if (r->err[0])
			goto out;
	}
	while (p.ndone < count)
		if (read_frame(&p, true) < 0)
			goto out;
	r->seconds = bench_now() - t0;
	rc = 0;
out:
	free(p.done);
	free(body);
	return rc;
}

static void usage(void)
{
	fprintf(stderr,
	        "usage: raw_publish [--url URL] [--exchange X] [--queue Q] "
	        "[--queue-type v1|v2|quorum] [--size BYTES] [--count N] "
	        "[--window W[,W...]] [--fresh] [--keep] [--routing-key RK] [--no-declare]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *url = getenv("SVCCOMM_BROKER_URL");
	const char *exchange = "bench.raw", *queue = NULL, *qtype = "v1", *rk = "bench.event";
	char *windows = NULL, qbuf[128], err[512];
	long count = 100000, size = 300;
	struct run runs[MAX_WINDOWS];
	int nruns = 0, best = -1, i;
	bool fresh = false, keep = false, declare = true;
	amqp_connection_state_t conn = NULL;

	memset(runs, 0, sizeof(runs));
	for (i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--url") && v)
			url = argv[++i];
		else if (!strcmp(a, "--exchange") && v)
			exchange = argv[++i];
		else if (!strcmp(a, "--queue") && v)
			queue = argv[++i];
		else if (!strcmp(a, "--queue-type") && v)
			qtype = argv[++i];
		else if (!strcmp(a, "--size"))
			size = bench_parse_long(a, argv[++i]);
		else if (!strcmp(a, "--count"))
			count = bench_parse_long(a, argv[++i]);
		else if (!strcmp(a, "--window") && v)
			windows = argv[++i];
		else if (!strcmp(a, "--fresh"))
			fresh = true;
		else if (!strcmp(a, "--keep"))
			keep = true;
		else if (!strcmp(a, "--no-declare"))
			declare = false, keep = true;
		else if (!strcmp(a, "--routing-key") && v)
			rk = argv[++i];
		else
			usage();
	}
	if (!url) {
		fprintf(stderr, "raw_publish: --url or SVCCOMM_BROKER_URL is required\n");
		return 2;
	}
	if (!queue) {
		snprintf(qbuf, sizeof(qbuf), "bench.raw.%s", qtype);
		queue = qbuf;
	}
	if (!bench_name_ok(queue) || !bench_name_ok(exchange) || !bench_name_ok(qtype) ||
	    !bench_name_ok(rk)) {
		fprintf(stderr, "raw_publish: names must match [A-Za-z0-9_.-]+\n");
		return 2;
	}
	for (char *tok = strtok(windows ? windows : (char[]){"1000"}, ","); tok;
	     tok = strtok(NULL, ",")) {
		if (nruns == MAX_WINDOWS)
			usage();
		runs[nruns++].window = bench_parse_long("--window", tok);
	}
	if (bench_connect(url, &conn, err, sizeof(err)) ||
	    bench_declare(conn, exchange, declare ? queue : NULL, qtype, fresh, false, err,
	                  sizeof(err))) {
		fprintf(stderr, "raw_publish: %s\n", err);
		printf("{\"bench\":\"raw_publish\",\"error\":\"setup failed\"}\n");
		bench_close(conn);
		return 1;
	}
	amqp_confirm_select(conn, 1);
	if (bench_rpc_ok(amqp_get_rpc_reply(conn), "confirm.select", err, sizeof(err))) {
		fprintf(stderr, "raw_publish: %s\n", err);
		bench_close(conn);
		return 1;
	}
	for (i = 0; i < nruns; i++) {
		if (!keep && bench_declare(conn, "", queue, qtype, false, true, err, sizeof(err))) {
			snprintf(runs[i].err, sizeof(runs[i].err), "%s", err);
			break;
		}
		if (one_run(conn, exchange, rk, count, (size_t)size, (uint64_t)(count * i),
		            &runs[i]))
			break;
		fprintf(stderr, "raw_publish: %s window %ld: %ld msgs in %.3f s = %.0f msg/s\n",
		        qtype, runs[i].window, count, runs[i].seconds, count / runs[i].seconds);
		if (runs[i].nacked == 0 && runs[i].returned == 0 &&
		    (best < 0 || runs[i].seconds < runs[best].seconds))
			best = i;
	}
	printf("{\"bench\":\"raw_publish\",\"queue_type\":\"%s\",\"queue\":\"%s\",\"size\":%ld,"
	       "\"count\":%ld,\"runs\":[",
	       qtype, queue, size, count);
	for (int j = 0; j < nruns && j <= i; j++) {
		struct run *r = &runs[j];

		if (r->seconds <= 0 && !r->err[0])
			continue;
		printf("%s{\"window\":%ld,\"seconds\":%.4f,\"rate\":%.1f,\"acked\":%ld,"
		       "\"nacked\":%ld,\"returned\":%ld%s%s%s}",
		       j ? "," : "", r->window, r->seconds, r->seconds > 0 ? count / r->seconds : 0,
		       r->acked, r->nacked, r->returned, r->err[0] ? ",\"error\":\"" : "",
		       r->err[0] ? "see stderr" : "", r->err[0] ? "\"" : "");
		if (r->err[0])
			fprintf(stderr, "raw_publish: window %ld: %s\n", r->window, r->err);
	}
	printf("]");
	if (best >= 0)
		printf(",\"best_window\":%ld,\"rate\":%.1f", runs[best].window,
		       count / runs[best].seconds);
	printf("}\n");
	bench_close(conn);
	return best >= 0 ? 0 : 1;
}
