#include "util/numfmt.h"

#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"

/* Rewrites the locale's decimal point (which may be several bytes, e.g. U+066B) as '.'. */
static int point_to_dot(char *buf)
{
	const char *point = localeconv()->decimal_point;
	size_t plen = point ? strlen(point) : 0;
	char *p;

	if (plen == 0 || (plen == 1 && point[0] == '.'))
		return (int)strlen(buf);
	p = strstr(buf, point);
	if (p) {
		*p = '.';
		memmove(p + 1, p + plen, strlen(p + plen) + 1);
	}
	return (int)strlen(buf);
}

int svc_numfmt_double(char *buf, size_t cap, double d)
{
	if (!isfinite(d) || cap < SVC_NUMFMT_MAX)
		return SVC_EINVAL;
	/* 17 significant digits always round-trip; fewer give the short form people wrote. Both
	 * snprintf and strtod follow the current locale, so the comparison is consistent. */
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(buf, cap, "%.*g", prec, d);
		if (prec == 17 || strtod(buf, NULL) == d)
			break;
	}
	return point_to_dot(buf);
}
