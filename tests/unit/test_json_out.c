/* Unit tests for util/json_out.c */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/json_out.h"

/* The JSON text svc_json_put_mem writes for s[0..len); caller frees. */
static char *put(const char *s, size_t len)
{
	char *buf = NULL;
	size_t size = 0;
	FILE *f = open_memstream(&buf, &size);

	assert_non_null(f);
	svc_json_put_mem(f, s, len);
	fclose(f);
	return buf;
}

static void check(const char *s, size_t len, const char *want)
{
	char *got = put(s, len);

	assert_string_equal(got, want);
	free(got);
}

static void test_plain_and_null(void **state)
{
	char *buf = NULL;
	size_t size = 0;
	FILE *f;

	(void)state;
	check("abc", 3, "\"abc\"");
	check("", 0, "\"\"");
	f = open_memstream(&buf, &size);
	svc_json_put_str(f, NULL);
	fclose(f);
	assert_string_equal(buf, "null");
	free(buf);
}

static void test_escapes(void **state)
{
	(void)state;
	check("a\"b\\c", 5, "\"a\\\"b\\\\c\"");
	check("l1\nl2\r\t", 7, "\"l1\\nl2\\r\\t\"");
	check("\x01\x1f\x7f", 3, "\"\\u0001\\u001f\\u007f\"");
	check("a\0b", 3, "\"a\\u0000b\"");
}

static void test_utf8_kept_and_bad_bytes_escaped(void **state)
{
	(void)state;
	check("h\xc3\xa9", 3, "\"h\xc3\xa9\"");
	check("\xf0\x9f\x98\x80", 4, "\"\xf0\x9f\x98\x80\"");
	check("\xff", 1, "\"\\u00ff\"");
	check("\xc3", 1, "\"\\u00c3\"");                       /* truncated sequence */
	check("\xed\xa0\x80", 3, "\"\\u00ed\\u00a0\\u0080\""); /* a surrogate */
}

static void text(const char *s, size_t len, size_t max, const char *want)
{
	char *buf = NULL;
	size_t size = 0;
	FILE *f = open_memstream(&buf, &size);

	assert_non_null(f);
	svc_text_put_mem(f, s, len, max);
	fclose(f);
	assert_string_equal(buf, want);
	free(buf);
}

static void test_text_is_one_clean_line(void **state)
{
	(void)state;
	text("plain", 5, 100, "plain");
	text("a\nb\x1b[31m", 8, 100, "a\\x0ab\\x1b[31m");
	text("h\xc3\xa9\xff", 4, 100, "h\xc3\xa9\\xff");
	text("abcdef", 6, 3, "abc...");
	text("a\xc3\xa9", 3, 2, "a..."); /* never half a character */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_plain_and_null),
	    cmocka_unit_test(test_escapes),
	    cmocka_unit_test(test_utf8_kept_and_bad_bytes_escaped),
	    cmocka_unit_test(test_text_is_one_clean_line),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
