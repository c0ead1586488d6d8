/* Unit tests for relay/trace.c: the id ranges of the relay's debug-only stage-time lines. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "relay/trace.h"

static const char *ranges(const int64_t *ids, size_t n, char *buf, size_t cap)
{
	struct svc_id_ranges ir;

	svc_id_ranges_init(&ir, buf, cap);
	for (size_t i = 0; i < n; i++)
		svc_id_ranges_add(&ir, ids[i]);
	return svc_id_ranges_end(&ir);
}

static void consecutive_ids_become_ranges(void **state)
{
	char buf[128];
	const int64_t ids[] = {3, 4, 5, 9, 11, 12, 7};

	(void)state;
	assert_string_equal(ranges(ids, 7, buf, sizeof(buf)), "3-5,9,11-12,7");
	assert_string_equal(ranges(ids, 0, buf, sizeof(buf)), "");
	assert_string_equal(ranges(ids + 3, 1, buf, sizeof(buf)), "9");
}

static void large_and_negative_ids(void **state)
{
	char buf[128];
	const int64_t ids[] = {INT64_MAX - 1, INT64_MAX, -2, -1};

	(void)state;
	assert_string_equal(ranges(ids, 4, buf, sizeof(buf)),
	                    "9223372036854775806-9223372036854775807,-2--1");
}

static void too_many_ids_are_cut_visibly(void **state)
{
	char buf[16];
	const int64_t ids[] = {100, 102, 104, 106, 108, 110};
	struct svc_id_ranges ir;

	(void)state;
	svc_id_ranges_init(&ir, buf, sizeof(buf));
	for (size_t i = 0; i < 6; i++)
		svc_id_ranges_add(&ir, ids[i]);
	assert_string_equal(svc_id_ranges_end(&ir), "100,102,104...");
	assert_true(ir.cut);
	assert_true(strlen(buf) < sizeof(buf));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(consecutive_ids_become_ranges),
	    cmocka_unit_test(large_and_negative_ids),
	    cmocka_unit_test(too_many_ids_are_cut_visibly),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
