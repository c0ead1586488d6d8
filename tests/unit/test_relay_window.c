/* Unit tests for relay/window.c: the confirm window and its bookkeeping of acks, nacks and
 * returns. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "relay/window.h"
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
	assert_int_equal(f.part_count[3], 5);
	svc_flight_confirm(&f, 3, true, true);
	assert_int_equal(svc_flight_harvest(&f), 3);
	assert_int_equal(f.out.n_acked, 3);
	assert_int_equal(f.out.acked[0], 100);
	assert_int_equal(f.out.acked[2], 102);
	assert_int_equal(f.count, 2);
	assert_int_equal(f.part_count[3], 2);
	svc_flight_confirm(&f, 5, true, true);
	assert_int_equal(svc_flight_harvest(&f), 2);
	assert_int_equal(f.count, 0);
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

/* A return told by the row id (the message carried the relay's own message_id, no sequence
 * header): found in a wrapped ring, only while undecided, unknown ids ignored. */
static void return_by_row_id(void **state)
{
	struct svc_flight f;

	(void)state;
	assert_int_equal(svc_flight_init(&f, 4), 0);
	add_rows(&f, 1, 70, 3, 2);
	svc_flight_confirm(&f, 2, true, true);
	assert_int_equal(svc_flight_harvest(&f), 2);
	add_rows(&f, 4, 73, 3, 2); /* ids 72..75 in flight, the ring wrapped */
	assert_int_equal(svc_flight_return_id(&f, 74), 74);
	assert_int_equal(svc_flight_return_id(&f, 74), 0); /* already returned */
	assert_int_equal(svc_flight_return_id(&f, 70), 0); /* no longer in flight */
	assert_int_equal(svc_flight_return_id(&f, 99), 0);
	svc_flight_confirm(&f, 6, true, true);
	assert_int_equal(svc_flight_harvest(&f), 4);
	assert_int_equal(f.out.n_acked, 3);
	assert_int_equal(f.out.n_returned, 1);
	assert_int_equal(f.out.returned[0], 74);
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

/* Isolation after a channel error publishes one at a time up to the highest undecided id,
 * wherever it sits in the window (here a late row 5 follows ids 10..12). */
static void max_pending_id_is_the_highest_undecided(void **state)
{
	struct svc_flight f;

	(void)state;
	assert_int_equal(svc_flight_init(&f, 16), 0);
	add_rows(&f, 1, 10, 3, 0); /* ids 10..12 */
	/* a late row 5 and ids 20, 21 */
	assert_int_equal(svc_flight_add(&f, 4, 5, 0), 0);
	assert_int_equal(svc_flight_add(&f, 5, 20, 0), 0);
	assert_int_equal(svc_flight_add(&f, 6, 21, 0), 0);
	assert_int_equal(svc_flight_max_pending_id(&f), 21);
	svc_flight_confirm(&f, 3, true, true);
	svc_flight_harvest(&f);
	assert_int_equal(svc_flight_max_pending_id(&f), 21);
	svc_flight_confirm(&f, 6, true, true);
	svc_flight_harvest(&f);
	assert_int_equal(svc_flight_max_pending_id(&f), 0);
	svc_flight_release(&f);
}

static void clear_forgets_everything(void **state)
{
	struct svc_flight f;

	(void)state;
	assert_int_equal(svc_flight_init(&f, 4), 0);
	add_rows(&f, 1, 1, 2, 7);
	svc_flight_clear(&f);
	assert_int_equal(f.count, 0);
	assert_int_equal(f.part_count[7], 0);
	/* a new channel starts at seq 1 again */
	assert_int_equal(svc_flight_add(&f, 1, 3, 0), 0);
	svc_flight_confirm(&f, 1, false, true);
	assert_int_equal(svc_flight_harvest(&f), 1);
	assert_int_equal(f.out.acked[0], 3);
	svc_flight_release(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(multiple_ack_deletes_in_order),
	    cmocka_unit_test(single_acks_out_of_order_wait_for_the_head),
	    cmocka_unit_test(nack_and_return_are_kept_apart),
	    cmocka_unit_test(return_by_row_id),
	    cmocka_unit_test(multiple_nack_covers_every_undecided),
	    cmocka_unit_test(unknown_tags_are_ignored),
	    cmocka_unit_test(window_is_bounded_and_sequences_checked),
	    cmocka_unit_test(max_pending_id_is_the_highest_undecided),
	    cmocka_unit_test(clear_forgets_everything),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
