/* raw_consume: the consume ceiling. basic.consume with manual acks on a durable queue filled by
 * raw_publish, basic.qos PREFETCH, and one "ack multiple" every K messages.
 *
 *   raw_consume [--url URL] [--queue Q] [--count N] [--prefetch P] [--ack-every K]
 *               [--idle-timeout S]
 *
 * Stops after N messages, or when no message came for S seconds (default 5). The clock runs from
 * the basic.consume-ok to the last ack. Prints one JSON line on stdout. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <amqp.h>

#include "bench_common.h"

static void usage(void)
{
	fprintf(stderr, "usage: raw_consume [--url URL] [--queue Q] [--count N] [--prefetch P] "
	                "[--ack-every K] [--idle-timeout S]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *url = getenv("SVCCOMM_BROKER_URL"), *queue = "bench.raw.v1";
	long count = 100000, prefetch = 500, ack_every = 100, idle = 5, got = 0, bytes = 0;
	uint64_t last_tag = 0, acked_tag = 0;
	amqp_connection_state_t conn = NULL;
	char err[512] = "";
	double t0, t1 = 0;
	int i, rc = 1;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--url") && v)
			url = argv[++i];
		else if (!strcmp(a, "--queue") && v)
			queue = argv[++i];
		else if (!strcmp(a, "--count"))
			count = bench_parse_long(a, argv[++i]);
		else if (!strcmp(a, "--prefetch"))
			prefetch = bench_parse_long(a, argv[++i]);
		else if (!strcmp(a, "--ack-every"))
			ack_every = bench_parse_long(a, argv[++i]);
		else if (!strcmp(a, "--idle-timeout"))
			idle = bench_parse_long(a, argv[++i]);
		else
			usage();
	}
	if (!url) {
		fprintf(stderr, "raw_consume: --url or SVCCOMM_BROKER_URL is required\n");
		return 2;
	}
	if (!bench_name_ok(queue) || prefetch > 65535) {
		fprintf(stderr, "raw_consume: bad queue name or prefetch > 65535\n");
		return 2;
	}
	if (bench_connect(url, &conn, err, sizeof(err)))
		goto out;
	amqp_basic_qos(conn, 1, 0, (uint16_t)prefetch, 0);
	if (bench_rpc_ok(amqp_get_rpc_reply(conn), "basic.qos", err, sizeof(err)))
		goto out;
	amqp_basic_consume(conn, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0,
	                   amqp_empty_table);
	if (bench_rpc_ok(amqp_get_rpc_reply(conn), "basic.consume", err, sizeof(err)))
		goto out;
	t0 = bench_now();
	while (got < count) {
		struct timeval tv = {idle, 0};
		amqp_envelope_t env;
		amqp_rpc_reply_t r;

		amqp_maybe_release_buffers(conn);
		r = amqp_consume_message(conn, &env, &tv, 0);
		if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
		    r.library_error == AMQP_STATUS_TIMEOUT)
			break;
		if (bench_rpc_ok(r, "consume", err, sizeof(err)))
			goto out;
		got++;
		bytes += (long)env.message.body.len;
		last_tag = env.delivery_tag;
		amqp_destroy_envelope(&env);
		if (got % ack_every == 0 || got == count) {
			int st = amqp_basic_ack(conn, 1, last_tag, 1);

			if (st != AMQP_STATUS_OK) {
				snprintf(err, sizeof(err), "ack: %s", amqp_error_string2(st));
				goto out;
			}
			acked_tag = last_tag;
		}
		t1 = bench_now();
	}
	if (last_tag && acked_tag != last_tag)
		amqp_basic_ack(conn, 1, last_tag, 1);
	if (got == 0) {
		snprintf(err, sizeof(err), "no message within %ld s", idle);
		goto out;
	}
	fprintf(stderr,
	        "raw_consume: %s: %ld msgs in %.3f s = %.0f msg/s (prefetch %ld, ack every %ld)\n",
	        queue, got, t1 - t0, got / (t1 - t0), prefetch, ack_every);
	printf("{\"bench\":\"raw_consume\",\"queue\":\"%s\",\"count\":%ld,\"bytes\":%ld,"
	       "\"seconds\":%.4f,\"rate\":%.1f,\"prefetch\":%ld,\"ack_every\":%ld,"
	       "\"complete\":%s}\n",
	       queue, got, bytes, t1 - t0, got / (t1 - t0), prefetch, ack_every,
	       got == count ? "true" : "false");
	rc = got == count ? 0 : 1;
out:
	if (err[0]) {
		fprintf(stderr, "raw_consume: %s\n", err);
		printf("{\"bench\":\"raw_consume\",\"queue\":\"%s\",\"error\":\"see stderr\"}\n",
		       queue);
	}
	bench_close(conn);
	return rc;
}
