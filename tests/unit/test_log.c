/* Unit tests for log.c: level parsing and error names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

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

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(parses_levels),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
