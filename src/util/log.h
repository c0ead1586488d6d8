/* Levelled logging to stderr: one line per event, "time level [component] message"; control
 * characters in the text are escaped, so a newline in a message id cannot forge a line.
 * The level check happens before any formatting, so a disabled debug line costs a compare.
 * Never pass a secret (password, full connection string) to these functions: use
 * svc_secret_mask() or svc_secret_scrub() (util/secret.h) first. */
#ifndef SVC_LOG_H
#define SVC_LOG_H

#include <stddef.h>

enum svc_log_level { SVC_LOG_DEBUG, SVC_LOG_INFO, SVC_LOG_WARNING, SVC_LOG_ERROR, SVC_LOG_OFF };

extern enum svc_log_level svc_log_threshold;

/* Parses "debug" | "info" | "warning" | "error" | "off"; returns 0 or SVC_EINVAL. */
int svc_log_parse_level(const char *name, enum svc_log_level *out);

/* Sets a prefix added to every line (e.g. "worker 2"); NULL clears it. Not thread-safe. */
void svc_log_set_tag(const char *tag);

/* Copies src into dst (cap bytes, NUL included) with every control character written as an
 * escape (\n, \r, \t, \x1b, ...), cutting only between whole characters; returns the length. */
size_t svc_log_escape(char *dst, size_t cap, const char *src);

/* Writes one line "time level [tag ][component] message" to stderr, control characters escaped. */
void svc_log_write(enum svc_log_level level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* One named value of a structured log line; key and value are borrowed NUL-terminated text. */
struct svc_log_field {
	const char *key;
	const char *value;
};

/* Writes message followed by its fields as key=value (a value that is empty or holds a space,
 * a double quote, '=' or a backslash is double-quoted, with quotes and backslashes escaped by a
 * backslash), control characters escaped as in svc_log_write; the fields stay separate so
 * another line format (JSON) can render them its own way. */
void svc_log_write_fields(enum svc_log_level level, const char *component, const char *message,
                          const struct svc_log_field *fields, size_t n_fields);

#define svc_log(level, component, ...)                                                             \
	do {                                                                                       \
		if ((level) >= svc_log_threshold)                                                  \
			svc_log_write((level), (component), __VA_ARGS__);                          \
	} while (0)
#define svc_debug(c, ...) svc_log(SVC_LOG_DEBUG, c, __VA_ARGS__)
#define svc_info(c, ...)  svc_log(SVC_LOG_INFO, c, __VA_ARGS__)
#define svc_warn(c, ...)  svc_log(SVC_LOG_WARNING, c, __VA_ARGS__)
#define svc_error(c, ...) svc_log(SVC_LOG_ERROR, c, __VA_ARGS__)

#endif
