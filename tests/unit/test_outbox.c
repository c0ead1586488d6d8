/* Unit tests of outbox.c and migrate.c pure functions: table name rules and quoting, the
 * envelope suffix, the INSERT text and the migration placeholder rendering. No database. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "lua/embedded.h"
#include "outbox/migrate.h"
#include "outbox/write.h"
#include "util/error.h"

static void test_check_table_accepts(void **state)
{
	(void)state;
	assert_int_equal(svc_outbox_check_table("svccomm_outbox", NULL, 0), 0);
	assert_int_equal(svc_outbox_check_table("_x1", NULL, 0), 0);
	assert_int_equal(svc_outbox_check_table("MySchema.Outbox_2", NULL, 0), 0);
	/* 63 bytes is the PostgreSQL identifier limit */
	char name[64];
	memset(name, 'a', 63);
	name[63] = '\0';
	assert_int_equal(svc_outbox_check_table(name, NULL, 0), 0);
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
		assert_int_equal(svc_outbox_check_table(bad[i], err, sizeof(err)), SVC_EINVAL);
		assert_true(strlen(err) > 0);
	}
	assert_int_equal(svc_outbox_check_table(NULL, err, sizeof(err)), SVC_EINVAL);
	char name[65];
	memset(name, 'a', 64);
	name[64] = '\0';
	assert_int_equal(svc_outbox_check_table(name, NULL, 0), SVC_EINVAL);
}

static void test_quote_and_split(void **state)
{
	char q[SVC_OUTBOX_QNAME_MAX], s[64], t[64];
	(void)state;
	assert_int_equal(svc_outbox_quote_table("svccomm_outbox", q, sizeof(q)), 0);
	assert_string_equal(q, "\"svccomm_outbox\"");
	assert_int_equal(svc_outbox_quote_table("Ops.Outbox", q, sizeof(q)), 0);
	assert_string_equal(q, "\"Ops\".\"Outbox\"");
	assert_int_equal(svc_outbox_split_table("Ops.Outbox", s, t), 0);
	assert_string_equal(s, "Ops");
	assert_string_equal(t, "Outbox");
	assert_int_equal(svc_outbox_split_table("plain", s, t), 0);
	assert_string_equal(s, "");
	assert_string_equal(t, "plain");
	assert_int_equal(svc_outbox_quote_table("x\"y", q, sizeof(q)), SVC_EINVAL);
	assert_int_equal(svc_outbox_quote_table("abc", q, 4), SVC_EINVAL); /* too small */
}

static void test_envelope_suffix(void **state)
{
	char *s;
	(void)state;
	s = svc_outbox_envelope_suffix("{\"eventType\":\"a\",\"payload\":{}}");
	assert_non_null(s);
	assert_string_equal(s, ",\"eventType\":\"a\",\"payload\":{}}");
	free(s);
	s = svc_outbox_envelope_suffix("  { \"a\" : 1 }\n");
	assert_non_null(s);
	assert_string_equal(s, ",\"a\" : 1 }");
	free(s);
	s = svc_outbox_envelope_suffix("{ }");
	assert_non_null(s);
	assert_string_equal(s, "}");
	free(s);
	assert_null(svc_outbox_envelope_suffix("[1,2]"));
	assert_null(svc_outbox_envelope_suffix("{"));
	assert_null(svc_outbox_envelope_suffix("\"x\""));
	assert_null(svc_outbox_envelope_suffix(""));
	assert_null(svc_outbox_envelope_suffix(NULL));
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
	assert_true(svc_outbox_is_iso_utc("2023-06-02T10:58:58.340174Z"));
	assert_false(svc_outbox_is_iso_utc("2023-06-02T10:58:58Z"));
	assert_false(svc_outbox_is_iso_utc("2023-06-02 10:58:58.340174Z"));
	assert_false(svc_outbox_is_iso_utc("2023-06-02T10:58:58.340174\""));
	assert_false(svc_outbox_is_iso_utc(NULL));
	assert_true(svc_outbox_is_iso_utc(svc_outbox_now_iso(buf, sizeof(buf))));
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
	(void)state;
	for (const struct svc_embedded *m = svc_embedded_sql; m->name; m++) {
		char *s = svc_migrate_render(m->data, "svccomm_outbox", "svccomm_inbox");
		assert_non_null(s);
		assert_null(strstr(s, "{{"));
		free(s);
		n++;
	}
	assert_true(n >= 2);
	assert_string_equal(svc_embedded_sql[0].name, "001_outbox");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_check_table_accepts),
	    cmocka_unit_test(test_check_table_refuses),
	    cmocka_unit_test(test_quote_and_split),
	    cmocka_unit_test(test_envelope_suffix),
	    cmocka_unit_test(test_insert_sql),
	    cmocka_unit_test(test_insert_refuses_bad_input_without_sql),
	    cmocka_unit_test(test_iso_utc),
	    cmocka_unit_test(test_migrate_render),
	    cmocka_unit_test(test_embedded_migrations_render),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
