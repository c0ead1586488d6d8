/* Clocks and ISO-8601 time: the one place svccomm reads the time and formats it. */
#ifndef SVC_UTIL_CLOCK_H
#define SVC_UTIL_CLOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

/* Seconds on the monotonic clock: for intervals and deadlines. */
double svc_clock_mono(void);

/* Wall-clock time (CLOCK_REALTIME). */
struct timespec svc_clock_wall(void);

/* Formats t as UTC "YYYY-MM-DDTHH:MM:SS.fffZ" (digits 3) or ".ffffffZ" (digits 6) into out.
 * Returns out, or NULL when t is outside years 1-9999 or out is too small (>= 28 bytes fits). */
char *svc_clock_iso(struct timespec t, int digits, char *out, size_t outsz);

/* True when s is exactly "YYYY-MM-DDTHH:MM:SS.ffffffZ" (the envelope's eventTime form). */
bool svc_clock_is_iso_micro(const char *s);

#endif
