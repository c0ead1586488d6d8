/* clock: monotonic and wall time, ISO-8601 formatting. See clock.h. */
#include "util/clock.h"

#include <stdio.h>
#include <string.h>

double svc_clock_mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct timespec svc_clock_wall(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ts;
}

char *svc_clock_iso(struct timespec t, int digits, char *out, size_t outsz)
{
	struct tm tm;
	long frac = digits == 3 ? t.tv_nsec / 1000000L : t.tv_nsec / 1000L;
	int n;

	if (!gmtime_r(&t.tv_sec, &tm) || tm.tm_year + 1900 < 1 || tm.tm_year + 1900 > 9999)
		return NULL;
	n = snprintf(out, outsz, "%04d-%02d-%02dT%02d:%02d:%02d.%0*ldZ", tm.tm_year + 1900,
	             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
	             digits == 3 ? 3 : 6, frac);
	return (n < 0 || (size_t)n >= outsz) ? NULL : out;
}

bool svc_clock_is_iso_micro(const char *s)
{
	static const char pat[] = "dddd-dd-ddTdd:dd:dd.ddddddZ";

	if (!s || strlen(s) != sizeof(pat) - 1)
		return false;
	for (size_t i = 0; pat[i]; i++)
		if (pat[i] == 'd' ? (s[i] < '0' || s[i] > '9') : s[i] != pat[i])
			return false;
	return true;
}
