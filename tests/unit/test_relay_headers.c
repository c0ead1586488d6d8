/* Unit tests for relay/headers.c: the outbox headers column (a JSON object of scalars) parsed
 * into AMQP headers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "relay/headers.h"
#include "util/error.h"

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

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(headers_strings_and_scalars),
	    cmocka_unit_test(headers_empty_and_invalid),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
