/* headers: the parser for the outbox's headers column, which becomes the AMQP headers table of
 * the published message. The column holds a JSON object of scalars (what the write side
 * stores); anything else is a row that can never be sent, and the relay parks it. */
#ifndef SVC_RELAY_HEADERS_H
#define SVC_RELAY_HEADERS_H

#include <stddef.h>

#include "amqp/conn.h"

/* Parses the headers column (a JSON object) in place: string values are unescaped; numbers,
 * true, false and null keep their JSON text. json is modified; out[i] points into it.
 * Returns 0, or SVC_EINVAL (not an object, nested value, bad JSON, more than max entries). */
int svc_relay_parse_headers(char *json, struct svc_amqp_header *out, size_t max, size_t *n);

#endif
