/* Secret masking: the one place that knows where passwords hide in connection strings.
 * Every URL or conninfo that reaches a log line, an error or `svccomm check` goes through
 * svc_secret_mask(); every error text that may echo one (libpq's, rabbitmq-c's, a settings
 * error) goes through svc_secret_scrub(). Lua reaches both through svccomm.core. */
#ifndef SVC_UTIL_SECRET_H
#define SVC_UTIL_SECRET_H

#include <stddef.h>

/* What a too-short password found in a text is replaced with: the whole detail. */
#define SVC_SECRET_HIDDEN "(details hidden because they contain the password)"

/* Copies url into out (always NUL-terminated, cut to outsz) with every password replaced by
 * "****": the user:password@ of amqp(s):// and postgres(ql):// URLs (up to the last '@' of
 * the authority, so an unencoded '@' in a password is masked whole), ?password= / &password=
 * query parameters, and password=... in libpq key=value strings (quoted or not).
 * Returns out. */
char *svc_secret_mask(const char *url, char *out, size_t outsz);

/* Copies msg into out with every password of source (a URL or conninfo) removed: source itself
 * becomes its masked form, and each password, raw, percent-decoded, as amqp_parse_url() or
 * PQconninfoParse() read it, and each '@'-separated piece of it of 4+ bytes, becomes "****".
 * A password shorter than 4 bytes still present makes the whole text SVC_SECRET_HIDDEN.
 * Returns out. */
char *svc_secret_scrub(const char *msg, const char *source, char *out, size_t outsz);

#endif
