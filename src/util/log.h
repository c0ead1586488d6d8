/* Levelled logging to stderr: one line per event, either text, "time level [component] message"
 * with control characters escaped so a newline in a message id cannot forge a line, or (with
 * LOG_FORMAT = "json") one JSON object per line: {"ts", "level", "worker", "component", "msg",
 * then the structured fields}, every string escaped as JSON wants (invalid UTF-8 becomes
 * U+FFFD), so a line always parses and never spans two.
 * The level check happens before any formatting, so a disabled debug line costs a compare.
 * Never pass a secret (password, full connection string) to these functions: use
 * svc_secret_mask() or svc_secret_scrub() (util/secret.h) first. */
#ifndef SVC_LOG_H
#define SVC_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum svc_log_level { SVC_LOG_DEBUG, SVC_LOG_INFO, SVC_LOG_WARNING, SVC_LOG_ERROR, SVC_LOG_OFF };

enum svc_log_format { SVC_LOG_TEXT, SVC_LOG_JSON };

extern enum svc_log_level svc_log_threshold;
extern enum svc_log_format svc_log_format;

/* Parses "text" | "json"; returns 0 or SVC_EINVAL. */
int svc_log_parse_format(const char *name, enum svc_log_format *out);

/* Parses "debug" | "info" | "warning" | "error" | "off"; returns 0 or SVC_EINVAL. */
int svc_log_parse_level(const char *name, enum svc_log_level *out);

/* Sets a prefix added to every line (e.g. "worker 2"); NULL clears it. Not thread-safe. */
void svc_log_set_tag(const char *tag);

/* Copies src into dst (cap bytes, NUL included) with every control character written as an
 * escape (\n, \r, \t, \x1b, ...), cutting only between whole characters; returns the length. */
size_t svc_log_escape(char *dst, size_t cap, const char *src);

/* Copies src into dst (cap bytes, NUL included) as the inside of a JSON string: '"', '\\' and
 * control characters escaped (\n, \t, \u001b, ...), invalid UTF-8 bytes replaced by \ufffd,
 * cutting only between whole escapes and characters; returns the length. */
size_t svc_log_json_escape(char *dst, size_t cap, const char *src);

/* Writes one line to stderr: "time level [tag ][component] message", control characters
 * escaped, or with SVC_LOG_JSON {"ts":...,"level":...,"component":...,"msg":...}. */
void svc_log_write(enum svc_log_level level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* One named value of a structured log line; key and value are borrowed NUL-terminated text.
 * number: the value is a number (a count, an attempt), written unquoted in JSON when it reads
 * as one. The usual keys: queue, exchange, routing_key, message_id, event_id, attempt,
 * handler, error. */
struct svc_log_field {
	const char *key;
	const char *value;
	bool number;
};
#define SVC_LOG_STR(k, v)                                                                          \
	{                                                                                          \
		(k), (v), false                                                                    \
	}
#define SVC_LOG_NUM(k, v)                                                                          \
	{                                                                                          \
		(k), (v), true                                                                     \
	}

/* Writes message followed by its fields as key=value (a value that is empty or holds a space,
 * a double quote, '=' or a backslash is double-quoted, with quotes and backslashes escaped by a
 * backslash), control characters escaped as in svc_log_write; with SVC_LOG_JSON each field is a
 * member of the line's object (a key that names a fixed member, e.g. "msg", or repeats an
 * earlier field's gets a trailing '_'). A line too long for the buffer (8 KiB) is cut inside a
 * value, still valid JSON. */
void svc_log_write_fields(enum svc_log_level level, const char *component, const char *message,
                          const struct svc_log_field *fields, size_t n_fields);

/* An event with a prose message that already names its values (the text line, unchanged) and
 * the same values as fields for JSON lines: text writes only the message, JSON the message and
 * the fields as members (as svc_log_write_fields). */
void svc_log_write_kv(enum svc_log_level level, const char *component,
                      const struct svc_log_field *fields, size_t n_fields, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

#define svc_log_kv(level, component, fields, n_fields, ...)                                        \
	do {                                                                                       \
		if ((level) >= svc_log_threshold)                                                  \
			svc_log_write_kv((level), (component), (fields), (n_fields), __VA_ARGS__); \
	} while (0)

/* The periodic stats line of a process, one format for all: "stats k1=v1 k2=v2 ..." in text,
 * {"msg":"stats","k1":v1,...} in JSON (values are numbers). At info. */
struct svc_log_stat {
	const char *key;
	double value;
};
void svc_log_stats(const char *component, const struct svc_log_stat *stats, size_t n);

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
