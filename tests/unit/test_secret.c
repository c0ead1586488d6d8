/* Unit tests for util/secret.c: masking URLs and conninfo strings, scrubbing error texts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "util/secret.h"

static const char *mask(const char *url)
{
	static char out[512];

	return svc_secret_mask(url, out, sizeof(out));
}

static const char *scrub(const char *msg, const char *url)
{
	static char out[512];

	return svc_secret_scrub(msg, url, out, sizeof(out));
}

static void masks_url_passwords(void **state)
{
	(void)state;
	assert_string_equal(mask("amqp://guest:secret@localhost:5672/%2f"),
	                    "amqp://guest:****@localhost:5672/%2f");
	assert_string_equal(mask("postgresql://u:p%40ss@db/x"), "postgresql://u:****@db/x");
	assert_string_equal(mask("postgresql://u@db/x"), "postgresql://u@db/x");
	assert_string_equal(mask("amqp://localhost"), "amqp://localhost");
	assert_string_equal(mask("amqps://us%40er:p%3Ass@h:5671/my%2fvhost"),
	                    "amqps://us%40er:****@h:5671/my%2fvhost");
}

static void masks_conninfo_passwords(void **state)
{
	(void)state;
	assert_string_equal(mask("host=db password=s3cret user=u"), "host=db password=**** user=u");
	assert_string_equal(mask("host=db password='a b\\' c' user=u"),
	                    "host=db password=**** user=u");
	assert_string_equal(mask("host=db PASSWORD = s3cret"), "host=db PASSWORD = ****");
	assert_string_equal(mask("host=db user=u"), "host=db user=u");
}

/* Forms that leaked before the one masker: a password in the query string, and an unencoded
 * '@' inside a password. */
static void masks_query_and_unencoded_at(void **state)
{
	(void)state;
	assert_string_equal(mask("postgresql://svc@db/app?password=s3cret"),
	                    "postgresql://svc@db/app?password=****");
	assert_string_equal(mask("postgresql://svc@db/app?sslmode=require&Password=s3cret&x=1"),
	                    "postgresql://svc@db/app?sslmode=require&Password=****&x=1");
	assert_string_equal(mask("postgresql://u:p@ssw0rd@host/db"), "postgresql://u:****@host/db");
	assert_string_equal(mask("postgresql://u:p@ss/w@host/db"), "postgresql://u:****@host/db");
}

static void masks_unicode_passwords(void **state)
{
	(void)state;
	assert_string_equal(mask("amqp://u:p\xc3\xa4ss\xe2\x82\xac@h/v"), "amqp://u:****@h/v");
	assert_string_equal(mask("amqp://u:p%C3%A4ss@h/v"), "amqp://u:****@h/v");
	assert_string_equal(mask("password=p\xc3\xa4ss host=h"), "password=**** host=h");
}

static void masking_never_overflows(void **state)
{
	char out[12];

	(void)state;
	svc_secret_mask("amqp://guest:secret@a-very-long-host-name:5672/", out, sizeof(out));
	assert_int_equal(strlen(out), sizeof(out) - 1);
	assert_null(strstr(out, "secret"));
	svc_secret_mask("amqp://guest:secret@h/", out, 0); /* no write at all */
}

/* libpq echoes pieces of a connection string in its errors: a host name made of the end of
 * a password with an unencoded '@', or the whole string in a parse error. */
static void scrubs_error_texts(void **state)
{
	const char *url = "postgresql://u:p@ssw0rd@127.0.0.1/db";

	(void)state;
	assert_string_equal(
	    scrub("could not translate host name \"ssw0rd@127.0.0.1\" to address", url),
	    "could not translate host name \"****@127.0.0.1\" to address");
	assert_string_equal(scrub("cannot connect to postgresql://u:p@ssw0rd@127.0.0.1/db", url),
	                    "cannot connect to postgresql://u:****@127.0.0.1/db");
	assert_string_equal(scrub("bad value \"hunter2secret\"", "host=h password=hunter2secret"),
	                    "bad value \"****\"");
	assert_string_equal(scrub("bad value \"p\xc3\xa4ss\"", "amqp://u:p%C3%A4ss@h/v"),
	                    "bad value \"****\"");
	assert_string_equal(scrub("nothing secret here", url), "nothing secret here");
	assert_string_equal(scrub("no url at all", NULL), "no url at all");
}

static void hides_text_holding_a_short_password(void **state)
{
	(void)state;
	assert_string_equal(scrub("host \"xyz.example\" unknown", "postgresql://u:xyz@h/db"),
	                    SVC_SECRET_HIDDEN);
	assert_string_equal(scrub("host \"h\" unknown", "postgresql://u:xyz@h/db"),
	                    "host \"h\" unknown");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(masks_url_passwords),
	    cmocka_unit_test(masks_conninfo_passwords),
	    cmocka_unit_test(masks_query_and_unencoded_at),
	    cmocka_unit_test(masks_unicode_passwords),
	    cmocka_unit_test(masking_never_overflows),
	    cmocka_unit_test(scrubs_error_texts),
	    cmocka_unit_test(hides_text_holding_a_short_password),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
