/* Unit tests for pg/errclass.c: whose fault a SQLSTATE is. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "pg/errclass.h"

static void test_infrastructure_codes(void **state)
{
	(void)state;
	assert_string_equal(svc_pg_infra_reason("25006"), "read-only");
	assert_string_equal(svc_pg_infra_reason("40001"), "serialization failure");
	assert_string_equal(svc_pg_infra_reason("40P01"), "deadlock");
	assert_string_equal(svc_pg_infra_reason("08006"), "connection failure");
	assert_string_equal(svc_pg_infra_reason("08000"), "connection failure");
	assert_string_equal(svc_pg_infra_reason("57P01"), "server shutting down");
	assert_string_equal(svc_pg_infra_reason("57P03"), "server shutting down");
	assert_string_equal(svc_pg_infra_reason("53300"), "insufficient resources");
	assert_string_equal(svc_pg_infra_reason("53100"), "insufficient resources");
	assert_string_equal(svc_pg_infra_reason("58030"), "system error");
	assert_true(svc_pg_sqlstate_is_infra("40P01"));
}

static void test_the_works_own_codes(void **state)
{
	(void)state;
	/* constraint violations, bad values, a cancelled statement (HANDLER_TIMEOUT), other 25 and
	 * 40 codes, syntax: the message's */
	const char *own[] = {"23505", "23503", "22P02", "22001", "57014", "25001", "25P02",
	                     "40002", "40003", "42601", "42P01", "XX000", "P0001", "55P03"};
	for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++) {
		assert_null(svc_pg_infra_reason(own[i]));
		assert_false(svc_pg_sqlstate_is_infra(own[i]));
	}
}

static void test_unknown_or_malformed(void **state)
{
	(void)state;
	assert_null(svc_pg_infra_reason(NULL));
	assert_null(svc_pg_infra_reason(""));
	assert_null(svc_pg_infra_reason("08"));     /* a class is not a code */
	assert_null(svc_pg_infra_reason("250060")); /* too long */
	assert_null(svc_pg_infra_reason("2500"));
	assert_false(svc_pg_sqlstate_is_infra(NULL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_infrastructure_codes),
	    cmocka_unit_test(test_the_works_own_codes),
	    cmocka_unit_test(test_unknown_or_malformed),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
