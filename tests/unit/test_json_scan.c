/* Unit tests for util/json_scan.c: one top-level field out of hostile JSON bytes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"
#include "util/json_scan.h"

static void test_json_top_field(void **state)
{
	char out[64];
	(void)state;
	const char *env = "{\"payload\": {\"eventId\": \"inner\", \"x\": [1, {\"a\": \"}\"}]},"
	                  " \"eventId\": \"42\", \"aggregate\": \"user\"}";
	assert_int_equal(svc_json_top_field(env, strlen(env), "eventId", out, sizeof(out)), 0);
	assert_string_equal(out, "42");
	const char *py = "{\"eventId\": 9103, \"event_type\": \"update.base\"}";
	assert_int_equal(svc_json_top_field(py, strlen(py), "eventId", out, sizeof(out)), 0);
	assert_string_equal(out, "9103");
	assert_int_equal(svc_json_top_field(py, strlen(py), "missing", out, sizeof(out)),
	                 SVC_EINVAL);
	const char *bad = "{\"eventId\": ";
	assert_int_equal(svc_json_top_field(bad, strlen(bad), "eventId", out, sizeof(out)),
	                 SVC_EINVAL);
	assert_int_equal(svc_json_top_field("[1,2]", 5, "eventId", out, sizeof(out)), SVC_EINVAL);
	const char *esc = "{\"a\": \"x\\\"y\", \"eventId\": \"7\"}";
	assert_int_equal(svc_json_top_field(esc, strlen(esc), "eventId", out, sizeof(out)), 0);
	assert_string_equal(out, "7");
	const char *obj = "{\"eventId\": {\"n\": 1}}";
	assert_int_equal(svc_json_top_field(obj, strlen(obj), "eventId", out, sizeof(out)),
	                 SVC_EINVAL);
}

static void test_json_deep_nesting(void **state)
{
	(void)state;
	size_t depth = 100000;
	size_t len = 2 * depth + 64;
	char *buf = malloc(len);
	assert_non_null(buf);
	size_t n = (size_t)sprintf(buf, "{\"deep\": ");
	for (size_t i = 0; i < depth; i++)
		buf[n++] = '[';
	for (size_t i = 0; i < depth; i++)
		buf[n++] = ']';
	n += (size_t)sprintf(buf + n, ", \"eventId\": 5}");
	char out[16];
	assert_int_equal(svc_json_top_field(buf, n, "eventId", out, sizeof(out)), 0);
	assert_string_equal(out, "5");
	free(buf);
}

/* A zero byte is a bad byte like any other: nested, it used to stop the scanner without moving
 * it forward, so the loop never ended (a message could hang its worker). */
static void test_json_zero_bytes(void **state)
{
	char out[16];
	(void)state;
	static const char nested[] = "{\"x\": [\0], \"eventId\": 1}";
	assert_int_equal(
	    svc_json_top_field(nested, sizeof(nested) - 1, "eventId", out, sizeof(out)),
	    SVC_EINVAL);
	static const char inner[] = "{\"x\": {\"a\": [1, tr\0ue]}, \"eventId\": 1}";
	assert_int_equal(svc_json_top_field(inner, sizeof(inner) - 1, "eventId", out, sizeof(out)),
	                 SVC_EINVAL);
	static const char top[] = "{\"x\": \0, \"eventId\": 1}";
	assert_int_equal(svc_json_top_field(top, sizeof(top) - 1, "eventId", out, sizeof(out)),
	                 SVC_EINVAL);
	/* inside a string it is skipped like any byte; a value with one would be cut short */
	static const char skipped[] = "{\"x\": \"a\0b\", \"eventId\": 2}";
	assert_int_equal(
	    svc_json_top_field(skipped, sizeof(skipped) - 1, "eventId", out, sizeof(out)), 0);
	assert_string_equal(out, "2");
	static const char cut[] = "{\"eventId\": \"a\0b\"}";
	assert_int_equal(svc_json_top_field(cut, sizeof(cut) - 1, "eventId", out, sizeof(out)),
	                 SVC_EINVAL);
}

/* The scanner reads only [json, json + len): no terminator is needed, none is trusted. */
static void test_json_bounds(void **state)
{
	char out[16];
	(void)state;
	const char *env = "{\"eventId\": \"12\"}";
	/* every proper prefix of the document is malformed */
	for (size_t n = 0; n < strlen(env); n++) {
		char *copy = malloc(n ? n : 1);
		assert_non_null(copy);
		memcpy(copy, env, n);
		assert_int_equal(svc_json_top_field(copy, n, "eventId", out, sizeof(out)),
		                 n >= 16 ? 0 : SVC_EINVAL);
		free(copy);
	}
	/* an escape as the very last byte */
	char *esc = malloc(9);
	assert_non_null(esc);
	memcpy(esc, "{\"a\": \"x\\", 9);
	assert_int_equal(svc_json_top_field(esc, 9, "eventId", out, sizeof(out)), SVC_EINVAL);
	free(esc);
	/* too long for out */
	const char *big = "{\"eventId\": \"0123456789abcdef\"}";
	assert_int_equal(svc_json_top_field(big, strlen(big), "eventId", out, sizeof(out)),
	                 SVC_EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_json_top_field),
	    cmocka_unit_test(test_json_deep_nesting),
	    cmocka_unit_test(test_json_zero_bytes),
	    cmocka_unit_test(test_json_bounds),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
