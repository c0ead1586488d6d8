/* Unit tests for log.c: level parsing, error names, escaping of control characters and
 * key=value fields. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include <cmocka.h>
#include <string.h>

#include "util/log.h"
#include "util/error.h"

static void parses_levels(void **state)
{
	enum svc_log_level l;

	(void)state;
	assert_int_equal(svc_log_parse_level("debug", &l), 0);
	assert_int_equal(l, SVC_LOG_DEBUG);
	assert_int_equal(svc_log_parse_level("WARNING", &l), 0);
	assert_int_equal(l, SVC_LOG_WARNING);
	assert_int_equal(svc_log_parse_level("verbose", &l), SVC_EINVAL);
}

static void escapes_control_characters(void **state)
{
	char out[64];

	(void)state;
	assert_int_equal(svc_log_escape(out, sizeof(out), "a\nb\rc\td\x1b[31me\x7f\x01"), 27);
	assert_string_equal(out, "a\\nb\\rc\\td\\x1b[31me\\x7f\\x01");
	/* Text, UTF-8 and backslashes are kept as they are. */
	svc_log_escape(out, sizeof(out), "caf\xc3\xa9 \\n ok");
	assert_string_equal(out, "caf\xc3\xa9 \\n ok");
	/* Cut between whole escapes, never inside one. */
	assert_int_equal(svc_log_escape(out, 5, "ab\x1b"), 2);
	assert_string_equal(out, "ab");
	assert_int_equal(svc_log_escape(out, 1, "abc"), 0);
	assert_string_equal(out, "");
}

/* Redirects stderr to a temporary file; end_capture reads it back and restores stderr. */
static FILE *begin_capture(int *saved)
{
	FILE *tmp = tmpfile();

	assert_non_null(tmp);
	fflush(stderr);
	*saved = dup(2);
	assert_int_not_equal(dup2(fileno(tmp), 2), -1);
	return tmp;
}

static void end_capture(FILE *tmp, int saved, char *buf, size_t cap)
{
	size_t n;

	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	rewind(tmp);
	n = fread(buf, 1, cap - 1, tmp);
	buf[n] = '\0';
	fclose(tmp);
}

/* Runs svc_log_write with stderr redirected to a file; returns what it wrote. */
static void capture_log(char *buf, size_t cap, const char *component, const char *text)
{
	int saved;
	FILE *tmp = begin_capture(&saved);

	svc_log_write(SVC_LOG_ERROR, component, "message %s", text);
	end_capture(tmp, saved, buf, cap);
}

static void a_forged_line_stays_on_its_line(void **state)
{
	char buf[4096], big[3000];

	(void)state;
	svc_log_set_tag("worker\n1");
	capture_log(buf, sizeof(buf), "con\rsumer",
	            "a\n2026-01-01T00:00:00.000Z ERROR [consumer] forged");
	svc_log_set_tag(NULL);
	assert_non_null(
	    strstr(buf, " error worker\\n1 [con\\rsumer] message a\\n2026-01-01T00:00:00.000Z "
	                "ERROR [consumer] forged\n"));
	assert_ptr_equal(strchr(buf, '\n'), buf + strlen(buf) - 1);

	/* A message longer than a line is cut, still one line ending in a newline. */
	memset(big, '\x1b', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	capture_log(buf, sizeof(buf), "c", big);
	assert_true(strlen(buf) <= 2048);
	assert_ptr_equal(strchr(buf, '\n'), buf + strlen(buf) - 1);
	assert_non_null(strstr(buf, "\\x1b\\x1b\n"));
}

static void writes_fields_as_key_value(void **state)
{
	const struct svc_log_field fields[] = {
	    {"message_id", "m-1"}, {"order", "17"}, {"note", "two words"}, {"quote", "a\"b\\c"},
	    {"empty", ""},         {"eq", "k=v"},   {"nl", "x\ny"},
	};
	char buf[4096];
	int saved;
	FILE *tmp;

	(void)state;
	svc_log_set_tag("worker 2");
	tmp = begin_capture(&saved);
	svc_log_write_fields(SVC_LOG_WARNING, "handler", "order stored", fields, 7);
	svc_log_write_fields(SVC_LOG_DEBUG, "handler", "filtered out", fields, 1);
	end_capture(tmp, saved, buf, sizeof(buf));
	svc_log_set_tag(NULL);
	assert_non_null(strstr(buf,
	                       " warning worker 2 [handler] order stored message_id=m-1 order=17 "
	                       "note=\"two words\" quote=\"a\\\"b\\\\c\" empty=\"\" "
	                       "eq=\"k=v\" nl=x\\ny\n"));
	assert_null(strstr(buf, "filtered out"));
	assert_ptr_equal(strchr(buf, '\n'), buf + strlen(buf) - 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(parses_levels),
	    cmocka_unit_test(escapes_control_characters),
	    cmocka_unit_test(a_forged_line_stays_on_its_line),
	    cmocka_unit_test(writes_fields_as_key_value),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
