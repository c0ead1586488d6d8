/* SQL identifiers for table names taken from settings: "name" or "schema.name", each part
 * [A-Za-z_][A-Za-z0-9_]* of at most 63 bytes. The one validator and quoter of svccomm (C and,
 * through svccomm.core, Lua); values never go through here, only through parameters. */
#ifndef SVC_UTIL_IDENT_H
#define SVC_UTIL_IDENT_H

#include <stdbool.h>
#include <stddef.h>

#define SVC_IDENT_MAX 63
/* Room for a quoted "schema"."name" and its NUL. */
#define SVC_IDENT_QUOTED_MAX (2 * (SVC_IDENT_MAX + 2) + 2)

/* True when s[0..len) is one valid identifier part. */
bool svc_ident_part_ok(const char *s, size_t len);

/* 0 when name is "name" or "schema.name"; else SVC_EINVAL with a reason in err (may be NULL). */
int svc_ident_check(const char *name, char *err, size_t errsz);

/* Splits a checked name; schema is "" without one. Both buffers hold SVC_IDENT_MAX + 1. */
int svc_ident_split(const char *name, char *schema, char *table);

/* Writes "name" or "schema"."name" into out; SVC_EINVAL when invalid or out is too small. */
int svc_ident_quote(const char *name, char *out, size_t outsz);

#endif
