/* json_out: writing JSON text for the machine-readable output of the commands (`--json`), and
 * hostile bytes as one line of plain text for their human-readable output.
 *
 * Only what a command printing one object needs: a string written as a JSON string. Any bytes
 * may come in (a dead letter's body, an error text from a server): control characters, '"' and
 * '\' are escaped, and a byte that is not part of valid UTF-8 is written as \u00XX (its
 * Latin-1 reading), so the output is always valid JSON. Numbers and structure are printed by
 * the caller with printf. No allocation. */
#ifndef SVC_UTIL_JSON_OUT_H
#define SVC_UTIL_JSON_OUT_H

#include <stddef.h>
#include <stdio.h>

/* Writes the len bytes at s as one JSON string (quotes included); s NULL writes null. */
void svc_json_put_mem(FILE *out, const char *s, size_t len);
/* The same for a NUL-terminated string (NULL: null). */
void svc_json_put_str(FILE *out, const char *s);

/* Writes at most max bytes of s[0..len) as plain text on one line: valid UTF-8 is kept,
 * control characters and invalid bytes become \xNN, and "..." marks a cut. So a message body
 * can neither break the line nor send escape sequences to a terminal. */
void svc_text_put_mem(FILE *out, const char *s, size_t len, size_t max);

#endif
