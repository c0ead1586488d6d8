/* Fuzz target: svc_utf8_valid, checked against a byte-at-a-time reference validator written
 * from RFC 3629's table. The input is copied to a buffer of exactly its size so the
 * word-at-a-time fast path cannot read past it unnoticed. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Length of the valid sequence at s[0..n), or 0. */
static size_t ref_seq(const uint8_t *s, size_t n)
{
	uint8_t c = s[0];
	uint8_t lo = 0x80, hi = 0xBF;
	size_t len;

	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF)
		len = 2;
	else if (c >= 0xE0 && c <= 0xEF)
		len = 3;
	else if (c >= 0xF0 && c <= 0xF4)
		len = 4;
	else
		return 0;
	if (c == 0xE0)
		lo = 0xA0;
	else if (c == 0xED)
		hi = 0x9F;
	else if (c == 0xF0)
		lo = 0x90;
	else if (c == 0xF4)
		hi = 0x8F;
	if (n < len || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++)
		if (s[i] < 0x80 || s[i] > 0xBF)
			return 0;
	return len;
}

static bool ref_valid(const uint8_t *s, size_t n, size_t *bad)
{
	size_t i = 0;
	while (i < n) {
		size_t k = ref_seq(s + i, n - i);
		if (!k) {
			*bad = i;
			return false;
		}
		i += k;
	}
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *buf = malloc(size ? size : 1);
	if (!buf)
		abort();
	if (size)
		memcpy(buf, data, size);
	size_t bad = (size_t)-1, ref_bad = (size_t)-1;
	bool ok = svc_utf8_valid(buf, size, &bad);
	bool ref = ref_valid(buf, size, &ref_bad);
	if (ok != ref || (!ok && bad != ref_bad))
		__builtin_trap();
	/* Also without an offset, and on every suffix start the fast path aligns differently. */
	if (svc_utf8_valid(buf, size, NULL) != ok)
		__builtin_trap();
	if (size > 1 &&
	    svc_utf8_valid(buf + 1, size - 1, NULL) != ref_valid(buf + 1, size - 1, &ref_bad))
		__builtin_trap();
	free(buf);
	return 0;
}
