/* outbox/envelope: the members and the time of the event envelope. See envelope.h. */
#include "outbox/envelope.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/clock.h"
#include "util/error.h"

int svc_wire_format_parse(const char *name, enum svc_wire_format *out)
{
	if (!name || strcmp(name, "svccomm") == 0)
		*out = SVC_WIRE_SVCCOMM;
	else if (strcmp(name, "django") == 0)
		*out = SVC_WIRE_DJANGO;
	else
		return SVC_EINVAL;
	return 0;
}

const char *svc_wire_format_name(enum svc_wire_format fmt)
{
	return fmt == SVC_WIRE_DJANGO ? "django" : "svccomm";
}

const char *svc_wire_content_type(enum svc_wire_format fmt)
{
	return fmt == SVC_WIRE_DJANGO ? "text/json" : "application/json";
}

size_t svc_envelope_members_as(enum svc_wire_format fmt, const char *type_json,
                               const char *aggregate_json, const char *payload_json, char *out,
                               size_t outsz)
{
	const char *type_key = fmt == SVC_WIRE_DJANGO ? "event_type" : "eventType";
	int n = snprintf(out, outsz, "{\"%s\":%s,\"aggregate\":%s,\"payload\":%s}", type_key,
	                 type_json, aggregate_json, payload_json);

	return n < 0 ? 0 : (size_t)n;
}

size_t svc_envelope_members(const char *type_json, const char *aggregate_json,
                            const char *payload_json, char *out, size_t outsz)
{
	return svc_envelope_members_as(SVC_WIRE_SVCCOMM, type_json, aggregate_json, payload_json,
	                               out, outsz);
}

static bool is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

char *svc_envelope_tail(const char *members)
{
	const char *p = members, *end;
	char *out;
	size_t n;

	if (!members)
		return NULL;
	end = members + strlen(members);
	while (p < end && is_ws(*p))
		p++;
	while (end > p && is_ws(end[-1]))
		end--;
	if (end - p < 2 || *p != '{' || end[-1] != '}')
		return NULL;
	p++;
	while (p < end && is_ws(*p))
		p++;
	if (*p == '}')
		return strdup("}");
	n = (size_t)(end - p);
	out = malloc(n + 2);
	if (!out)
		return NULL;
	out[0] = ',';
	memcpy(out + 1, p, n);
	out[n + 1] = '\0';
	return out;
}

const char *svc_envelope_time(const char *event_time, const char *send_after, char *buf,
                              size_t bufsz)
{
	if (event_time)
		return svc_clock_is_iso_micro(event_time) ? event_time : NULL;
	if (send_after)
		return NULL;
	return svc_clock_iso(svc_clock_wall(), 6, buf, bufsz);
}
