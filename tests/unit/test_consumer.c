/* Unit tests for the pure decisions of the consumer (src/consumer/retry.c, batch.c, inbox.c)
 * and of the util functions it uses with its own parameters (reconnect backoff, inbox table
 * quoting). The envelope scanner's tests are in test_json_scan.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "consumer/consumer.h"
#include "util/error.h"
#include "util/ident.h"

static void test_failure_action(void **state)
{
	size_t di = 99;
	(void)state;
	/* 3 delays, 4 attempts: attempts 1..3 retry with delays 0..2, attempt 4 dead-letters */
	assert_int_equal(svc_consumer_failure_action(1, 4, 3, false, &di), SVC_FAIL_RETRY);
	assert_int_equal(di, 0);
	assert_int_equal(svc_consumer_failure_action(2, 4, 3, false, &di), SVC_FAIL_RETRY);
	assert_int_equal(di, 1);
	assert_int_equal(svc_consumer_failure_action(3, 4, 3, false, &di), SVC_FAIL_RETRY);
	assert_int_equal(di, 2);
	assert_int_equal(svc_consumer_failure_action(4, 4, 3, false, &di), SVC_FAIL_DEAD_LETTER);
	/* more attempts than delays: the last delay repeats */
	assert_int_equal(svc_consumer_failure_action(5, 10, 2, false, &di), SVC_FAIL_RETRY);
	assert_int_equal(di, 1);
	/* permanent, no delays, one attempt: straight to the DLQ */
	assert_int_equal(svc_consumer_failure_action(1, 4, 3, true, &di), SVC_FAIL_DEAD_LETTER);
	assert_int_equal(svc_consumer_failure_action(1, 4, 0, false, &di), SVC_FAIL_DEAD_LETTER);
	assert_int_equal(svc_consumer_failure_action(1, 1, 3, false, &di), SVC_FAIL_DEAD_LETTER);
}

static void test_delay_and_names(void **state)
{
	char buf[300];
	(void)state;
	assert_int_equal(svc_consumer_delay_ms(1), 1000);
	assert_int_equal(svc_consumer_delay_ms(0.25), 250);
	assert_int_equal(svc_consumer_delay_ms(0.0004), 1);
	assert_int_equal(svc_consumer_delay_ms(60), 60000);
	assert_int_equal(svc_consumer_retry_queue("orders", 1500, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "orders.retry.1500");
	assert_int_equal(svc_consumer_dlq_name("orders", buf, sizeof(buf)), 0);
	assert_string_equal(buf, "orders.dlq");
	char longq[260];
	memset(longq, 'q', 250);
	longq[250] = '\0';
	assert_int_equal(svc_consumer_retry_queue(longq, 1000, buf, sizeof(buf)), SVC_EINVAL);
}

static void test_should_commit(void **state)
{
	(void)state;
	assert_false(svc_consumer_should_commit(0, 100, 5.0, 0.02));
	assert_false(svc_consumer_should_commit(10, 100, 0.001, 0.02));
	assert_true(svc_consumer_should_commit(100, 100, 0.001, 0.02));
	assert_true(svc_consumer_should_commit(3, 100, 0.02, 0.02));
	assert_true(svc_consumer_should_commit(1, 1, 0, 0.02));
	assert_true(svc_consumer_should_commit(1, 0, 0, 0.02)); /* limit 0 acts as 1 */
}

static void test_message_id(void **state)
{
	char out[128];
	(void)state;
	const char *env = "{\"eventId\": \"12\", \"payload\": {}}";
	assert_int_equal(svc_consumer_message_id("m-1", "user", env, strlen(env), out, sizeof(out)),
	                 0);
	assert_string_equal(out, "m-1");
	assert_int_equal(svc_consumer_message_id(NULL, "user", env, strlen(env), out, sizeof(out)),
	                 0);
	assert_string_equal(out, "user:12");
	assert_int_equal(svc_consumer_message_id("", "user", env, strlen(env), out, sizeof(out)),
	                 0);
	assert_string_equal(out, "user:12");
	const char *snake = "{\"event_id\": 3}";
	assert_int_equal(
	    svc_consumer_message_id(NULL, "ex", snake, strlen(snake), out, sizeof(out)), 0);
	assert_string_equal(out, "ex:3");
	assert_int_equal(svc_consumer_message_id(NULL, "ex", "{}", 2, out, sizeof(out)),
	                 SVC_EINVAL);
	/* an id that cannot key the inbox is the message's fault, not "no id" */
	assert_int_equal(svc_consumer_message_id("a\xff", "ex", "{}", 2, out, sizeof(out)),
	                 SVC_EPROTO);
	assert_int_equal(svc_consumer_message_id("a\xc3", "ex", "{}", 2, out, sizeof(out)),
	                 SVC_EPROTO);
	assert_int_equal(svc_consumer_message_id("caf\xc3\xa9", "ex", "{}", 2, out, sizeof(out)),
	                 0);
	char big[600];
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	assert_int_equal(svc_consumer_message_id(big, "ex", "{}", 2, out, sizeof(out)), SVC_EPROTO);
	char wide[512];
	big[401] = '\0';
	assert_int_equal(svc_consumer_message_id(big, "ex", "{}", 2, wide, sizeof(wide)),
	                 SVC_EPROTO);
	big[400] = '\0';
	assert_int_equal(svc_consumer_message_id(big, "ex", "{}", 2, wide, sizeof(wide)), 0);
}

/* INBOX_TABLE goes through svc_ident_quote before it is put into the inbox statements. */
static void test_quote_ident(void **state)
{
	char out[160];
	(void)state;
	assert_int_equal(svc_ident_quote("svccomm_inbox", out, sizeof(out)), 0);
	assert_string_equal(out, "\"svccomm_inbox\"");
	assert_int_equal(svc_ident_quote("app.Inbox_2", out, sizeof(out)), 0);
	assert_string_equal(out, "\"app\".\"Inbox_2\"");
	assert_int_equal(svc_ident_quote("inbox\"; DROP TABLE x; --", out, sizeof(out)),
	                 SVC_EINVAL);
	assert_int_equal(svc_ident_quote("1abc", out, sizeof(out)), SVC_EINVAL);
	assert_int_equal(svc_ident_quote("a.b.c", out, sizeof(out)), SVC_EINVAL);
	assert_int_equal(svc_ident_quote("", out, sizeof(out)), SVC_EINVAL);
	assert_int_equal(svc_ident_quote(".a", out, sizeof(out)), SVC_EINVAL);
}

static void test_error_excerpt(void **state)
{
	char out[64];
	(void)state;
	svc_consumer_error_excerpt("boom\nstack traceback:\n\t1\n\t2\n\t3", 3, out, sizeof(out));
	assert_string_equal(out, "boom\nstack traceback:\n\t1");
	svc_consumer_error_excerpt("one line", 3, out, sizeof(out));
	assert_string_equal(out, "one line");
	/* cut inside "é" (2 bytes): the partial sequence is dropped */
	svc_consumer_error_excerpt("ab\xc3\xa9", 3, out, 4);
	assert_string_equal(out, "ab");
}

static struct svc_delivery_header hdr(const char *k, char kind, const char *s, long long i)
{
	struct svc_delivery_header h = {.key = k, .kind = kind, .str = s, .len = strlen(s), .i = i};
	return h;
}

static const char *find(const struct svc_amqp_header *h, size_t n, const char *key)
{
	const char *v = NULL;
	for (size_t i = 0; i < n; i++)
		if (strcmp(h[i].key, key) == 0) {
			assert_null(v); /* no duplicates */
			v = h[i].value;
		}
	return v;
}

static void test_attempt_and_headers(void **state)
{
	(void)state;
	struct svc_delivery_header hs[6] = {
	    hdr("traceparent", 's', "00-abc-def-01", 0),
	    hdr("x-svccomm-attempt", 's', "2", 0),
	    hdr("x-death", 'n', "", 0),
	    hdr("x-first-death-queue", 's', "q.retry.1000", 0),
	    hdr("priority", 'i', "5", 5),
	    hdr("x-svccomm-error", 's', "old", 0),
	};
	struct svc_delivery d = {.exchange = "", .routing_key = "q", .headers = hs, .n_headers = 6};
	assert_int_equal(svc_consumer_attempt(&d), 2);
	hs[1] = hdr("x-svccomm-attempt", 'i', "3", 3);
	assert_int_equal(svc_consumer_attempt(&d), 3);
	hs[1] = hdr("x-svccomm-attempt", 's', "junk", 0);
	assert_int_equal(svc_consumer_attempt(&d), 1);
	d.n_headers = 0;
	assert_int_equal(svc_consumer_attempt(&d), 1);
	d.n_headers = 6;

	struct svc_amqp_header out[16];
	char num[48];
	struct svc_failure_info retry = {
	    .next_attempt = 4, .exchange = "user", .routing_key = "update.base", .error = "boom"};
	size_t n = svc_consumer_build_headers(&d, &retry, out, 16, num);
	assert_string_equal(find(out, n, "traceparent"), "00-abc-def-01");
	assert_string_equal(find(out, n, "priority"), "5");
	assert_string_equal(find(out, n, "x-svccomm-attempt"), "4");
	assert_string_equal(find(out, n, "x-svccomm-error"), "boom");
	assert_string_equal(find(out, n, "x-svccomm-exchange"), "user");
	assert_string_equal(find(out, n, "x-svccomm-routing-key"), "update.base");
	assert_null(find(out, n, "x-death"));
	assert_null(find(out, n, "x-first-death-queue"));
	assert_null(find(out, n, "x-svccomm-attempts"));
	assert_int_equal(n, 6);

	struct svc_failure_info dl = {.dead_letter = true,
	                              .attempts = 4,
	                              .exchange = "user",
	                              .routing_key = "update.base",
	                              .error = "boom\ntraceback",
	                              .handler = "app:apps/app/consumers.lua:3",
	                              .reason = "max-attempts"};
	n = svc_consumer_build_headers(&d, &dl, out, 16, num);
	assert_string_equal(find(out, n, "x-svccomm-attempts"), "4");
	assert_string_equal(find(out, n, "x-svccomm-reason"), "max-attempts");
	assert_string_equal(find(out, n, "x-svccomm-handler"), "app:apps/app/consumers.lua:3");
	assert_string_equal(find(out, n, "x-svccomm-error"), "boom\ntraceback");
	assert_null(find(out, n, "x-svccomm-attempt"));
	/* the own headers always fit, even when max is small */
	n = svc_consumer_build_headers(&d, &dl, out, 6, num);
	assert_int_equal(n, 6);
	assert_string_equal(find(out, n, "x-svccomm-routing-key"), "update.base");
}

/* Both paths that need a message's first exchange and routing key (processing it, and blaming
 * it after a failed COMMIT) read them here; both headers must be strings. */
static void test_origin(void **state)
{
	(void)state;
	struct svc_delivery_header hs[2] = {
	    hdr("x-svccomm-exchange", 's', "user", 0),
	    hdr("x-svccomm-routing-key", 's', "update.base", 0),
	};
	struct svc_delivery d = {
	    .exchange = "", .routing_key = "orders", .headers = hs, .n_headers = 2};
	const char *ex = NULL, *rk = NULL;

	svc_consumer_origin(&d, &ex, &rk);
	assert_string_equal(ex, "user");
	assert_string_equal(rk, "update.base");
	/* one of the two is not enough */
	d.n_headers = 1;
	svc_consumer_origin(&d, &ex, &rk);
	assert_string_equal(ex, "");
	assert_string_equal(rk, "orders");
	d.n_headers = 2;
	/* another kind is no name, although it has a string form ("5", or "" for a table) */
	hs[0] = hdr("x-svccomm-exchange", 'i', "5", 5);
	svc_consumer_origin(&d, &ex, &rk);
	assert_string_equal(ex, "");
	assert_string_equal(rk, "orders");
	hs[0] = hdr("x-svccomm-exchange", 's', "user", 0);
	hs[1] = hdr("x-svccomm-routing-key", 'n', "", 0);
	svc_consumer_origin(&d, &ex, &rk);
	assert_string_equal(ex, "");
	assert_string_equal(rk, "orders");
	d.n_headers = 0;
	svc_consumer_origin(&d, &ex, &rk);
	assert_string_equal(ex, "");
	assert_string_equal(rk, "orders");
}

/* Only a copy signed under the deployment's key has its x-svccomm-* headers believed: a
 * sender's forged origin, attempt, body or queue, or another key, fails the check. */
static void test_copy_signature(void **state)
{
	(void)state;
	unsigned char key[SVC_COPY_KEY_LEN], other[SVC_COPY_KEY_LEN], again[SVC_COPY_KEY_LEN];
	char sig[SVC_COPY_SIGNATURE_LEN + 1], sig2[SVC_COPY_SIGNATURE_LEN + 1];
	char body[] = "{\"a\":1}";

	svc_consumer_copy_key("amqp://svc:s3cret@broker-a:5672/prod", key);
	svc_consumer_copy_key("amqp://svc:s3cret@10.0.0.7/prod", again);
	assert_memory_equal(key, again, SVC_COPY_KEY_LEN); /* the host does not matter */
	svc_consumer_copy_key("amqp://svc:other@broker-a:5672/prod", other);
	assert_memory_not_equal(key, other, SVC_COPY_KEY_LEN);
	svc_consumer_copy_key("amqp://svc:s3cret@broker-a:5672/test", other);
	assert_memory_not_equal(key, other, SVC_COPY_KEY_LEN);

	assert_int_equal(svc_consumer_sign_copy(key, "orders", "private", "user.update", 2, body,
	                                        strlen(body), sig),
	                 0);
	assert_int_equal(strlen(sig), SVC_COPY_SIGNATURE_LEN);
	struct svc_delivery_header hs[4] = {
	    hdr("x-svccomm-exchange", 's', "private", 0),
	    hdr("x-svccomm-routing-key", 's', "user.update", 0),
	    hdr("x-svccomm-attempt", 's', "2", 0),
	    hdr(SVC_COPY_SIGNATURE_HEADER, 's', sig, 0),
	};
	struct svc_delivery d = {.exchange = "",
	                         .routing_key = "orders",
	                         .headers = hs,
	                         .n_headers = 4,
	                         .body = body,
	                         .body_len = strlen(body)};
	assert_true(svc_consumer_copy_trusted(&d, "orders", key));
	assert_false(svc_consumer_copy_trusted(&d, "orders", other));
	assert_false(svc_consumer_copy_trusted(&d, "payments", key));
	/* a forged attempt, origin or body */
	hs[2] = hdr("x-svccomm-attempt", 's', "1000", 0);
	assert_false(svc_consumer_copy_trusted(&d, "orders", key));
	hs[2] = hdr("x-svccomm-attempt", 's', "2", 0);
	hs[0] = hdr("x-svccomm-exchange", 's', "admin", 0);
	assert_false(svc_consumer_copy_trusted(&d, "orders", key));
	hs[0] = hdr("x-svccomm-exchange", 's', "private", 0);
	body[5] = '2';
	assert_false(svc_consumer_copy_trusted(&d, "orders", key));
	body[5] = '1';
	assert_true(svc_consumer_copy_trusted(&d, "orders", key));
	/* no signature, a wrong one, or no origin headers */
	d.n_headers = 3;
	assert_false(svc_consumer_copy_trusted(&d, "orders", key));
	d.n_headers = 4;
	memcpy(sig2, sig, sizeof(sig2));
	sig2[0] = sig2[0] == '0' ? '1' : '0';
	hs[3] = hdr(SVC_COPY_SIGNATURE_HEADER, 's', sig2, 0);
	assert_false(svc_consumer_copy_trusted(&d, "orders", key));
	hs[3] = hdr(SVC_COPY_SIGNATURE_HEADER, 's', "", 0);
	assert_false(svc_consumer_copy_trusted(&d, "orders", key));
	/* names longer than an AMQP name are never signed */
	char longk[300];
	memset(longk, 'k', 299);
	longk[299] = '\0';
	assert_int_equal(
	    svc_consumer_sign_copy(key, "orders", "private", longk, 1, body, strlen(body), sig2),
	    SVC_EINVAL);
	/* the copy's headers carry the signature, and never pass an older one on */
	hs[3] = hdr(SVC_COPY_SIGNATURE_HEADER, 's', sig, 0);
	struct svc_failure_info info = {.next_attempt = 3,
	                                .exchange = "private",
	                                .routing_key = "user.update",
	                                .error = "boom",
	                                .signature = sig2};
	struct svc_amqp_header out[16];
	char numbuf[48];
	size_t n = svc_consumer_build_headers(&d, &info, out, 16, numbuf);
	size_t found = 0;
	for (size_t i = 0; i < n; i++)
		if (strcmp(out[i].key, SVC_COPY_SIGNATURE_HEADER) == 0) {
			found++;
			assert_ptr_equal(out[i].value, sig2);
		}
	assert_int_equal(found, 1);
}

/* A copy never carries headers that would push it, plus the broker's x-death, over the frame
 * size; an oversize body's copy says how large the body was. */
static void test_copy_bounds(void **state)
{
	(void)state;
	static char big[SVC_COPY_HEADERS_MAX + 1];
	memset(big, 'x', sizeof(big) - 1);
	struct svc_delivery_header hs[3] = {
	    hdr("h", 's', "kept", 0),
	    hdr("big", 's', big, 0),
	    hdr("x-death", 'n', "", 0),
	};
	struct svc_delivery d = {.exchange = "", .routing_key = "q", .headers = hs, .n_headers = 1};
	struct svc_amqp_header out[16];
	char num[48];
	struct svc_failure_info dl = {
	    .dead_letter = true, .attempts = 1, .exchange = "e", .routing_key = "k", .reason = "r"};

	assert_int_equal(svc_consumer_headers_size(&d), 1 + 1 + 1 + 4 + 4);
	assert_false(svc_consumer_headers_too_large(&d));
	d.n_headers = 3; /* x-death is not copied, so not counted */
	assert_int_equal(svc_consumer_headers_size(&d), 11 + 1 + 3 + 1 + 4 + SVC_COPY_HEADERS_MAX);
	assert_true(svc_consumer_headers_too_large(&d));
	size_t n = svc_consumer_build_headers(&d, &dl, out, 16, num);
	assert_null(find(out, n, "big"));
	assert_null(find(out, n, "h")); /* none of them: the copy says why instead */
	assert_string_equal(find(out, n, "x-svccomm-reason"), "r");
	assert_null(find(out, n, "x-svccomm-body-truncated"));

	/* a name over 255 bytes cannot be an exchange or routing key: not copied */
	d.n_headers = 1;
	dl.routing_key = big;
	d.oversize = true;
	d.body_size = 200011;
	n = svc_consumer_build_headers(&d, &dl, out, 16, num);
	assert_string_equal(find(out, n, "h"), "kept");
	assert_null(find(out, n, "x-svccomm-routing-key"));
	assert_string_equal(find(out, n, "x-svccomm-exchange"), "e");
	assert_string_equal(find(out, n, "x-svccomm-attempts"), "1");
	assert_string_equal(find(out, n, "x-svccomm-body-truncated"), "200011");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_failure_action),      cmocka_unit_test(test_delay_and_names),
	    cmocka_unit_test(test_should_commit),       cmocka_unit_test(test_message_id),
	    cmocka_unit_test(test_quote_ident),         cmocka_unit_test(test_error_excerpt),
	    cmocka_unit_test(test_attempt_and_headers), cmocka_unit_test(test_origin),
	    cmocka_unit_test(test_copy_signature),      cmocka_unit_test(test_copy_bounds),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
