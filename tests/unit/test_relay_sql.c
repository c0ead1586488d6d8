/* Unit tests for outbox/relay_sql.c: table names, the statements' texts and the advisory lock
 * keys. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "outbox/relay_sql.h"
#include "util/error.h"

static void sql_names_are_validated_and_quoted(void **state)
{
	struct svc_relay_sql q;

	(void)state;
	assert_int_equal(svc_relay_sql_init(&q, "svccomm_outbox"), 0);
	assert_string_equal(q.table, "\"svccomm_outbox\"");
	assert_string_equal(q.channel, "svccomm_outbox");
	assert_non_null(strstr(q.claim_all, "ORDER BY id LIMIT $2"));
	svc_relay_sql_release(&q);
	assert_int_equal(svc_relay_sql_init(&q, "app.Outbox_2"), 0);
	assert_string_equal(q.table, "\"app\".\"Outbox_2\"");
	assert_string_equal(q.channel, "Outbox_2");
	svc_relay_sql_release(&q);
	assert_int_equal(svc_relay_sql_init(&q, "outbox\"; DROP TABLE x; --"), SVC_EINVAL);
	assert_int_equal(svc_relay_sql_init(&q, "a.b.c"), SVC_EINVAL);
	assert_int_equal(svc_relay_sql_init(&q, ".b"), SVC_EINVAL);
	assert_int_equal(svc_relay_sql_init(&q, "1abc"), SVC_EINVAL);
	/* lock keys: stable, positive, different per table and per kind */
	assert_true(svc_relay_key("p:", "t") >= 0);
	assert_int_equal(svc_relay_key("p:", "t"), svc_relay_key("p:", "t"));
	assert_true(svc_relay_key("p:", "t") != svc_relay_key("m:", "t"));
	assert_true(svc_relay_key("p:", "t") != svc_relay_key("p:", "u"));
}

/* The claim skips the ids in flight ($1) and the confirmed ones not deleted yet ($3), both
 * through hashed lookups; it deletes nothing itself (a data-modifying WITH would make the
 * server store the whole result before sending it). The delete has two forms: per id, and
 * one range with a hashed membership test. */
static void claim_skips_rows_and_deletes_are_separate(void **state)
{
	struct svc_relay_sql q;
	const char *texts[2];

	(void)state;
	assert_int_equal(svc_relay_sql_init(&q, "app.outbox"), 0);
	texts[0] = q.claim_all;
	texts[1] = q.claim_part;
	for (int i = 0; i < 2; i++) {
		const char *t = texts[i];

		assert_true(strncmp(t, "SELECT id, ", strlen("SELECT id, ")) == 0);
		assert_null(strstr(t, "DELETE"));
		assert_null(strstr(t, "attempts"));
		assert_non_null(strstr(t, "id NOT IN (SELECT unnest($1::int8[]) UNION ALL SELECT "
		                          "unnest($3::int8[]))"));
		assert_non_null(strstr(t, "ORDER BY id LIMIT $2"));
	}
	assert_non_null(strstr(q.claim_part, "= ANY($4::int4[])"));
	assert_string_equal(q.del, "DELETE FROM \"app\".\"outbox\" WHERE id = ANY($1::int8[])");
	assert_string_equal(
	    q.del_range, "DELETE FROM \"app\".\"outbox\" WHERE id >= $2::int8 AND id <= $3::int8 "
	                 "AND NOT (id NOT IN (SELECT unnest($1::int8[])))");
	svc_relay_sql_release(&q);
}

/* The lock keys name advisory locks that running relays hold: a new version computing other
 * keys would publish the partitions an older relay still owns. These values were computed
 * with the first implementation (its own FNV-1a loop) and must never change. */
static void lock_keys_keep_their_values(void **state)
{
	struct svc_relay_sql q;

	(void)state;
	assert_int_equal(svc_relay_key("svccomm-relay-partition:", "svccomm_outbox"), 1012570402);
	assert_int_equal(svc_relay_key("svccomm-relay-member:", "svccomm_outbox"), 1122195534);
	assert_int_equal(svc_relay_key("svccomm-relay-partition:", "app.Outbox_2"), 572282351);
	assert_int_equal(svc_relay_key("svccomm-relay-member:", "app.Outbox_2"), 395068707);
	assert_int_equal(svc_relay_key("p:", "t"), 1812280545);
	assert_int_equal(svc_relay_key("", ""), 18652613);
	/* the keys of the statements are those of the table name as configured */
	assert_int_equal(svc_relay_sql_init(&q, "public.svccomm_outbox"), 0);
	assert_int_equal(q.key_part, 728745751);
	assert_int_equal(q.key_member, 1590203635);
	svc_relay_sql_release(&q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(sql_names_are_validated_and_quoted),
	    cmocka_unit_test(claim_skips_rows_and_deletes_are_separate),
	    cmocka_unit_test(lock_keys_keep_their_values),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
