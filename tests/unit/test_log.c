/* Unit tests for log.c: level parsing and password masking. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "log.h"
#include "svc_error.h"

static void masks_url_passwords(void **state)
{
	char out[256];

	(void)state;
	assert_string_equal(
	    svc_log_mask_url("amqp://guest:secret@localhost:5672/%2f", out, sizeof(out)),
	    "amqp://guest:****@localhost:5672/%2f");
	assert_string_equal(svc_log_mask_url("postgresql://u:p%40ss@db/x", out, sizeof(out)),
	                    "postgresql://u:****@db/x");
	assert_string_equal(svc_log_mask_url("postgresql://u@db/x", out, sizeof(out)),
	                    "postgresql://u@db/x");
	assert_string_equal(svc_log_mask_url("amqp://localhost", out, sizeof(out)),
	                    "amqp://localhost");
	assert_string_equal(svc_log_mask_url("host=db password=s3cret user=u", out, sizeof(out)),
	                    "host=db password=**** user=u");
	assert_string_equal(
	    svc_log_mask_url("host=db password='a b\\' c' user=u", out, sizeof(out)),
	    "host=db password=**** user=u");
}

static void masking_never_overflows(void **state)
{
	char out[12];

	(void)state;
	svc_log_mask_url("amqp://guest:secret@a-very-long-host-name:5672/", out, sizeof(out));
	assert_int_equal(strlen(out), sizeof(out) - 1);
	assert_null(strstr(out, "secret"));
}

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
	    cmocka_unit_test(masks_url_passwords),
	    cmocka_unit_test(masking_never_overflows),
	    cmocka_unit_test(parses_levels),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
