/* Fuzz target: svc_relay_parse_headers, the parser of an outbox row's headers column (text any
 * client of the database wrote). The row comes from libpq NUL-terminated; the input is copied
 * to a buffer of exactly its size plus that terminator. Every key and value must be a string
 * inside the buffer. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "relay/headers.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_OUT 64

static int inside(const char *p, const char *buf, size_t size)
{
	return p >= buf && p <= buf + size && memchr(p, '\0', (size_t)(buf + size + 1 - p));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct svc_amqp_header out[MAX_OUT];
	size_t n = (size_t)-1;
	char *buf = malloc(size + 1);
	if (!buf)
		abort();
	if (size)
		memcpy(buf, data, size);
	buf[size] = '\0';
	/* A smaller limit from the last byte, so the "too many entries" branch runs too. */
	size_t max = size ? 1 + data[size - 1] % MAX_OUT : MAX_OUT;
	int rc = svc_relay_parse_headers(buf, out, max, &n);
	if (n > max)
		__builtin_trap();
	if (rc == 0)
		for (size_t i = 0; i < n; i++)
			if (!inside(out[i].key, buf, size) || !inside(out[i].value, buf, size))
				__builtin_trap();
	free(buf);
	return 0;
}
