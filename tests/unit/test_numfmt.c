/* Unit tests for util/numfmt.c: shortest round-trip text for doubles. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <locale.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"
#include "util/numfmt.h"

static void formats_shortest_round_trip(void **state)
{
	static const struct {
		double d;
		const char *text;
	} cases[] = {
	    {19.99, "19.99"},
	    {0.1, "0.1"},
	    {0.1 + 0.2, "0.30000000000000004"},
	    {3.0, "3"},
	    {-2.5, "-2.5"},
	    {1e300, "1e+300"},
	    {123456789012.5, "123456789012.5"},
	    {1.0 / 3.0, "0.3333333333333333"},
	    {5e-324, "4.94065645841247e-324"},
	    {-0.0, "-0"},
	};
	char buf[SVC_NUMFMT_MAX];

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int n = svc_numfmt_double(buf, sizeof(buf), cases[i].d);
		assert_int_equal(n, (int)strlen(cases[i].text));
		assert_string_equal(buf, cases[i].text);
		assert_true(strtod(buf, NULL) == cases[i].d);
	}
}

static void every_random_double_reads_back(void **state)
{
	char buf[SVC_NUMFMT_MAX];

	(void)state;
	srand(21);
	for (int i = 0; i < 20000; i++) {
		uint64_t bits =
		    ((uint64_t)rand() << 42) ^ ((uint64_t)rand() << 21) ^ (uint64_t)rand();
		double d;

		memcpy(&d, &bits, sizeof(d));
		if (!isfinite(d))
			continue;
		assert_true(svc_numfmt_double(buf, sizeof(buf), d) > 0);
		assert_true(strtod(buf, NULL) == d);
	}
}

static void refuses_nan_infinity_and_small_buffers(void **state)
{
	char buf[SVC_NUMFMT_MAX];

	(void)state;
	assert_int_equal(svc_numfmt_double(buf, sizeof(buf), NAN), SVC_EINVAL);
	assert_int_equal(svc_numfmt_double(buf, sizeof(buf), INFINITY), SVC_EINVAL);
	assert_int_equal(svc_numfmt_double(buf, sizeof(buf), -INFINITY), SVC_EINVAL);
	assert_int_equal(svc_numfmt_double(buf, SVC_NUMFMT_MAX - 1, 1.5), SVC_EINVAL);
}

/* A handler may call os.setlocale: the text PostgreSQL gets keeps '.' as decimal point. */
static void ignores_the_decimal_comma_of_the_locale(void **state)
{
	char buf[SVC_NUMFMT_MAX];
	const char *names[] = {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "C.UTF-8"};
	int found = 0;

	(void)state;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]) && !found; i++)
		found = setlocale(LC_NUMERIC, names[i]) != NULL;
	assert_true(svc_numfmt_double(buf, sizeof(buf), 19.99) > 0);
	assert_string_equal(buf, "19.99");
	setlocale(LC_NUMERIC, "C");
	if (!found || strcmp(localeconv()->decimal_point, ".") == 0)
		print_message("(no locale with a decimal comma installed: checked in C only)\n");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(formats_shortest_round_trip),
	    cmocka_unit_test(every_random_double_reads_back),
	    cmocka_unit_test(refuses_nan_infinity_and_small_buffers),
	    cmocka_unit_test(ignores_the_decimal_comma_of_the_locale),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
