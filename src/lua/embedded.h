/* Files compiled into the binary at build time (see cmake/embed_*.cmake).
 * Each table ends with an entry whose name is NULL. The data is static and read-only. */
#ifndef SVC_EMBEDDED_H
#define SVC_EMBEDDED_H

#include <stddef.h>

struct svc_embedded {
	const char *name; /* Lua module name ("svccomm.message_router") or migration name */
	const char *path; /* chunk name / path shown in errors */
	const char *data; /* NUL-terminated contents */
	size_t len;       /* length without the NUL */
};

extern const struct svc_embedded svc_embedded_lua[];
extern const struct svc_embedded svc_embedded_sql[];
extern const struct svc_embedded svc_embedded_templates[]; /* svccomm init */

#endif
