/* json_scan: one top-level field out of untrusted JSON bytes. See json_scan.h. */
#include "util/json_scan.h"

#include <stdbool.h>
#include <string.h>

#include "util/error.h"

/* strchr(set, c) would match a zero byte (the set's terminator): never let it. */
static bool one_of(char c, const char *set)
{
	return c != '\0' && strchr(set, c) != NULL;
}

static const char *skip_ws(const char *p, const char *end)
{
	while (p < end && one_of(*p, " \t\n\r"))
		p++;
	return p;
}

/* p at '"': returns the position after the closing quote, or NULL when the input ends first. */
static const char *skip_string(const char *p, const char *end)
{
	for (p++; p < end; p++) {
		if (*p == '\\') {
			if (++p == end) /* the escaped byte is missing */
				return NULL;
		} else if (*p == '"') {
			return p + 1;
		}
	}
	return NULL;
}

/* Skips one value of any depth with a counter instead of recursion; NULL on malformed input.
 * Every round moves forward or fails, so hostile bytes cannot make it loop. */
static const char *skip_value(const char *p, const char *end)
{
	size_t depth = 0;
	do {
		p = skip_ws(p, end);
		if (p >= end)
			return NULL;
		if (*p == '"') {
			p = skip_string(p, end);
			if (!p)
				return NULL;
		} else if (*p == '{' || *p == '[') {
			depth++;
			p++;
		} else if (*p == '}' || *p == ']') {
			if (depth == 0)
				return NULL;
			depth--;
			p++;
		} else if (*p == ',' || *p == ':') {
			if (depth == 0)
				return NULL;
			p++;
		} else {
			const char *start = p;
			while (p < end && *p && !one_of(*p, " \t\r\n,:]}[{\""))
				p++;
			if (p == start)
				return NULL; /* a byte no value starts with (a zero byte) */
		}
	} while (depth > 0);
	return p;
}

/* p at the value of the wanted key: sets [*vs, *ve) to a string's contents or a number's text. */
static int value_span(const char *p, const char *end, const char **vs, const char **ve)
{
	if (*p == '"') {
		*vs = p + 1;
		*ve = skip_string(p, end);
		if (!*ve)
			return SVC_EINVAL;
		(*ve)--;
		/* escapes would need decoding; a zero byte would cut the C string short */
		if (memchr(*vs, '\\', (size_t)(*ve - *vs)) ||
		    memchr(*vs, '\0', (size_t)(*ve - *vs)))
			return SVC_EINVAL;
		return 0;
	}
	if (*p == '-' || (*p >= '0' && *p <= '9')) {
		*vs = *ve = p;
		while (*ve < end && one_of(**ve, "+-0123456789.eE"))
			(*ve)++;
		return 0;
	}
	return SVC_EINVAL;
}

int svc_json_top_field(const char *json, size_t len, const char *key, char *out, size_t outsz)
{
	const char *p = json, *end = json + len;
	size_t klen = strlen(key);

	p = skip_ws(p, end);
	if (p >= end || *p != '{')
		return SVC_EINVAL;
	p++;
	for (;;) {
		p = skip_ws(p, end);
		if (p >= end || *p != '"')
			return SVC_EINVAL;
		const char *ks = p + 1;
		p = skip_string(p, end);
		if (!p)
			return SVC_EINVAL;
		bool match = (size_t)(p - 1 - ks) == klen && memcmp(ks, key, klen) == 0;
		p = skip_ws(p, end);
		if (p >= end || *p != ':')
			return SVC_EINVAL;
		p = skip_ws(p + 1, end);
		if (match && p < end) {
			const char *vs, *ve;
			if (value_span(p, end, &vs, &ve) != 0)
				return SVC_EINVAL;
			size_t n = (size_t)(ve - vs);
			if (n == 0 || n >= outsz)
				return SVC_EINVAL;
			memcpy(out, vs, n);
			out[n] = '\0';
			return 0;
		}
		p = skip_value(p, end);
		if (!p)
			return SVC_EINVAL;
		p = skip_ws(p, end);
		if (p < end && *p == ',') {
			p++;
			continue;
		}
		return SVC_EINVAL; /* '}' (not found) or garbage */
	}
}
