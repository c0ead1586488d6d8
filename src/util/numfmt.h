/* Text for a double that reads back to the same double: used wherever a Lua float leaves
 * the process as text (SQL parameters), so 19.99 stays "19.99" and not "19.989999999999998". */
#ifndef SVC_NUMFMT_H
#define SVC_NUMFMT_H

#include <stddef.h>

/* Space for any finite double in shortest round-trip form, NUL included. */
#define SVC_NUMFMT_MAX 32

/* Writes the shortest of "%.15g", "%.16g", "%.17g" that strtod reads back to d, always with
 * '.' as the decimal point whatever the locale; returns its length, or SVC_EINVAL for NaN
 * and infinities (which have no portable text: the caller chooses) or a cap below
 * SVC_NUMFMT_MAX. */
int svc_numfmt_double(char *buf, size_t cap, double d);

#endif
