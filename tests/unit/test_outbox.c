/* Unit tests of the outbox's pure functions: table name rules and quoting (util/ident.h, which
 * the outbox relies on), the envelope (outbox/envelope.h), the INSERT text, eventTime texts and
 * the migration placeholder rendering. No database. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "lua/embedded.h"
#include "outbox/envelope.h"
#include "outbox/migrate.h"
#include "outbox/write.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/ident.h"

static void test_check_table_accepts(void **state)
{
	(void)state;
	assert_int_equal(svc_ident_check("svccomm_outbox", NULL, 0), 0);
	assert_int_equal(svc_ident_check("_x1", NULL, 0), 0);
	assert_int_equal(svc_ident_check("MySchema.Outbox_2", NULL, 0), 0);
	/* 63 bytes is the PostgreSQL identifier limit */
	char name[64];
	memset(name, 'a', 63);
	name[63] = '\0';
	assert_int_equal(svc_ident_check(name, NULL, 0), 0);
}

static void test_check_table_refuses(void **state)
{
	char err[256];
	const char *bad[] = {
	    "",           "1abc",  "outbox\"; DROP TABLE x; --",
	    "a b",        "a.b.c", ".a",
	    "a.",         "a-b",   "a;b",
	    "\"quoted\"", "é",     "a..b",
	    "schema.1x",
	};
	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		assert_int_equal(svc_ident_check(bad[i], err, sizeof(err)), SVC_EINVAL);
		assert_true(strlen(err) > 0);
	}
	assert_int_equal(svc_ident_check(NULL, err, sizeof(err)), SVC_EINVAL);
	char name[65];
	memset(name, 'a', 64);
	name[64] = '\0';
	assert_int_equal(svc_ident_check(name, NULL, 0), SVC_EINVAL);
}

static void test_quote_and_split(void **state)
{
	char q[SVC_IDENT_QUOTED_MAX], s[SVC_IDENT_MAX + 1], t[SVC_IDENT_MAX + 1];
	(void)state;
	assert_int_equal(svc_ident_quote("svccomm_outbox", q, sizeof(q)), 0);
	assert_string_equal(q, "\"svccomm_outbox\"");
	assert_int_equal(svc_ident_quote("Ops.Outbox", q, sizeof(q)), 0);
	assert_string_equal(q, "\"Ops\".\"Outbox\"");
	assert_int_equal(svc_ident_split("Ops.Outbox", s, t), 0);
	assert_string_equal(s, "Ops");
	assert_string_equal(t, "Outbox");
	assert_int_equal(svc_ident_split("plain", s, t), 0);
	assert_string_equal(s, "");
	assert_string_equal(t, "plain");
	assert_int_equal(svc_ident_quote("x\"y", q, sizeof(q)), SVC_EINVAL);
	assert_int_equal(svc_ident_quote("abc", q, 4), SVC_EINVAL); /* too small */
}

static void test_envelope_tail(void **state)
{
	char *s;
	(void)state;
	s = svc_envelope_tail("{\"eventType\":\"a\",\"payload\":{}}");
	assert_non_null(s);
	assert_string_equal(s, ",\"eventType\":\"a\",\"payload\":{}}");
	free(s);
	s = svc_envelope_tail("  { \"a\" : 1 }\n");
	assert_non_null(s);
	assert_string_equal(s, ",\"a\" : 1 }");
	free(s);
	s = svc_envelope_tail("{ }");
	assert_non_null(s);
	assert_string_equal(s, "}");
	free(s);
	assert_null(svc_envelope_tail("[1,2]"));
	assert_null(svc_envelope_tail("{"));
	assert_null(svc_envelope_tail("\"x\""));
	assert_null(svc_envelope_tail(""));
	assert_null(svc_envelope_tail(NULL));
}

static void test_envelope_members(void **state)
{
	char out[128];
	size_t n;
	(void)state;
	/* the bytes Python library consumers and svccomm's handlers read: order and names fixed */
	n = svc_envelope_members("\"update.base\"", "\"user\"", "{\"name\":\"Ada\"}", out,
	                         sizeof(out));
	assert_int_equal(n, strlen(out));
	assert_string_equal(out, "{\"eventType\":\"update.base\",\"aggregate\":\"user\","
	                         "\"payload\":{\"name\":\"Ada\"}}");
	/* snprintf's contract: the whole length, a cut text when out is too small */
	assert_int_equal(svc_envelope_members("\"t\"", "\"a\"", "{}", out, 8), 46);
	assert_string_equal(out, "{\"event");
	assert_int_equal(svc_envelope_members("\"t\"", "\"a\"", "{}", NULL, 0), 46);
}

/* Both statements that write events expand SVC_ENVELOPE_SQL: it must stay the text they had,
 * with the Python library's head beside it for WIRE_FORMAT = "django". */
static void test_envelope_sql_is_the_statements_text(void **state)
{
	(void)state;
#define T_INSERT                                                                                   \
	"COALESCE($13, to_char(coalesce($5::timestamptz, $1::timestamptz, clock_timestamp()) "     \
	"AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))"
	assert_string_equal(SVC_ENVELOPE_SQL("$14", "n.id", "$13", "$5", "$1", "$6"),
	                    "CASE WHEN $14 = 'django' THEN '{\"eventId\":' || n.id || "
	                    "',\"event_time\":\"' || left(" T_INSERT ", 23) || 'Z\"' "
	                    "ELSE '{\"eventId\":\"' || n.id || '\",\"eventTime\":\"' || " T_INSERT
	                    " || '\"' END || $6");
#undef T_INSERT
#define T_ROWS                                                                                     \
	"COALESCE(r.event_time_utc, to_char(coalesce(r.event_time::timestamptz, "                  \
	"r.send_after::timestamptz, clock_timestamp()) AT TIME ZONE 'UTC', "                       \
	"'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))"
	assert_string_equal(SVC_ENVELOPE_SQL("r.wire_format", "r.id", "r.event_time_utc",
	                                     "r.event_time", "r.send_after", "r.body"),
	                    "CASE WHEN r.wire_format = 'django' THEN '{\"eventId\":' || r.id || "
	                    "',\"event_time\":\"' || left(" T_ROWS ", 23) || 'Z\"' "
	                    "ELSE '{\"eventId\":\"' || r.id || '\",\"eventTime\":\"' || " T_ROWS
	                    " || '\"' END || r.body");
#undef T_ROWS
}

/* WIRE_FORMAT: its names, the members and the content type of each format. */
static void test_wire_format(void **state)
{
	enum svc_wire_format f = SVC_WIRE_DJANGO;
	char out[128];
	(void)state;
	assert_int_equal(svc_wire_format_parse(NULL, &f), 0);
	assert_int_equal(f, SVC_WIRE_SVCCOMM);
	assert_int_equal(svc_wire_format_parse("django", &f), 0);
	assert_int_equal(f, SVC_WIRE_DJANGO);
	assert_int_equal(svc_wire_format_parse("Django", &f), SVC_EINVAL);
	assert_int_equal(svc_wire_format_parse("", &f), SVC_EINVAL);
	assert_string_equal(svc_wire_format_name(SVC_WIRE_DJANGO), "django");
	assert_string_equal(svc_wire_format_name(SVC_WIRE_SVCCOMM), "svccomm");
	assert_string_equal(svc_wire_content_type(SVC_WIRE_DJANGO), "text/json");
	assert_string_equal(svc_wire_content_type(SVC_WIRE_SVCCOMM), "application/json");
	svc_envelope_members_as(SVC_WIRE_DJANGO, "\"t\"", "\"a\"", "{}", out, sizeof(out));
	assert_string_equal(out, "{\"event_type\":\"t\",\"aggregate\":\"a\",\"payload\":{}}");
	svc_envelope_members_as(SVC_WIRE_SVCCOMM, "\"t\"", "\"a\"", "{}", out, sizeof(out));
	assert_string_equal(out, "{\"eventType\":\"t\",\"aggregate\":\"a\",\"payload\":{}}");
}

static void test_envelope_time(void **state)
{
	char buf[40];
	const char *t;
	(void)state;
	/* already in the envelope's form: used as it is */
	t = svc_envelope_time("2023-06-02T10:58:58.340174Z", NULL, buf, sizeof(buf));
	assert_string_equal(t, "2023-06-02T10:58:58.340174Z");
	/* another timestamptz text: the SQL formats it */
	assert_null(svc_envelope_time("2023-06-02 10:58:58+02", NULL, buf, sizeof(buf)));
	/* scheduled: eventTime is the due time, formatted by the SQL */
	assert_null(svc_envelope_time(NULL, "2023-06-02 10:58:58+02", buf, sizeof(buf)));
	/* neither: now, from the client's clock */
	t = svc_envelope_time(NULL, NULL, buf, sizeof(buf));
	assert_ptr_equal(t, buf);
	assert_true(svc_clock_is_iso_micro(t));
}

static void test_insert_sql(void **state)
{
	char sql[2048];
	(void)state;
	assert_int_equal(svc_outbox_insert_sql("\"s\".\"t\"", sql, sizeof(sql)), 0);
	assert_non_null(strstr(sql, "INSERT INTO \"s\".\"t\" ("));
	/* one round trip: the id comes from the sequence inside the same statement */
	assert_non_null(strstr(sql, "nextval(COALESCE($12::regclass, "
	                            "pg_get_serial_sequence($11, 'id')::regclass))"));
	assert_non_null(strstr(sql, "'{\"eventId\":\"' || n.id"));
	assert_non_null(strstr(sql, "YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\""));
	assert_non_null(strstr(sql, "RETURNING id"));
	assert_int_equal(svc_outbox_insert_sql("\"t\"", sql, 32), SVC_EINVAL);
}

static void test_insert_refuses_bad_input_without_sql(void **state)
{
	struct svc_outbox_row row = {
	    .exchange = "e", .routing_key = "k", .body = "[1]", .envelope = true};
	char err[256];
	long long id = -1;
	(void)state;
	/* conn NULL: these must fail before any statement is sent */
	assert_int_equal(
	    svc_outbox_insert(NULL, "outbox\"; DROP TABLE x; --", &row, &id, err, sizeof(err)),
	    SVC_EINVAL);
	assert_non_null(strstr(err, "invalid table name"));
	assert_int_equal(svc_outbox_insert(NULL, "outbox", &row, &id, err, sizeof(err)),
	                 SVC_EINVAL);
	assert_non_null(strstr(err, "JSON object"));
	row.exchange = NULL;
	assert_int_equal(svc_outbox_insert(NULL, "outbox", &row, &id, err, sizeof(err)),
	                 SVC_EINVAL);
	assert_int_equal(id, -1);
	assert_true(svc_outbox_cancel(NULL, "outbox", "e", "k", "{}", err, sizeof(err), NULL) ==
	            SVC_EINVAL);
	assert_non_null(strstr(err, "non-empty"));
	assert_true(svc_outbox_cancel(NULL, "a b", "e", "k", "{\"a\":\"1\"}", err, sizeof(err),
	                              NULL) == SVC_EINVAL);
}

static void test_iso_utc(void **state)
{
	char buf[40];
	(void)state;
	assert_true(svc_clock_is_iso_micro("2023-06-02T10:58:58.340174Z"));
	assert_false(svc_clock_is_iso_micro("2023-06-02T10:58:58Z"));
	assert_false(svc_clock_is_iso_micro("2023-06-02 10:58:58.340174Z"));
	assert_false(svc_clock_is_iso_micro("2023-06-02T10:58:58.340174\""));
	assert_false(svc_clock_is_iso_micro(NULL));
	assert_true(svc_clock_is_iso_micro(svc_clock_iso(svc_clock_wall(), 6, buf, sizeof(buf))));
}

static void test_migrate_render(void **state)
{
	char *s;
	(void)state;
	s = svc_migrate_render("CREATE TABLE {{outbox}}; \"{{outbox_name}}_idx\"; "
	                       "{{outbox_prefix}}\"f\"(); pg_notify('{{outbox_name}}', '')",
	                       "ops.Out", NULL);
	assert_non_null(s);
	assert_string_equal(s, "CREATE TABLE \"ops\".\"Out\"; \"Out_idx\"; \"ops\".\"f\"(); "
	                       "pg_notify('Out', '')");
	free(s);
	s = svc_migrate_render("{{inbox}} {{inbox_name}} {{inbox_prefix}}x", "o", "inb");
	assert_non_null(s);
	assert_string_equal(s, "\"inb\" inb x");
	free(s);
	/* unknown placeholder, missing name, unterminated, bad name */
	assert_null(svc_migrate_render("{{nope}}", "o", "i"));
	assert_null(svc_migrate_render("{{inbox}}", "o", NULL));
	assert_null(svc_migrate_render("{{outbox", "o", NULL));
	assert_null(svc_migrate_render("{{outbox}}", "x\"; drop", NULL));
}

static void test_embedded_migrations_render(void **state)
{
	int n = 0;
	char *s;
	(void)state;
	for (const struct svc_embedded *m = svc_embedded_sql; m->name; m++) {
		s = svc_migrate_render(m->data, "svccomm_outbox", "svccomm_inbox");
		assert_non_null(s);
		assert_null(strstr(s, "{{"));
		free(s);
		n++;
	}
	assert_true(n >= 3);
	assert_string_equal(svc_embedded_sql[0].name, "001_outbox");
	/* the outbox functions get the envelope of outbox/envelope.h */
	s = svc_migrate_render("{{envelope}}", "o", NULL);
	assert_non_null(s);
	assert_non_null(strstr(s, "'{\"eventId\":\"' || new_id"));
	assert_non_null(strstr(s, "',\"payload\":' || coalesce(payload, '{}')::text || '}'"));
	free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_check_table_accepts),
	    cmocka_unit_test(test_check_table_refuses),
	    cmocka_unit_test(test_quote_and_split),
	    cmocka_unit_test(test_envelope_tail),
	    cmocka_unit_test(test_envelope_members),
	    cmocka_unit_test(test_envelope_sql_is_the_statements_text),
	    cmocka_unit_test(test_wire_format),
	    cmocka_unit_test(test_envelope_time),
	    cmocka_unit_test(test_insert_sql),
	    cmocka_unit_test(test_insert_refuses_bad_input_without_sql),
	    cmocka_unit_test(test_iso_utc),
	    cmocka_unit_test(test_migrate_render),
	    cmocka_unit_test(test_embedded_migrations_render),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
