/* json_out: JSON strings for `--json` output. See json_out.h. */
#include "util/json_out.h"

#include <string.h>

#include "util/utf8.h"

/* Length of the valid UTF-8 sequence starting at s[0] (at most n bytes), 0 when invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	size_t len = s[0] < 0xC0 ? 0 : s[0] < 0xE0 ? 2 : s[0] < 0xF0 ? 3 : s[0] < 0xF8 ? 4 : 0;

	if (len == 0 || len > n || !svc_utf8_valid(s, len, NULL))
		return 0;
	return len;
}

void svc_json_put_mem(FILE *out, const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;

	if (!s) {
		fputs("null", out);
		return;
	}
	fputc('"', out);
	for (size_t i = 0; i < len;) {
		unsigned char c = p[i];
		size_t seq;

		if (c == '"' || c == '\\') {
			fputc('\\', out), fputc(c, out), i++;
		} else if (c == '\n') {
			fputs("\\n", out), i++;
		} else if (c == '\r') {
			fputs("\\r", out), i++;
		} else if (c == '\t') {
			fputs("\\t", out), i++;
		} else if (c < 0x20 || c == 0x7F) {
			fprintf(out, "\\u%04x", c), i++;
		} else if (c < 0x80) {
			fputc(c, out), i++;
		} else if ((seq = utf8_seq(p + i, len - i)) > 0) {
			fwrite(p + i, 1, seq, out), i += seq;
		} else {
			fprintf(out, "\\u%04x", c),
			    i++; /* not UTF-8: the byte as a Latin-1 character */
		}
	}
	fputc('"', out);
}

void svc_json_put_str(FILE *out, const char *s)
{
	svc_json_put_mem(out, s, s ? strlen(s) : 0);
}

void svc_text_put_mem(FILE *out, const char *s, size_t len, size_t max)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, seq = 0;

	while (i < len && i < max) {
		unsigned char c = p[i];

		if (c >= 0x20 && c < 0x7F) {
			fputc(c, out), i++;
		} else if (c >= 0x80 && (seq = utf8_seq(p + i, len - i)) > 0 && i + seq <= max) {
			fwrite(p + i, 1, seq, out), i += seq;
		} else if (c >= 0x80 && seq > 0) {
			break; /* a character the cut would split */
		} else {
			fprintf(out, "\\x%02x", c), i++;
		}
	}
	if (i < len)
		fputs("...", out);
}
