/* outbox/envelope: the event envelope, the body of an event's outbox row. The one place that
 * knows its members, their order and their formats:
 *
 *   {"eventId":"<row id>","eventTime":"<UTC, microseconds, Z>",
 *    "eventType":<event type>,"aggregate":<aggregate>,"payload":<payload>}
 *
 * The head (eventId, eventTime) is written by the INSERT itself, because the row id comes from
 * the table's sequence in that statement: SVC_ENVELOPE_SQL is its SQL expression, used by
 * every statement that writes events. The members after it come from the writer (the Lua
 * side, through svccomm.core.envelope_members) as a JSON object text, which
 * svc_envelope_tail() turns into what the statement appends. Python library consumers read
 * the same members.
 *
 * WIRE_FORMAT = "django" (SVC_WIRE_DJANGO) writes the Python library 2.6's envelope instead:
 *
 *   {"eventId":<row id, a JSON number>,"event_time":"<UTC, milliseconds, Z>",
 *    "event_type":<event type>,"aggregate":<aggregate>,"payload":<payload>}
 *
 * The format is chosen per row: the head by the fmt argument of SVC_ENVELOPE_SQL (an SQL
 * text, 'django' or anything else for svccomm's), the members by svc_envelope_members_as().
 * This header is the only place that spells either envelope.
 */
#ifndef SVC_OUTBOX_ENVELOPE_H
#define SVC_OUTBOX_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>

/* The two envelope formats (setting WIRE_FORMAT); readers accept both. */
enum svc_wire_format {
	SVC_WIRE_SVCCOMM = 0, /* "svccomm": the documented envelope, eventId a string */
	SVC_WIRE_DJANGO = 1,  /* "django": what the Python library 2.6 writes */
};

/* Reads a WIRE_FORMAT name ("svccomm", "django"; NULL is "svccomm") into *out: 0, or
 * SVC_EINVAL for any other name. */
int svc_wire_format_parse(const char *name, enum svc_wire_format *out);

/* The setting's name of a format, as SVC_ENVELOPE_SQL's fmt argument compares it. */
const char *svc_wire_format_name(enum svc_wire_format fmt);

/* The AMQP content type the format's messages are published with ("application/json", or
 * the Python library's "text/json"). */
const char *svc_wire_content_type(enum svc_wire_format fmt);

/* eventTime in microseconds (see SVC_ENVELOPE_SQL's arguments). */
#define SVC_ENVELOPE_TIME_SQL(time_utc, event_time, send_after)                                    \
	"COALESCE(" time_utc ", to_char(coalesce(" event_time "::timestamptz, " send_after         \
	"::timestamptz, clock_timestamp()) AT TIME ZONE 'UTC', "                                   \
	"'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))"

/* SQL expression of the envelope. Arguments are SQL expressions (string literals): fmt (the
 * format's name, svc_wire_format_name(): 'django' writes the Python library's head, anything
 * else svccomm's), id (the row id), time_utc (eventTime already formatted, or NULL),
 * event_time and send_after (timestamptz texts or NULL: eventTime is the first of them, else
 * the database clock) and tail (text of svc_envelope_tail() of the format's members). */
#define SVC_ENVELOPE_SQL(fmt, id, time_utc, event_time, send_after, tail)                          \
	"CASE WHEN " fmt " = 'django' THEN '{\"eventId\":' || " id " || ',\"event_time\":\"' || "  \
	"left(" SVC_ENVELOPE_TIME_SQL(                                                             \
	    time_utc, event_time,                                                                  \
	    send_after) ", 23) || 'Z\"' "                                                          \
	                "ELSE '{\"eventId\":\"' || " id                                            \
	                " || '\",\"eventTime\":\"' || " SVC_ENVELOPE_TIME_SQL(                     \
	                    time_utc, event_time, send_after) " || '\"' END || " tail

/* SQL expression of the tail (after eventTime) of an event's envelope, for SQL that builds it
 * from JSON texts itself (the outbox functions of sql/004_outbox_functions.sql): the members of
 * svc_envelope_members_as() in the same order and format (fmt as in SVC_ENVELOPE_SQL), and the
 * closing brace. */
#define SVC_ENVELOPE_MEMBERS_SQL(fmt, type_json, aggregate_json, payload_json)                     \
	"',\"' || CASE WHEN " fmt                                                                  \
	" = 'django' THEN 'event_type' ELSE 'eventType' END || '\":' || " type_json                \
	" || ',\"aggregate\":' || " aggregate_json " || ',\"payload\":' || " payload_json          \
	" || '}'"

/* Writes the members of an event, {"eventType":<type_json>,"aggregate":<aggregate_json>,
 * "payload":<payload_json>} (each argument a JSON text), into out. Returns the length of the
 * whole text, as snprintf: the text is complete when that is less than outsz. */
size_t svc_envelope_members(const char *type_json, const char *aggregate_json,
                            const char *payload_json, char *out, size_t outsz);

/* The same in the given format ("django": "event_type" instead of "eventType"). */
size_t svc_envelope_members_as(enum svc_wire_format fmt, const char *type_json,
                               const char *aggregate_json, const char *payload_json, char *out,
                               size_t outsz);

/* Turns a JSON object text of members into the tail the INSERT appends after the eventTime
 * member: "," + members + "}" or "}" for an empty object. Returns a malloc'd string (caller
 * frees) or NULL when members is not a JSON object text (starts with '{', ends with '}',
 * white space around allowed). */
char *svc_envelope_tail(const char *members);

/* eventTime as the C side formats it (to_char per row costs about as much as the insert
 * itself): event_time when it is already "YYYY-MM-DDTHH:MM:SS.ffffffZ", the current time
 * when neither event_time nor send_after is given (written into buf), else NULL (the SQL
 * formats it). */
const char *svc_envelope_time(const char *event_time, const char *send_after, char *buf,
                              size_t bufsz);

#endif
