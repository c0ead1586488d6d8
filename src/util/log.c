#include "util/log.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "util/error.h"
#include "util/utf8.h"

enum svc_log_level svc_log_threshold = SVC_LOG_INFO;
enum svc_log_format svc_log_format = SVC_LOG_TEXT;
static char log_tag[64];

static const char *const level_names[] = {"debug", "info", "warning", "error", "off"};

/* Longest JSON line, newline included. */
#define JSON_LINE 8192

int svc_log_parse_format(const char *name, enum svc_log_format *out)
{
	if (strcmp(name, "text") == 0)
		*out = SVC_LOG_TEXT;
	else if (strcmp(name, "json") == 0)
		*out = SVC_LOG_JSON;
	else
		return SVC_EINVAL;
	return 0;
}

int svc_log_parse_level(const char *name, enum svc_log_level *out)
{
	for (int i = 0; i <= SVC_LOG_OFF; i++) {
		if (strcasecmp(name, level_names[i]) == 0) {
			*out = (enum svc_log_level)i;
			return 0;
		}
	}
	return SVC_EINVAL;
}

void svc_log_set_tag(const char *tag)
{
	snprintf(log_tag, sizeof(log_tag), "%s", tag ? tag : "");
}

size_t svc_log_escape(char *dst, size_t cap, const char *src)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = 0;

	if (cap == 0)
		return 0;
	for (const unsigned char *p = (const unsigned char *)src; *p; p++) {
		char esc[5];
		size_t len = 0;

		if (*p >= 0x20 && *p != 0x7f) {
			esc[len++] = (char)*p;
		} else {
			esc[len++] = '\\';
			if (*p == '\n' || *p == '\r' || *p == '\t') {
				esc[len++] = *p == '\n' ? 'n' : *p == '\r' ? 'r' : 't';
			} else {
				esc[len++] = 'x';
				esc[len++] = hex[*p >> 4];
				esc[len++] = hex[*p & 15];
			}
		}
		/* An escape is copied whole or not at all: a cut "\x1" would read as text. */
		if (n + len >= cap)
			break;
		memcpy(dst + n, esc, len);
		n += len;
	}
	dst[n] = '\0';
	return n;
}

/* ---- JSON lines ---------------------------------------------------------------------- */

/* A JSON line being built: the last RESERVE bytes of buf are kept for the closing '"', '}',
 * newline and NUL, so a line cut anywhere can still be closed. */
struct jline {
	char *buf;
	size_t cap, n;
	bool full;
};
#define RESERVE 4

static bool jl_raw(struct jline *w, const char *s, size_t len)
{
	if (w->full || w->n + len + RESERVE > w->cap) {
		w->full = true;
		return false;
	}
	memcpy(w->buf + w->n, s, len);
	w->n += len;
	return true;
}

/* Length of the UTF-8 sequence led by c (the text is known valid there). */
static size_t seq_len(unsigned char c)
{
	return c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
}

/* Appends the escaped inside of a JSON string; false when it was cut. */
static bool jl_esc(struct jline *w, const char *src)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *s = (const unsigned char *)src;
	size_t len = strlen(src), pos = 0;

	while (pos < len) {
		size_t bad = 0, end;
		bool valid = svc_utf8_valid(s + pos, len - pos, &bad);

		end = valid ? len : pos + bad;
		while (pos < end) {
			unsigned char c = s[pos];
			char esc[7];
			size_t el = 0, take = 1;

			if (c == '"' || c == '\\') {
				esc[0] = '\\';
				esc[1] = (char)c;
				el = 2;
			} else if (c == '\n' || c == '\r' || c == '\t') {
				esc[0] = '\\';
				esc[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
				el = 2;
			} else if (c < 0x20 || c == 0x7f) {
				memcpy(esc, "\\u00", 4);
				esc[4] = hex[c >> 4];
				esc[5] = hex[c & 15];
				el = 6;
			} else {
				take = seq_len(c);
				if (!jl_raw(w, (const char *)s + pos, take))
					return false;
				pos += take;
				continue;
			}
			if (!jl_raw(w, esc, el))
				return false;
			pos += take;
		}
		if (!valid) {
			if (!jl_raw(w, "\\ufffd", 6))
				return false;
			pos++; /* one bad byte, one replacement character */
		}
	}
	return true;
}

/* Appends "value" (a JSON string), cut if need be: once the opening quote is in, the closing
 * one always fits. False when not even the opening quote fitted (nothing written). */
static bool jl_string(struct jline *w, const char *value)
{
	if (!jl_raw(w, "\"", 1))
		return false;
	jl_esc(w, value);
	w->buf[w->n++] = '"';
	return true;
}

/* True when text is a JSON number (-?digits[.digits][e[+-]digits], no leading zero). */
static bool is_json_number(const char *t)
{
	const char *p = t;

	if (*p == '-')
		p++;
	if (*p == '0')
		p++;
	else if (*p >= '1' && *p <= '9')
		while (*p >= '0' && *p <= '9')
			p++;
	else
		return false;
	if (*p == '.') {
		if (!(*++p >= '0' && *p <= '9'))
			return false;
		while (*p >= '0' && *p <= '9')
			p++;
	}
	if (*p == 'e' || *p == 'E') {
		p++;
		if (*p == '+' || *p == '-')
			p++;
		if (!(*p >= '0' && *p <= '9'))
			return false;
		while (*p >= '0' && *p <= '9')
			p++;
	}
	return *p == '\0';
}

static bool is_fixed_key(const char *key)
{
	static const char *const fixed[] = {"ts", "level", "worker", "tag", "component", "msg"};

	for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
		if (strcmp(key, fixed[i]) == 0)
			return true;
	return false;
}

/* Appends ,"key":value; a member whose key does not fit is left out whole (a long value is
 * cut instead). The key gets one '_' appended per clash (unders), so that every member of the
 * object keeps a distinct name. */
static void jl_member(struct jline *w, const char *key, const char *value, bool number,
                      size_t unders)
{
	size_t mark = w->n;

	if (!jl_raw(w, ",\"", 2) || !jl_esc(w, key))
		goto drop;
	for (size_t i = 0; i < unders; i++)
		if (!jl_raw(w, "_", 1))
			goto drop;
	if (!jl_raw(w, "\":", 2))
		goto drop;
	if (number && is_json_number(value) ? jl_raw(w, value, strlen(value)) : jl_string(w, value))
		return;
drop:
	w->n = mark;
	w->full = true;
}

/* Writes {"ts","level",["worker"|"tag"],"component","msg",fields...} and a newline. */
static void write_json(enum svc_log_level level, const char *ts, const char *component,
                       const char *message, const struct svc_log_field *fields, size_t n_fields)
{
	char buf[JSON_LINE];
	struct jline w = {buf, sizeof(buf), 0, false};
	const char *digits = strncmp(log_tag, "worker ", 7) == 0 ? log_tag + 7 : NULL;

	jl_raw(&w, "{\"ts\":\"", 7);
	jl_raw(&w, ts, strlen(ts));
	jl_raw(&w, "\",\"level\":\"", 11);
	jl_raw(&w, level_names[level], strlen(level_names[level]));
	jl_raw(&w, "\"", 1);
	if (digits && is_json_number(digits)) {
		jl_raw(&w, ",\"worker\":", 10);
		jl_raw(&w, digits, strlen(digits));
	} else if (log_tag[0]) {
		jl_raw(&w, ",\"tag\":", 7);
		jl_string(&w, log_tag);
	}
	jl_raw(&w, ",\"component\":", 13);
	jl_string(&w, component);
	jl_raw(&w, ",\"msg\":", 7);
	jl_string(&w, message);
	for (size_t i = 0; i < n_fields && !w.full; i++) {
		/* a fixed member's name ("msg") or an earlier field's ("message_id" given twice) */
		size_t unders = is_fixed_key(fields[i].key) ? 1 : 0;

		for (size_t j = 0; j < i; j++)
			unders += strcmp(fields[j].key, fields[i].key) == 0;
		jl_member(&w, fields[i].key, fields[i].value, fields[i].number, unders);
	}
	buf[w.n++] = '}';
	buf[w.n++] = '\n';
	fwrite(buf, 1, w.n, stderr);
	fflush(stderr);
}

size_t svc_log_json_escape(char *dst, size_t cap, const char *src)
{
	struct jline w = {dst, cap + RESERVE - 1, 0, false};

	if (cap == 0)
		return 0;
	jl_esc(&w, src);
	dst[w.n] = '\0';
	return w.n;
}

/* "2026-12-01T05:00:00.123Z" into ts (32 bytes). */
static void timestamp(char ts[32])
{
	struct timespec now;
	struct tm tm;
	size_t n;

	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	n = strftime(ts, 32, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts + n, 32 - n, ".%03ldZ", now.tv_nsec / 1000000L);
}

/* ---- text lines ---------------------------------------------------------------------- */

static void log_vwrite(enum svc_log_level level, const char *component,
                       const struct svc_log_field *fields, size_t n_fields, const char *fmt,
                       va_list ap)
{
	char line[2048], text[2048], ts[32];
	size_t n, t;

	timestamp(ts);
	if (svc_log_format == SVC_LOG_JSON) {
		vsnprintf(text, sizeof(text), fmt, ap);
		write_json(level, ts, component, text, fields, n_fields);
		return;
	}
	n = (size_t)snprintf(line, sizeof(line), "%s %s ", ts, level_names[level]);
	/* Tag, component and message may carry bytes from the network (message ids, routing
	 * keys, error texts): control characters are escaped so one event stays one line. */
	t = (size_t)snprintf(text, sizeof(text), "%s%s[%s] ", log_tag, log_tag[0] ? " " : "",
	                     component);
	if (t < sizeof(text))
		vsnprintf(text + t, sizeof(text) - t, fmt, ap);
	/* One write per line so lines of several worker processes do not interleave. */
	n += svc_log_escape(line + n, sizeof(line) - 1 - n, text);
	line[n++] = '\n';
	fwrite(line, 1, n, stderr);
	fflush(stderr);
}

void svc_log_write(enum svc_log_level level, const char *component, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vwrite(level, component, NULL, 0, fmt, ap);
	va_end(ap);
}

void svc_log_write_kv(enum svc_log_level level, const char *component,
                      const struct svc_log_field *fields, size_t n_fields, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vwrite(level, component, fields, n_fields, fmt, ap);
	va_end(ap);
}

#define MAX_STATS 24

void svc_log_stats(const char *component, const struct svc_log_stat *stats, size_t n)
{
	struct svc_log_field fields[MAX_STATS];
	char values[MAX_STATS][32];

	if (SVC_LOG_INFO < svc_log_threshold)
		return;
	if (n > MAX_STATS)
		n = MAX_STATS;
	for (size_t i = 0; i < n; i++) {
		double v = stats[i].value;

		/* counts as integers, rates and ages with one decimal */
		if (v == (double)(long long)v)
			snprintf(values[i], sizeof(values[i]), "%lld", (long long)v);
		else
			snprintf(values[i], sizeof(values[i]), "%.1f", v);
		fields[i] = (struct svc_log_field)SVC_LOG_NUM(stats[i].key, values[i]);
	}
	svc_log_write_fields(SVC_LOG_INFO, component, "stats", fields, n);
}

/* Appends src to buf[*n] (cap bytes), quoted when a reader could not tell where it ends. */
static void append_value(char *buf, size_t cap, size_t *n, const char *src)
{
	bool quote = *src == '\0' || strpbrk(src, " \"=\\") != NULL;

	if (quote && *n + 1 < cap)
		buf[(*n)++] = '"';
	for (const char *p = src; *p && *n + 2 < cap; p++) {
		if (quote && (*p == '"' || *p == '\\'))
			buf[(*n)++] = '\\';
		buf[(*n)++] = *p;
	}
	if (quote && *n + 1 < cap)
		buf[(*n)++] = '"';
	buf[*n] = '\0';
}

void svc_log_write_fields(enum svc_log_level level, const char *component, const char *message,
                          const struct svc_log_field *fields, size_t n_fields)
{
	char text[2048];
	size_t n;

	if (level < svc_log_threshold)
		return;
	if (svc_log_format == SVC_LOG_JSON) {
		char ts[32];

		timestamp(ts);
		write_json(level, ts, component, message, fields, n_fields);
		return;
	}
	n = (size_t)snprintf(text, sizeof(text), "%s", message);
	for (size_t i = 0; i < n_fields && n + 2 < sizeof(text); i++) {
		n += (size_t)snprintf(text + n, sizeof(text) - n, " %s=", fields[i].key);
		if (n >= sizeof(text)) {
			n = sizeof(text) - 1;
			break;
		}
		append_value(text, sizeof(text), &n, fields[i].value);
	}
	svc_log_write(level, component, "%s", text);
}

const char *svc_strerror(int code)
{
	switch (code) {
	case SVC_OK:
		return "OK";
	case SVC_ENOMEM:
		return "ENOMEM";
	case SVC_EINVAL:
		return "EINVAL";
	case SVC_ECONFIG:
		return "ECONFIG";
	case SVC_ECONN:
		return "ECONN";
	case SVC_ETIMEOUT:
		return "ETIMEOUT";
	case SVC_EPROTO:
		return "EPROTO";
	case SVC_EDB:
		return "EDB";
	case SVC_ELUA:
		return "ELUA";
	case SVC_ENACK:
		return "ENACK";
	case SVC_ERETURNED:
		return "ERETURNED";
	case SVC_ESTOP:
		return "ESTOP";
	}
	return "EUNKNOWN";
}
