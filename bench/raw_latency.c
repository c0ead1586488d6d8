/* raw_latency: the broker's share of the end-to-end latency, with nothing of svccomm. One
 * connection publishes SIZE-byte persistent, mandatory messages with publisher confirms at RATE
 * a second (event i due at start + i / RATE; a publisher that falls behind catches up without
 * sleeping), each carrying the wall clock of its publish; a second connection consumes them
 * (manual acks, prefetch P, one "ack multiple" whenever no delivery is waiting) and takes, per
 * message, receive time - publish time.
 *
 *   raw_latency [--url URL] [--queue-type v1|v2|quorum] [--rate R] [--seconds S] [--size B]
 *               [--prefetch P]
 *
 * The queue bench.rawlat.<type> is declared afresh, bound to the exchange of the same name.
 * Prints one JSON line on stdout: p50, p95, p99 and max in ms, the messages and the rate the
 * publisher reached. This is the floor under svccomm's latency rows: the relay's publish and
 * the consumer's delivery go through the same broker path. */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <amqp.h>

#include "bench_common.h"

static struct {
	const char *url, *qtype;
	char name[64];
	double rate, seconds;
	long size, prefetch, total;
	struct bench_schedule sched;
} o;

struct pub_result {
	long sent, acked, nacked, returned;
	double first, last; /* wall clock of the first and last publish */
	char err[256];
};

/* Reads every frame that is waiting on the publishing connection (confirms, returns), the
 * first after waiting up to wait_us. */
static int drain(amqp_connection_state_t c, struct pub_result *r, long wait_us)
{
	for (;; wait_us = 0) {
		struct timeval tv = {0, wait_us};
		amqp_frame_t f;
		int st = amqp_simple_wait_frame_noblock(c, &f, &tv);
		if (st == AMQP_STATUS_TIMEOUT)
			return 0;
		if (st != AMQP_STATUS_OK) {
			snprintf(r->err, sizeof(r->err), "publisher: %s", amqp_error_string2(st));
			return -1;
		}
		if (f.frame_type != AMQP_FRAME_METHOD)
			continue; /* the header and body of a basic.return */
		switch (f.payload.method.id) {
		case AMQP_BASIC_ACK_METHOD: {
			amqp_basic_ack_t *a = f.payload.method.decoded;
			r->acked = a->multiple ? (long)a->delivery_tag : r->acked + 1;
			break;
		}
		case AMQP_BASIC_NACK_METHOD:
			r->nacked++;
			break;
		case AMQP_BASIC_RETURN_METHOD:
			r->returned++;
			break;
		case AMQP_CHANNEL_CLOSE_METHOD:
		case AMQP_CONNECTION_CLOSE_METHOD:
			snprintf(r->err, sizeof(r->err), "publisher: closed by the broker");
			return -1;
		default:
			break;
		}
	}
}

static void *publisher(void *arg)
{
	struct pub_result *r = arg;
	amqp_connection_state_t c = NULL;
	char *body = malloc((size_t)o.size + 1);
	if (!body || bench_connect(o.url, &c, r->err, sizeof(r->err)))
		goto out;
	amqp_confirm_select(c, 1);
	if (bench_rpc_ok(amqp_get_rpc_reply(c), "confirm.select", r->err, sizeof(r->err)))
		goto out;
	amqp_basic_properties_t props;
	memset(&props, 0, sizeof(props));
	props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
	props.content_type = amqp_cstring_bytes("application/json");
	props.delivery_mode = 2;
	for (long i = 0; i < o.total; i++) {
		bench_wait_due(&o.sched, i);
		if (drain(c, r, 0))
			goto out;
		double now = bench_wall();
		int n = snprintf(body, (size_t)o.size + 1, "{\"t\":%.6f,\"p\":\"", now);
		for (long k = n; k < o.size - 2; k++)
			body[k] = 'x';
		memcpy(body + o.size - 2, "\"}", 2);
		amqp_bytes_t b = {(size_t)o.size, body};
		int st = amqp_basic_publish(c, 1, amqp_cstring_bytes(o.name),
		                            amqp_cstring_bytes("bench.lat"), 1, 0, &props, b);
		if (st != AMQP_STATUS_OK) {
			snprintf(r->err, sizeof(r->err), "publish: %s", amqp_error_string2(st));
			goto out;
		}
		if (!r->sent)
			r->first = now;
		r->last = now;
		r->sent++;
	}
	/* the confirms of the last messages */
	double end = bench_now() + 30;
	while (r->acked + r->nacked < r->sent && bench_now() < end)
		if (drain(c, r, 100000))
			break;
out:
	free(body);
	bench_close(c);
	return NULL;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double pct(const double *v, long n, double p)
{
	long i = (long)(p / 100.0 * (double)(n - 1) + 0.5);
	return v[i < n ? i : n - 1];
}

int main(int argc, char **argv)
{
	o.url = getenv("SVCCOMM_BROKER_URL");
	o.qtype = "quorum";
	o.rate = 2000;
	o.seconds = 8;
	o.size = 300;
	o.prefetch = 1000;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!v) {
			fprintf(stderr, "raw_latency: %s needs a value\n", a);
			return 2;
		}
		if (!strcmp(a, "--url"))
			o.url = v;
		else if (!strcmp(a, "--queue-type"))
			o.qtype = v;
		else if (!strcmp(a, "--rate"))
			o.rate = (double)bench_parse_long(a, v);
		else if (!strcmp(a, "--seconds"))
			o.seconds = strtod(v, NULL);
		else if (!strcmp(a, "--size"))
			o.size = bench_parse_long(a, v);
		else if (!strcmp(a, "--prefetch"))
			o.prefetch = bench_parse_long(a, v);
		else {
			fprintf(stderr, "raw_latency: unknown option %s\n", a);
			return 2;
		}
		i++;
	}
	if (!o.url || o.seconds <= 0 || o.size < 40 || o.prefetch > 65535 ||
	    (strcmp(o.qtype, "v1") && strcmp(o.qtype, "v2") && strcmp(o.qtype, "quorum"))) {
		fprintf(stderr,
		        "usage: raw_latency [--url URL] [--queue-type v1|v2|quorum] [--rate R] "
		        "[--seconds S] [--size B >= 40] [--prefetch P <= 65535]\n");
		return 2;
	}
	snprintf(o.name, sizeof(o.name), "bench.rawlat.%s", o.qtype);
	o.total = (long)(o.rate * o.seconds);

	amqp_connection_state_t c = NULL;
	char err[512] = "";
	double *lat = calloc((size_t)o.total + 1, sizeof(double));
	struct pub_result pr = {0};
	long got = 0;
	int rc = 1;
	bool started = false;
	pthread_t pt;
	if (!lat || bench_connect(o.url, &c, err, sizeof(err)) ||
	    bench_declare(c, o.name, o.name, o.qtype, true, true, err, sizeof(err)))
		goto out;
	amqp_basic_qos(c, 1, 0, (uint16_t)o.prefetch, 0);
	if (bench_rpc_ok(amqp_get_rpc_reply(c), "basic.qos", err, sizeof(err)))
		goto out;
	amqp_basic_consume(c, 1, amqp_cstring_bytes(o.name), amqp_empty_bytes, 0, 0, 0,
	                   amqp_empty_table);
	if (bench_rpc_ok(amqp_get_rpc_reply(c), "basic.consume", err, sizeof(err)))
		goto out;
	o.sched = bench_schedule(o.rate, 0.2); /* the publisher connects before the first is due */
	if (pthread_create(&pt, NULL, publisher, &pr) != 0) {
		snprintf(err, sizeof(err), "cannot start the publisher");
		goto out;
	}
	started = true;
	uint64_t last_tag = 0, acked_tag = 0;
	while (got < o.total) {
		struct timeval tv = {5, 0};
		amqp_envelope_t env;
		amqp_maybe_release_buffers(c);
		amqp_rpc_reply_t r = amqp_consume_message(c, &env, &tv, 0);
		if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
		    r.library_error == AMQP_STATUS_TIMEOUT) {
			snprintf(err, sizeof(err), "no delivery for 5 s after %ld of %ld", got,
			         o.total);
			goto out;
		}
		if (bench_rpc_ok(r, "consume", err, sizeof(err)))
			goto out;
		double now = bench_wall(), t = 0;
		if (env.message.body.len > 5 &&
		    sscanf((const char *)env.message.body.bytes + 5, "%lf", &t) == 1)
			lat[got++] = (now - t) * 1000;
		last_tag = env.delivery_tag;
		amqp_destroy_envelope(&env);
		if (!amqp_data_in_buffer(c) && last_tag != acked_tag) {
			if (amqp_basic_ack(c, 1, last_tag, 1) != AMQP_STATUS_OK) {
				snprintf(err, sizeof(err), "ack failed");
				goto out;
			}
			acked_tag = last_tag;
		}
	}
	if (last_tag != acked_tag)
		amqp_basic_ack(c, 1, last_tag, 1);
	rc = 0;
out:
	if (started)
		pthread_join(pt, NULL);
	if (!rc && pr.err[0]) {
		snprintf(err, sizeof(err), "%s", pr.err);
		rc = 1;
	}
	if (rc) {
		fprintf(stderr, "raw_latency: %s\n", err[0] ? err : "failed");
	} else {
		qsort(lat, (size_t)got, sizeof(double), cmp_double);
		double span = pr.last - pr.first;
		printf(
		    "{\"queue_type\": \"%s\", \"rate\": %.0f, \"achieved\": %.1f, \"events\": %ld, "
		    "\"p50\": %.3f, \"p95\": %.3f, \"p99\": %.3f, \"max\": %.3f, \"size\": %ld, "
		    "\"prefetch\": %ld, \"confirmed\": %ld, \"nacked\": %ld, \"returned\": %ld}\n",
		    o.qtype, o.rate, span > 0 ? (double)(pr.sent - 1) / span : 0.0, got,
		    pct(lat, got, 50), pct(lat, got, 95), pct(lat, got, 99), lat[got - 1], o.size,
		    o.prefetch, pr.acked, pr.nacked, pr.returned);
	}
	free(lat);
	bench_close(c);
	return rc;
}
