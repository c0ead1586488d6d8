/* utf8: strict UTF-8 validation (RFC 3629), and the encoding of one code point (with the hex
 * digits of a JSON \u escape, shared by the JSON decoder and the relay's headers parser).
 *
 * Rejects overlong encodings, surrogates (U+D800..U+DFFF), code points above U+10FFFF and
 * truncated sequences. ASCII runs are checked eight bytes at a time, so a typical JSON body
 * costs little more than a memchr. Pure function: no allocation, no state. */
#ifndef SVC_UTF8_H
#define SVC_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* True when the len bytes at s are valid UTF-8 (an empty string is valid). When invalid and
 * bad_offset is not NULL, it receives the offset of the first byte of the bad sequence. */
bool svc_utf8_valid(const void *s, size_t len, size_t *bad_offset);

/* Writes the code point cp (at most U+10FFFF) as UTF-8 at out (room for 4 bytes); returns the
 * number of bytes written. */
size_t svc_utf8_put(char *out, unsigned long cp);

/* The value of the four hex digits at p (the code unit of a JSON \uXXXX escape; the caller
 * checks that 4 bytes are there), or -1 when one of them is not a hex digit. */
long svc_utf8_hex4(const char *p);

#endif
