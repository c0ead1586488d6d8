#include "util/log.h"

#include <stdarg.h>
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

void svc_log_write(enum svc_log_level level, const char *component, const char *fmt, ...)
{
	char line[2048];
	struct timespec ts;
	struct tm tm;
	size_t n;
	va_list ap;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
	n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03ldZ %s %s%s[%s] ",
	                      ts.tv_nsec / 1000000L, level_names[level], log_tag,
	                      log_tag[0] ? " " : "", component);
	if (n < sizeof(line)) {
		va_start(ap, fmt);
		vsnprintf(line + n, sizeof(line) - n, fmt, ap);
		va_end(ap);
	}
	/* One write per line so lines of several worker processes do not interleave. */
	n = strlen(line);
	if (n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	fwrite(line, 1, n, stderr);
	fflush(stderr);
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
