/* ident: SQL identifier validation and quoting. See ident.h. */
#include "util/ident.h"

#include <stdio.h>
#include <string.h>

#include "util/error.h"

static bool ident_start(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

bool svc_ident_part_ok(const char *s, size_t len)
{
	if (len == 0 || len > SVC_IDENT_MAX || !ident_start(s[0]))
		return false;
	for (size_t i = 1; i < len; i++)
		if (!ident_start(s[i]) && !(s[i] >= '0' && s[i] <= '9'))
			return false;
	return true;
}

int svc_ident_check(const char *name, char *err, size_t errsz)
{
	const char *dot;

	if (!name || !*name) {
		if (err && errsz)
			snprintf(err, errsz, "table name is empty");
		return SVC_EINVAL;
	}
	dot = strchr(name, '.');
	if (dot ? svc_ident_part_ok(name, (size_t)(dot - name)) &&
	              svc_ident_part_ok(dot + 1, strlen(dot + 1))
	        : svc_ident_part_ok(name, strlen(name)))
		return 0;
	if (err && errsz)
		snprintf(
		    err, errsz,
		    "invalid table name (want name or schema.name, each [A-Za-z_][A-Za-z0-9_]* "
		    "of at most 63 bytes)");
	return SVC_EINVAL;
}

int svc_ident_split(const char *name, char *schema, char *table)
{
	const char *dot;

	if (svc_ident_check(name, NULL, 0) < 0)
		return SVC_EINVAL;
	dot = strchr(name, '.');
	if (dot) {
		memcpy(schema, name, (size_t)(dot - name));
		schema[dot - name] = '\0';
		strcpy(table, dot + 1);
	} else {
		schema[0] = '\0';
		strcpy(table, name);
	}
	return 0;
}

int svc_ident_quote(const char *name, char *out, size_t outsz)
{
	char schema[SVC_IDENT_MAX + 1], table[SVC_IDENT_MAX + 1];
	int n;

	if (svc_ident_split(name, schema, table) < 0)
		return SVC_EINVAL;
	if (schema[0])
		n = snprintf(out, outsz, "\"%s\".\"%s\"", schema, table);
	else
		n = snprintf(out, outsz, "\"%s\"", table);
	return (n < 0 || (size_t)n >= outsz) ? SVC_EINVAL : 0;
}
