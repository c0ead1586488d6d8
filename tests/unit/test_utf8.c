/* Unit tests for utf8.c */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "util/utf8.h"

static bool valid(const char *s)
{
	return svc_utf8_valid(s, strlen(s), NULL);
}

static void test_ascii_and_empty(void **state)
{
	(void)state;
	assert_true(svc_utf8_valid("", 0, NULL));
	assert_true(valid("{\"a\": 1, \"b\": \"plain ascii text that is long\"}"));
}

static void test_multibyte(void **state)
{
	(void)state;
	assert_true(valid("h\xc3\xa9llo"));                     /* é */
	assert_true(valid("\xe2\x82\xac"));                     /* € */
	assert_true(valid("\xf0\x9f\x98\x80 smile"));           /* U+1F600 */
	assert_true(valid("\xef\xbf\xbf"));                     /* U+FFFF */
	assert_true(valid("\xf4\x8f\xbf\xbf"));                 /* U+10FFFF */
	assert_true(valid("0123456789abcdef\xd0\xbf\xd1\x80")); /* after the 8-byte path */
}

static void test_invalid(void **state)
{
	size_t off = 99;
	(void)state;
	assert_false(valid("\x80"));             /* lone continuation */
	assert_false(valid("\xc0\xaf"));         /* overlong '/' */
	assert_false(valid("\xc1\xbf"));         /* overlong */
	assert_false(valid("\xe0\x80\xaf"));     /* overlong 3-byte */
	assert_false(valid("\xf0\x80\x80\xaf")); /* overlong 4-byte */
	assert_false(valid("\xed\xa0\x80"));     /* surrogate U+D800 */
	assert_false(valid("\xf4\x90\x80\x80")); /* above U+10FFFF */
	assert_false(valid("\xf5\x80\x80\x80"));
	assert_false(valid("\xff"));
	assert_false(valid("\xc3"));         /* truncated at the end */
	assert_false(valid("\xe2\x82"));     /* truncated */
	assert_false(valid("\xe2\x28\xa1")); /* bad continuation */
	assert_false(svc_utf8_valid("abcdefghij\xc3(", 12, &off));
	assert_int_equal(off, 10);
}

static void test_embedded_nul_is_valid(void **state)
{
	(void)state;
	assert_true(svc_utf8_valid("a\0b", 3, NULL));
}

static void test_large_buffer(void **state)
{
	(void)state;
	size_t n = 1 << 20;
	char *buf = malloc(n);
	assert_non_null(buf);
	for (size_t i = 0; i < n; i++)
		buf[i] = (char)('a' + i % 26);
	memcpy(buf + n - 3, "\xe2\x82\xac", 3);
	assert_true(svc_utf8_valid(buf, n, NULL));
	buf[n / 2] = (char)0xfe;
	size_t off = 0;
	assert_false(svc_utf8_valid(buf, n, &off));
	assert_int_equal(off, n / 2);
	free(buf);
}

static void test_put_and_hex4(void **state)
{
	char out[4];
	(void)state;
	assert_int_equal(svc_utf8_put(out, 0x41), 1);
	assert_memory_equal(out, "A", 1);
	assert_int_equal(svc_utf8_put(out, 0xE9), 2);
	assert_memory_equal(out, "\xc3\xa9", 2);
	assert_int_equal(svc_utf8_put(out, 0x20AC), 3);
	assert_memory_equal(out, "\xe2\x82\xac", 3);
	assert_int_equal(svc_utf8_put(out, 0x1F600), 4);
	assert_memory_equal(out, "\xf0\x9f\x98\x80", 4);
	assert_true(svc_utf8_valid(out, 4, NULL));
	assert_int_equal(svc_utf8_hex4("00e9"), 0xE9);
	assert_int_equal(svc_utf8_hex4("D83D"), 0xD83D);
	assert_int_equal(svc_utf8_hex4("12g4"), -1);
	assert_int_equal(svc_utf8_hex4("1\0zz"), -1); /* stops at the first non-hex byte */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_ascii_and_empty), cmocka_unit_test(test_multibyte),
	    cmocka_unit_test(test_invalid),         cmocka_unit_test(test_embedded_nul_is_valid),
	    cmocka_unit_test(test_large_buffer),    cmocka_unit_test(test_put_and_hex4),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
