/* Unit tests for the relay's pure logic (publisher.c): the in-flight window and its confirm
 * bookkeeping, the claim exclusion range, backoff, and the headers parser. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "outbox/relay_sql.h"
#include "relay/relay.h"
#include "util/error.h"

static void add_rows(struct svc_flight *f, uint64_t first_seq, int64_t first_id, int n, int part)
{
	for (int i = 0; i < n; i++)
		assert_int_equal(svc_flight_add(f, first_seq + (uint64_t)i, first_id + i, part), 0);
}

static void multiple_ack_deletes_in_order(void **state)
{
	struct svc_flight f;

	(void)state;
	assert_int_equal(svc_flight_init(&f, 8), 0);
	add_rows(&f, 1, 100, 5, 3);
	assert_int_equal(svc_flight_add_batch(&f, 100, 104, 5), 0);
	assert_int_equal(f.part_count[3], 5);
	svc_flight_confirm(&f, 3, true, true);
	assert_int_equal(svc_flight_harvest(&f), 3);
	assert_int_equal(f.out.n_acked, 3);
	assert_int_equal(f.out.acked[0], 100);
	assert_int_equal(f.out.acked[2], 102);
	assert_int_equal(f.count, 2);
	assert_int_equal(f.part_count[3], 2);
	/* the batch is still in flight: its whole range stays excluded */
	int64_t lo, hi;
	assert_true(svc_flight_exclusion(&f, &lo, &hi));
	assert_int_equal(lo, 100);
	assert_int_equal(hi, 104);
	svc_flight_confirm(&f, 5, true, true);
	assert_int_equal(svc_flight_harvest(&f), 2);
	assert_int_equal(f.count, 0);
	assert_false(svc_flight_exclusion(&f, &lo, &hi));
	assert_int_equal(f.part_count[3], 0);
	svc_flight_release(&f);
}

static void single_acks_out_of_order_wait_for_the_head(void **state)
{
	struct svc_flight f;

	(void)state;
	assert_int_equal(svc_flight_init(&f, 8), 0);
	add_rows(&f, 10, 1, 3, 0);
	svc_flight_confirm(&f, 12, false, true);
	svc_flight_confirm(&f, 11, false, true);
	/* seq 10 undecided: nothing can be popped yet */
	assert_int_equal(svc_flight_harvest(&f), 0);
	int64_t last = 0;
	assert_int_equal(svc_flight_pending(&f, &last), 1);
	assert_int_equal(last, 1);
	svc_flight_confirm(&f, 10, false, true);
	assert_int_equal(svc_flight_harvest(&f), 3);
	assert_int_equal(f.out.n_acked, 3);
	svc_flight_release(&f);
}

static void nack_and_return_are_kept_apart(void **state)
{
	struct svc_flight f;

	(void)state;
	assert_int_equal(svc_flight_init(&f, 8), 0);
	add_rows(&f, 1, 50, 4, 1);
	svc_flight_return(&f, 2);              /* unroutable: return comes before its ack */
	svc_flight_confirm(&f, 2, true, true); /* acks 1 and 2 */
	svc_flight_confirm(&f, 3, false, false);
	svc_flight_confirm(&f, 4, false, true);
	assert_int_equal(svc_flight_harvest(&f), 4);
	assert_int_equal(f.out.n_acked, 2);
	assert_int_equal(f.out.acked[0], 50);
	assert_int_equal(f.out.acked[1], 53);
	assert_int_equal(f.out.n_returned, 1);
	assert_int_equal(f.out.returned[0], 51);
	assert_int_equal(f.out.n_nacked, 1);
	assert_int_equal(f.out.nacked[0], 52);
	svc_flight_release(&f);
}

static void multiple_nack_covers_every_undecided(void **state)
{
	struct svc_flight f;

	(void)state;
	assert_int_equal(svc_flight_init(&f, 8), 0);
	add_rows(&f, 1, 1, 4, 0);
	svc_flight_confirm(&f, 2, false, true);
	svc_flight_confirm(&f, 4, true, false);
	assert_int_equal(svc_flight_harvest(&f), 4);
	assert_int_equal(f.out.n_acked, 1);
	assert_int_equal(f.out.acked[0], 2);
	assert_int_equal(f.out.n_nacked, 3);
	svc_flight_release(&f);
}

static void unknown_tags_are_ignored(void **state)
{
	struct svc_flight f;

	(void)state;
	assert_int_equal(svc_flight_init(&f, 4), 0);
	svc_flight_confirm(&f, 7, true, true); /* nothing in flight */
	add_rows(&f, 20, 1, 2, 0);
	svc_flight_confirm(&f, 5, false, true);  /* before the window (an old channel) */
	svc_flight_confirm(&f, 99, false, true); /* beyond */
	assert_int_equal(svc_flight_harvest(&f), 0);
	/* a multiple ack beyond the last published seq covers what is there */
	svc_flight_confirm(&f, 99, true, true);
	assert_int_equal(svc_flight_harvest(&f), 2);
	svc_flight_release(&f);
}

static void window_is_bounded_and_sequences_checked(void **state)
{
	struct svc_flight f;

	(void)state;
	assert_int_equal(svc_flight_init(&f, 3), 0);
	add_rows(&f, 1, 1, 3, 0);
	assert_int_equal(svc_flight_free(&f), 0);
	assert_int_equal(svc_flight_add(&f, 4, 4, 0), SVC_EINVAL);
	svc_flight_confirm(&f, 1, false, true);
	assert_int_equal(svc_flight_harvest(&f), 1);
	assert_int_equal(svc_flight_add(&f, 9, 9, 0), SVC_EINVAL); /* not seq 4 */
	assert_int_equal(svc_flight_add(&f, 4, 4, 0), 0);          /* wraps around the ring */
	svc_flight_confirm(&f, 4, true, true);
	assert_int_equal(svc_flight_harvest(&f), 3);
	assert_int_equal(f.out.acked[2], 4);
	svc_flight_release(&f);
}

static void exclusion_spans_every_open_batch(void **state)
{
	struct svc_flight f;
	int64_t lo, hi;

	(void)state;
	assert_int_equal(svc_flight_init(&f, 16), 0);
	add_rows(&f, 1, 10, 3, 0); /* ids 10..12 */
	svc_flight_add_batch(&f, 10, 12, 3);
	/* second batch: a late row 5 and ids 20, 21 */
	assert_int_equal(svc_flight_add(&f, 4, 5, 0), 0);
	assert_int_equal(svc_flight_add(&f, 5, 20, 0), 0);
	assert_int_equal(svc_flight_add(&f, 6, 21, 0), 0);
	svc_flight_add_batch(&f, 5, 21, 6);
	assert_true(svc_flight_exclusion(&f, &lo, &hi));
	assert_int_equal(lo, 5);
	assert_int_equal(hi, 21);
	assert_int_equal(svc_flight_max_pending_id(&f), 21);
	svc_flight_confirm(&f, 3, true, true);
	svc_flight_harvest(&f);
	assert_true(svc_flight_exclusion(&f, &lo, &hi));
	assert_int_equal(lo, 5);
	assert_int_equal(hi, 21);
	svc_flight_confirm(&f, 6, true, true);
	svc_flight_harvest(&f);
	assert_false(svc_flight_exclusion(&f, &lo, &hi));
	svc_flight_release(&f);
}

static void clear_forgets_everything(void **state)
{
	struct svc_flight f;
	int64_t lo, hi;

	(void)state;
	assert_int_equal(svc_flight_init(&f, 4), 0);
	add_rows(&f, 1, 1, 2, 7);
	svc_flight_add_batch(&f, 1, 2, 2);
	svc_flight_clear(&f);
	assert_int_equal(f.count, 0);
	assert_int_equal(f.part_count[7], 0);
	assert_false(svc_flight_exclusion(&f, &lo, &hi));
	/* a new channel starts at seq 1 again */
	assert_int_equal(svc_flight_add(&f, 1, 3, 0), 0);
	svc_flight_confirm(&f, 1, false, true);
	assert_int_equal(svc_flight_harvest(&f), 1);
	assert_int_equal(f.out.acked[0], 3);
	svc_flight_release(&f);
}

static void backoff_grows_caps_and_jitters(void **state)
{
	(void)state;
	assert_true(svc_backoff(0, 0.5, 30, 1.0) == 0.5);
	assert_true(svc_backoff(1, 0.5, 30, 1.0) == 1.0);
	assert_true(svc_backoff(3, 0.5, 30, 1.0) == 4.0);
	assert_true(svc_backoff(50, 0.5, 30, 1.0) == 30.0);
	assert_true(svc_backoff(1000, 0.5, 30, 0.0) == 15.0);
	assert_true(svc_backoff(2, 0.5, 30, 0.5) == 1.5);
	assert_true(svc_backoff(-1, 0.5, 30, 1.0) == 0.5);
}

static void headers_strings_and_scalars(void **state)
{
	char json[] =
	    "{\"traceparent\": \"00-abc-01\", \"n\": 12, \"ok\": true, \"e\": \"a\\\"b\\\\c\\n\","
	    " \"u\": \"\\u00e9\\ud83d\\ude00\", \"z\": null}";
	struct svc_amqp_header h[8];
	size_t n = 0;

	(void)state;
	assert_int_equal(svc_relay_parse_headers(json, h, 8, &n), 0);
	assert_int_equal(n, 6);
	assert_string_equal(h[0].key, "traceparent");
	assert_string_equal(h[0].value, "00-abc-01");
	assert_string_equal(h[1].key, "n");
	assert_string_equal(h[1].value, "12");
	assert_string_equal(h[2].value, "true");
	assert_string_equal(h[3].value, "a\"b\\c\n");
	assert_string_equal(h[4].value, "\xc3\xa9\xf0\x9f\x98\x80");
	assert_string_equal(h[5].key, "z");
	assert_string_equal(h[5].value, "null");
}

static void headers_empty_and_invalid(void **state)
{
	struct svc_amqp_header h[2];
	size_t n = 9;
	char empty[] = " {} ", arr[] = "[\"a\"]", nested[] = "{\"a\": {\"b\": \"c\"}}",
	     trailing[] = "{\"a\": \"b\"} x", unterminated[] = "{\"a\": \"b",
	     toomany[] = "{\"a\":\"1\",\"b\":\"2\",\"c\":\"3\"}", nul[] = "{\"a\": \"\\u0000\"}",
	     compact[] = "{\"a\":1,\"b\":\"x\"}";

	(void)state;
	assert_int_equal(svc_relay_parse_headers(empty, h, 2, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(svc_relay_parse_headers(arr, h, 2, &n), SVC_EINVAL);
	assert_int_equal(svc_relay_parse_headers(nested, h, 2, &n), SVC_EINVAL);
	assert_int_equal(svc_relay_parse_headers(trailing, h, 2, &n), SVC_EINVAL);
	assert_int_equal(svc_relay_parse_headers(unterminated, h, 2, &n), SVC_EINVAL);
	assert_int_equal(svc_relay_parse_headers(toomany, h, 2, &n), SVC_EINVAL);
	assert_int_equal(svc_relay_parse_headers(nul, h, 2, &n), SVC_EINVAL);
	assert_int_equal(svc_relay_parse_headers(compact, h, 2, &n), 0);
	assert_int_equal(n, 2);
	assert_string_equal(h[0].value, "1");
	assert_string_equal(h[1].value, "x");
}

static void sql_names_are_validated_and_quoted(void **state)
{
	struct svc_relay_sql q;

	(void)state;
	assert_int_equal(svc_relay_sql_init(&q, "svccomm_outbox"), 0);
	assert_string_equal(q.table, "\"svccomm_outbox\"");
	assert_string_equal(q.channel, "svccomm_outbox");
	assert_non_null(strstr(q.claim_all, "ORDER BY id LIMIT $2"));
	svc_relay_sql_release(&q);
	assert_int_equal(svc_relay_sql_init(&q, "app.Outbox_2"), 0);
	assert_string_equal(q.table, "\"app\".\"Outbox_2\"");
	assert_string_equal(q.channel, "Outbox_2");
	svc_relay_sql_release(&q);
	assert_int_equal(svc_relay_sql_init(&q, "outbox\"; DROP TABLE x; --"), SVC_EINVAL);
	assert_int_equal(svc_relay_sql_init(&q, "a.b.c"), SVC_EINVAL);
	assert_int_equal(svc_relay_sql_init(&q, ".b"), SVC_EINVAL);
	assert_int_equal(svc_relay_sql_init(&q, "1abc"), SVC_EINVAL);
	/* lock keys: stable, positive, different per table and per kind */
	assert_true(svc_relay_key("p:", "t") >= 0);
	assert_int_equal(svc_relay_key("p:", "t"), svc_relay_key("p:", "t"));
	assert_true(svc_relay_key("p:", "t") != svc_relay_key("m:", "t"));
	assert_true(svc_relay_key("p:", "t") != svc_relay_key("p:", "u"));
}

/* The claim deletes the confirmed ids ($3) in the same statement; its SELECT still sees those
 * rows (snapshot before the CTE) so it must skip them as well as the ids in flight ($1). */
static void claim_deletes_confirmed_rows_and_skips_them(void **state)
{
	struct svc_relay_sql q;
	const char *texts[2];

	(void)state;
	assert_int_equal(svc_relay_sql_init(&q, "app.outbox"), 0);
	texts[0] = q.claim_all;
	texts[1] = q.claim_part;
	for (int i = 0; i < 2; i++) {
		const char *t = texts[i];

		assert_true(strncmp(t,
		                    "WITH d AS (DELETE FROM \"app\".\"outbox\" WHERE id = "
		                    "ANY($3::int8[]))",
		                    strlen("WITH d AS (DELETE FROM \"app\".\"outbox\" WHERE id = "
		                           "ANY($3::int8[]))")) == 0);
		assert_non_null(strstr(t, "id NOT IN (SELECT unnest($1::int8[]) UNION ALL SELECT "
		                          "unnest($3::int8[]))"));
		assert_non_null(strstr(t, "ORDER BY id LIMIT $2"));
	}
	assert_non_null(strstr(q.claim_part, "= ANY($4::int4[])"));
	svc_relay_sql_release(&q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(multiple_ack_deletes_in_order),
	    cmocka_unit_test(single_acks_out_of_order_wait_for_the_head),
	    cmocka_unit_test(nack_and_return_are_kept_apart),
	    cmocka_unit_test(multiple_nack_covers_every_undecided),
	    cmocka_unit_test(unknown_tags_are_ignored),
	    cmocka_unit_test(window_is_bounded_and_sequences_checked),
	    cmocka_unit_test(exclusion_spans_every_open_batch),
	    cmocka_unit_test(clear_forgets_everything),
	    cmocka_unit_test(backoff_grows_caps_and_jitters),
	    cmocka_unit_test(headers_strings_and_scalars),
	    cmocka_unit_test(headers_empty_and_invalid),
	    cmocka_unit_test(sql_names_are_validated_and_quoted),
	    cmocka_unit_test(claim_deletes_confirmed_rows_and_skips_them),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
