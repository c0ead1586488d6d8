/* FNV-1a, 32 bits: the one string hash (exchange cache, advisory lock keys). Not for
 * anything an attacker could use to collide on purpose at scale: inputs come from settings
 * and the outbox, and the tables using it are bounded. */
#ifndef SVC_UTIL_HASH_H
#define SVC_UTIL_HASH_H

#include <stddef.h>
#include <stdint.h>

#define SVC_HASH_INIT 2166136261u

/* Continues hash h over len bytes of p (start with SVC_HASH_INIT). */
uint32_t svc_hash_bytes(uint32_t h, const void *p, size_t len);

/* Continues hash h over the NUL-terminated s. */
uint32_t svc_hash_str(uint32_t h, const char *s);

#endif
