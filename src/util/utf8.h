/* utf8: strict UTF-8 validation (RFC 3629).
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

#endif
