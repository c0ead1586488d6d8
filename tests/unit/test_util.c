/* Unit tests for the small util modules: ident.c, clock.c, backoff.c, hash.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "util/backoff.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/hash.h"
#include "util/ident.h"

static void quotes_identifiers(void **state)
{
	char out[SVC_IDENT_QUOTED_MAX], err[160];
	char long63[64], long64[65];

	(void)state;
	memset(long63, 'a', 63);
	long63[63] = '\0';
	memset(long64, 'a', 64);
	long64[64] = '\0';
	assert_int_equal(svc_ident_quote("svccomm_outbox", out, sizeof(out)), 0);
	assert_string_equal(out, "\"svccomm_outbox\"");
	assert_int_equal(svc_ident_quote("app.Outbox_2", out, sizeof(out)), 0);
	assert_string_equal(out, "\"app\".\"Outbox_2\"");
	assert_int_equal(svc_ident_check(long63, err, sizeof(err)), 0);
	assert_int_equal(svc_ident_check(long64, err, sizeof(err)), SVC_EINVAL);
	assert_non_null(strstr(err, "schema.name"));
	static const char *const bad[] = {"",    "1abc", "a-b",    "a.b.c", "a.",  ".a",
	                                  "a b", "a\"b", "a;drop", "ä",     "a.1b"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(svc_ident_quote(bad[i], out, sizeof(out)), SVC_EINVAL);
	assert_int_equal(svc_ident_quote("abc", out, 4), SVC_EINVAL); /* too small */
}

static void splits_identifiers(void **state)
{
	char schema[SVC_IDENT_MAX + 1], table[SVC_IDENT_MAX + 1];

	(void)state;
	assert_int_equal(svc_ident_split("s.t", schema, table), 0);
	assert_string_equal(schema, "s");
	assert_string_equal(table, "t");
	assert_int_equal(svc_ident_split("t", schema, table), 0);
	assert_string_equal(schema, "");
	assert_string_equal(table, "t");
}

static void formats_iso_times(void **state)
{
	char out[40];
	struct timespec t = {.tv_sec = 1764553879, .tv_nsec = 138123456};

	(void)state;
	assert_string_equal(svc_clock_iso(t, 3, out, sizeof(out)), "2025-12-01T01:51:19.138Z");
	assert_string_equal(svc_clock_iso(t, 6, out, sizeof(out)), "2025-12-01T01:51:19.138123Z");
	assert_true(svc_clock_is_iso_micro(out));
	assert_false(svc_clock_is_iso_micro("2025-12-01T01:51:19.138Z"));
	assert_null(svc_clock_iso(t, 6, out, 10));
	assert_true(svc_clock_mono() > 0);
}

/* The relay's retry delays (reconnects: base 0.5 s, cap RECONNECT_MAX_DELAY; missing exchanges:
 * no jitter) come from util/backoff. */
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
	assert_true(svc_backoff(-4, 0.5, 30, 5) == 0.5); /* rnd is clamped to [0, 1] */
}

/* The consumer reconnects after failure f (1, 2, ...) in svc_backoff(f - 1, 0.5, max, rnd). */
static void backoff_jitter_stays_in_its_half(void **state)
{
	(void)state;
	assert_true(svc_backoff(0, 0.5, 30, 0) >= 0.25);
	assert_true(svc_backoff(0, 0.5, 30, 0.999) <= 0.5);
	assert_true(svc_backoff(2, 0.5, 30, 0) >= 1.0);
	assert_true(svc_backoff(2, 0.5, 30, 0.999) <= 2.0);
	/* capped, however many failures */
	for (unsigned f = 1; f < 100; f++) {
		double d = svc_backoff((int)f - 1, 0.5, 30, 0.999);
		assert_true(d <= 30.0);
		assert_true(d >= svc_backoff((int)f - 1, 0.5, 30, 0.0));
	}
	assert_true(svc_backoff(999, 0.5, 30, 0) >= 15.0);
	/* the supervisor restarts after crash n in svc_backoff(n - 1, 0.5, 30, 1): no jitter */
	assert_true(svc_backoff(0, 0.5, 30, 1.0) == 0.5);
	assert_true(svc_backoff(2, 0.5, 30, 1.0) == 2.0);
	assert_true(svc_backoff(99, 0.5, 30, 1.0) == 30.0);
}

static void hashes_fnv1a(void **state)
{
	(void)state;
	/* Published FNV-1a 32-bit test vectors. */
	assert_int_equal(svc_hash_str(SVC_HASH_INIT, ""), 0x811c9dc5u);
	assert_int_equal(svc_hash_str(SVC_HASH_INIT, "a"), 0xe40c292cu);
	assert_int_equal(svc_hash_str(SVC_HASH_INIT, "foobar"), 0xbf9cf968u);
	assert_int_equal(svc_hash_bytes(svc_hash_str(SVC_HASH_INIT, "foo"), "bar", 3), 0xbf9cf968u);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(quotes_identifiers),
	    cmocka_unit_test(splits_identifiers),
	    cmocka_unit_test(formats_iso_times),
	    cmocka_unit_test(backoff_grows_caps_and_jitters),
	    cmocka_unit_test(backoff_jitter_stays_in_its_half),
	    cmocka_unit_test(hashes_fnv1a),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
