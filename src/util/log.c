#include "util/log.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "util/error.h"

enum svc_log_level svc_log_threshold = SVC_LOG_INFO;
static char log_tag[64];

static const char *const level_names[] = {"debug", "info", "warning", "error", "off"};

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

void svc_log_write(enum svc_log_level level, const char *component, const char *fmt, ...)
{
	char line[2048], text[2048];
	struct timespec ts;
	struct tm tm;
	size_t n, t;
	va_list ap;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
	n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03ldZ %s ", ts.tv_nsec / 1000000L,
	                      level_names[level]);
	/* Tag, component and message may carry bytes from the network (message ids, routing
	 * keys, error texts): control characters are escaped so one event stays one line. */
	t = (size_t)snprintf(text, sizeof(text), "%s%s[%s] ", log_tag, log_tag[0] ? " " : "",
	                     component);
	if (t < sizeof(text)) {
		va_start(ap, fmt);
		vsnprintf(text + t, sizeof(text) - t, fmt, ap);
		va_end(ap);
	}
	/* One write per line so lines of several worker processes do not interleave. */
	n += svc_log_escape(line + n, sizeof(line) - 1 - n, text);
	line[n++] = '\n';
	fwrite(line, 1, n, stderr);
	fflush(stderr);
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
