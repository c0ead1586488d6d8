/* headers: the headers column's JSON parser. See headers.h. */
#include "relay/headers.h"

#include "util/error.h"
#include "util/utf8.h"

static char *skip_ws(char *p)
{
	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	return p;
}

/* r points at the 'u' of a \\u escape: writes its code point as UTF-8 at *w (a surrogate
 * pair when the low half follows) and returns the position after the escape, or NULL for bad
 * hex digits or U+0000. */
static char *unescape_u(char *r, char **w)
{
	long cp = svc_utf8_hex4(r + 1);

	if (cp < 0)
		return NULL;
	r += 5;
	if (cp >= 0xD800 && cp <= 0xDBFF && r[0] == '\\' && r[1] == 'u') {
		long lo = svc_utf8_hex4(r + 2);

		if (lo >= 0xDC00 && lo <= 0xDFFF) {
			cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
			r += 6;
		}
	}
	if (cp == 0)
		return NULL; /* a NUL cannot travel in a C string */
	*w += svc_utf8_put(*w, (unsigned long)cp);
	return r;
}

/* p points at an opening quote. The string is unescaped in place starting at p (the decoded
 * form is never longer than the escaped one) and NUL-terminated; returns the position after
 * the closing quote or NULL. */
static char *parse_string(char *p, char **str)
{
	char *w = p, *r = p + 1;

	*str = p;
	while (*r != '"') {
		unsigned char c = (unsigned char)*r;

		if (c == '\0' || c < 0x20)
			return NULL;
		if (c != '\\') {
			*w++ = *r++;
			continue;
		}
		r++;
		switch (*r) {
		case '"':
		case '\\':
		case '/':
			*w++ = *r++;
			break;
		case 'b':
			*w++ = '\b', r++;
			break;
		case 'f':
			*w++ = '\f', r++;
			break;
		case 'n':
			*w++ = '\n', r++;
			break;
		case 'r':
			*w++ = '\r', r++;
			break;
		case 't':
			*w++ = '\t', r++;
			break;
		case 'u':
			if (!(r = unescape_u(r, &w)))
				return NULL;
			break;
		default:
			return NULL;
		}
	}
	*w = '\0';
	return r + 1;
}

/* Parses the value at p: a string (unescaped in place) or a scalar (number, true, false,
 * null: its text). *val is NUL-terminated in place and *delim is the character that followed
 * it (a scalar's delimiter is overwritten by that NUL). Returns the position after the value,
 * or NULL: nested objects and arrays are not AMQP string headers. */
static char *parse_value(char *p, char **val, char *delim)
{
	if (*p == '"') {
		if (!(p = parse_string(p, val)))
			return NULL;
		*delim = *p;
		return p;
	}
	if (!(*p == '-' || (*p >= '0' && *p <= '9') || *p == 't' || *p == 'f' || *p == 'n'))
		return NULL;
	*val = p;
	while ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || *p == '-' || *p == '+' ||
	       *p == '.' || *p == 'E')
		p++;
	*delim = *p;
	*p = '\0';
	return p;
}

int svc_relay_parse_headers(char *json, struct svc_amqp_header *out, size_t max, size_t *n)
{
	char *p = skip_ws(json);

	*n = 0;
	if (*p != '{')
		return SVC_EINVAL;
	p = skip_ws(p + 1);
	if (*p == '}')
		return *skip_ws(p + 1) == '\0' ? 0 : SVC_EINVAL;
	for (;;) {
		char *key, *val, c;

		if (*p != '"' || !(p = parse_string(p, &key)))
			return SVC_EINVAL;
		p = skip_ws(p);
		if (*p != ':')
			return SVC_EINVAL;
		if (!(p = parse_value(skip_ws(p + 1), &val, &c)))
			return SVC_EINVAL;
		if (*n == max)
			return SVC_EINVAL;
		out[*n].key = key;
		out[*n].value = val;
		(*n)++;
		if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
			p = skip_ws(p + 1);
			c = *p;
		}
		if (c == '}')
			return *skip_ws(p + 1) == '\0' ? 0 : SVC_EINVAL;
		if (c != ',')
			return SVC_EINVAL;
		p = skip_ws(p + 1);
	}
}
