/* Unit tests for log.c: level parsing, error names, escaping of control characters and
 * key=value fields, JSON lines and their escaping. */
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
	    {"message_id", "m-1", false}, {"order", "17", true}, {"note", "two words", false},
	    {"quote", "a\"b\\c", false},  {"empty", "", false},  {"eq", "k=v", false},
	    {"nl", "x\ny", false},
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

static void json_escapes_quotes_controls_and_bad_utf8(void **state)
{
	char out[128];

	(void)state;
	assert_int_equal(svc_log_json_escape(out, sizeof(out), "a\"b\\c\nd\re\tf\x01g\x7f"), 29);
	assert_string_equal(out, "a\\\"b\\\\c\\nd\\re\\tf\\u0001g\\u007f");
	/* valid UTF-8 is kept; each invalid byte (a lone continuation, a truncated sequence, an
	 * overlong encoding) becomes U+FFFD */
	svc_log_json_escape(out, sizeof(out), "caf\xc3\xa9 \xe2\x82\xac");
	assert_string_equal(out, "caf\xc3\xa9 \xe2\x82\xac");
	svc_log_json_escape(out, sizeof(out),
	                    "a\x80"
	                    "b\xc3");
	assert_string_equal(out, "a\\ufffdb\\ufffd");
	svc_log_json_escape(out, sizeof(out), "\xc0\xafx\xed\xa0\x80");
	assert_string_equal(out, "\\ufffd\\ufffdx\\ufffd\\ufffd\\ufffd");
	/* cut between whole escapes and whole characters */
	assert_int_equal(svc_log_json_escape(out, 7, "ab\ncd"), 6);
	assert_string_equal(out, "ab\\ncd");
	assert_int_equal(svc_log_json_escape(out, 4, "ab\n"), 2);
	assert_string_equal(out, "ab");
	assert_int_equal(svc_log_json_escape(out, 4, "a\xe2\x82\xac"), 1);
	assert_string_equal(out, "a");
	assert_int_equal(svc_log_json_escape(out, 1, "abc"), 0);
	assert_string_equal(out, "");
}

static void json_lines_carry_fixed_members_and_fields(void **state)
{
	const struct svc_log_field fields[] = {
	    SVC_LOG_STR("queue", "q\n1"),     SVC_LOG_NUM("attempt", "3"),
	    SVC_LOG_NUM("bad_number", "0x1"), SVC_LOG_STR("msg", "forged"),
	    SVC_LOG_STR("error", "x\"y"),     SVC_LOG_STR("queue", "again"),
	};
	char buf[32768], big[20000];
	const char *line2;
	int saved;
	FILE *tmp;

	(void)state;
	svc_log_format = SVC_LOG_JSON;
	svc_log_set_tag("worker 2");
	tmp = begin_capture(&saved);
	svc_log_write_fields(SVC_LOG_WARNING, "consumer", "failed", fields, 6);
	svc_log_set_tag(NULL);
	svc_log_write(SVC_LOG_ERROR, "pg", "ERROR: x\nDETAIL: %s", "y");
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	svc_log_write_fields(
	    SVC_LOG_ERROR, "c", "big",
	    (const struct svc_log_field[]){SVC_LOG_STR("error", big), SVC_LOG_STR("queue", "lost")},
	    2);
	end_capture(tmp, saved, buf, sizeof(buf));
	svc_log_format = SVC_LOG_TEXT;
	assert_int_equal(strncmp(buf, "{\"ts\":\"", 7), 0);
	assert_non_null(strstr(buf,
	                       "Z\",\"level\":\"warning\",\"worker\":2,\"component\":\"consumer\","
	                       "\"msg\":\"failed\",\"queue\":\"q\\n1\",\"attempt\":3,"
	                       "\"bad_number\":\"0x1\",\"msg_\":\"forged\",\"error\":\"x\\\"y\","
	                       "\"queue_\":\"again\"}\n"));
	line2 = strchr(buf, '\n') + 1;
	assert_non_null(strstr(line2, "\"level\":\"error\",\"component\":\"pg\",\"msg\":\"ERROR: "
	                              "x\\nDETAIL: y\"}\n"));
	assert_null(strstr(line2, "worker"));
	/* a line longer than the buffer: its value is cut, the object still closed */
	line2 = strchr(line2, '\n') + 1;
	assert_true(strlen(line2) <= 8192);
	assert_non_null(strstr(line2, "\"msg\":\"big\",\"error\":\"xxx"));
	assert_string_equal(line2 + strlen(line2) - 5, "xx\"}\n");
	assert_null(strstr(line2, "lost"));
}

static void kv_fields_go_to_json_lines_only(void **state)
{
	const struct svc_log_field fields[] = {SVC_LOG_STR("queue", "q1"),
	                                       SVC_LOG_NUM("attempt", "2")};
	char buf[4096];
	int saved;
	FILE *tmp;

	(void)state;
	tmp = begin_capture(&saved);
	svc_log_write_kv(SVC_LOG_WARNING, "consumer", fields, 2, "message %s failed", "m-1");
	svc_log_format = SVC_LOG_JSON;
	svc_log_write_kv(SVC_LOG_WARNING, "consumer", fields, 2, "message %s failed", "m-1");
	svc_log_kv(SVC_LOG_DEBUG, "consumer", fields, 2, "filtered %s", "out");
	svc_log_format = SVC_LOG_TEXT;
	end_capture(tmp, saved, buf, sizeof(buf));
	/* text: the message names its values already */
	assert_non_null(strstr(buf, "Z warning [consumer] message m-1 failed\n{\"ts\":"));
	assert_non_null(strstr(buf, "\"msg\":\"message m-1 failed\",\"queue\":\"q1\","
	                            "\"attempt\":2}\n"));
	assert_null(strstr(buf, "filtered"));
}

static void stats_lines_share_one_format(void **state)
{
	const struct svc_log_stat stats[] = {
	    {"received", 120}, {"rate_per_s", 2.5}, {"backlog", -1}};
	char buf[4096];
	int saved;
	FILE *tmp;

	(void)state;
	tmp = begin_capture(&saved);
	svc_log_stats("consumer", stats, 3);
	svc_log_format = SVC_LOG_JSON;
	svc_log_stats("publisher", stats, 3);
	svc_log_format = SVC_LOG_TEXT;
	svc_log_threshold = SVC_LOG_WARNING;
	svc_log_stats("consumer", stats, 1);
	svc_log_threshold = SVC_LOG_INFO;
	end_capture(tmp, saved, buf, sizeof(buf));
	assert_non_null(
	    strstr(buf, "Z info [consumer] stats received=120 rate_per_s=2.5 backlog=-1\n{"));
	assert_non_null(strstr(buf,
	                       "\"level\":\"info\",\"component\":\"publisher\",\"msg\":"
	                       "\"stats\",\"received\":120,\"rate_per_s\":2.5,\"backlog\":-1}\n"));
	assert_ptr_equal(strchr(strchr(buf, '\n') + 1, '\n'), buf + strlen(buf) - 1);
}

static void parses_formats(void **state)
{
	enum svc_log_format f;

	(void)state;
	assert_int_equal(svc_log_parse_format("json", &f), 0);
	assert_int_equal(f, SVC_LOG_JSON);
	assert_int_equal(svc_log_parse_format("text", &f), 0);
	assert_int_equal(f, SVC_LOG_TEXT);
	assert_int_equal(svc_log_parse_format("JSON ", &f), SVC_EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(parses_levels),
	    cmocka_unit_test(escapes_control_characters),
	    cmocka_unit_test(a_forged_line_stays_on_its_line),
	    cmocka_unit_test(writes_fields_as_key_value),
	    cmocka_unit_test(json_escapes_quotes_controls_and_bad_utf8),
	    cmocka_unit_test(json_lines_carry_fixed_members_and_fields),
	    cmocka_unit_test(kv_fields_go_to_json_lines_only),
	    cmocka_unit_test(stats_lines_share_one_format),
	    cmocka_unit_test(parses_formats),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
