/* Fuzz target: svc_json_top_field, the scanner that reads message_id out of a message body
 * before Lua. The first input byte picks the key and the size of the output buffer; the rest is
 * the body, in a buffer of exactly its size (no terminator) so any read past it is caught. */
#define _GNU_SOURCE /* memmem */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/json_scan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const keys[] = {"message_id", "id", "a", ""};

	if (size < 1)
		return 0;
	const char *key = keys[data[0] & 3];
	size_t outsz = 1 + (data[0] >> 2); /* 1..64 */
	size_t len = size - 1;
	char *json = malloc(len ? len : 1);
	char *out = malloc(outsz);
	if (!json || !out)
		abort();
	if (len)
		memcpy(json, data + 1, len);
	if (svc_json_top_field(json, len, key, out, outsz) == 0) {
		/* found: a NUL-terminated value that fits out and came from the input */
		size_t n = strnlen(out, outsz);
		if (n == outsz || (n && !memmem(json, len, out, n)))
			__builtin_trap();
	}
	free(out);
	free(json);
	return 0;
}
