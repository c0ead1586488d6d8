/* json_scan: reads one top-level field out of JSON bytes that came from the network.
 *
 * The input is hostile: any bytes, any length, any nesting. The scanner never reads outside
 * [json, json + len) (no NUL terminator is needed or trusted: a zero byte is an ordinary bad
 * byte), never recurses (nesting is a counter), never allocates and always moves forward, so
 * its time is linear in len. It only skips what it does not need, without validating it: it is
 * no JSON parser, and a caller that needs the whole document decodes it elsewhere. */
#ifndef SVC_UTIL_JSON_SCAN_H
#define SVC_UTIL_JSON_SCAN_H

#include <stddef.h>

/* Copies the value of the top-level key of the object in json[0..len) into out when it is a
 * string without escapes or zero bytes (its contents) or a number (its text); 0 when found, else
 * SVC_EINVAL (not an object, key absent, another kind of value, malformed, or too long for out). */
int svc_json_top_field(const char *json, size_t len, const char *key, char *out, size_t outsz);

#endif
