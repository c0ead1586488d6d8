/* outbox: every SQL statement of the outbox write side, and the outbox table name rules.
 *
 * Knows SQL, not AMQP nor Lua; links into the plain-Lua native module, so it uses only libpq,
 * log.c and libc. Table names come from settings (OUTBOX_TABLE, INBOX_TABLE): they are checked
 * with svc_outbox_check_table() and always double-quoted in statements; every value travels
 * as a statement parameter.
 *
 * The row layout and its meaning for other writers is documented in sql/001_outbox.sql.
 */
#ifndef SVC_OUTBOX_H
#define SVC_OUTBOX_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

/* Longest quoted name: "schema"."table" with 63-byte parts. */
#define SVC_OUTBOX_QNAME_MAX 136

/* 0 when name is `ident` or `schema.ident` with ident = [A-Za-z_][A-Za-z0-9_]* of at most
 * 63 bytes; SVC_EINVAL otherwise (err, may be NULL, says why). */
int svc_outbox_check_table(const char *name, char *err, size_t errsz);

/* Writes the quoted form ("t" or "s"."t") of a checked name into out. Returns 0 or SVC_EINVAL
 * (bad name or out too small). */
int svc_outbox_quote_table(const char *name, char *out, size_t outsz);

/* Splits a checked name: schema (may be "" when absent) and bare table name, unquoted.
 * Both buffers must hold 64 bytes. Returns 0 or SVC_EINVAL. */
int svc_outbox_split_table(const char *name, char *schema, char *table);

/* One outbox row to write. Strings are borrowed for the duration of the call; NULL = absent. */
struct svc_outbox_row {
	const char *exchange;    /* required (may be "" for the default exchange) */
	const char *routing_key; /* required */
	/* envelope = false: the exact body. envelope = true: a JSON object text whose members
	 * follow eventId and eventTime in the stored body, e.g.
	 * {"eventType":"update.base","aggregate":"user","payload":{...}}; the server writes
	 * {"eventId":"<row id>","eventTime":"<UTC, microseconds, Z>",<members>}. */
	const char *body;
	bool envelope;
	const char *event_time;     /* timestamptz text for eventTime; default send_after, then
	                             * the database clock at insert (clock_timestamp()) */
	const char *send_after;     /* timestamptz text; default now() (due at commit) */
	const char *message_id;     /* AMQP message_id; default the row id */
	const char *correlation_id; /* AMQP correlation_id */
	const char *headers_json;   /* JSON object of string values: extra AMQP headers */
	const char *tags_json;      /* JSON object of string values: scheduled-event tags */
	const char *id_sequence;    /* the table's id sequence (pg_get_serial_sequence result),
	                             * when the caller cached it: saves a catalog lookup per row */
};

/* Inserts one row in ONE round trip on conn, inside whatever transaction conn has open.
 * The row id is taken from the table's id sequence first, so the envelope's eventId equals
 * it. Returns 0 with *id_out set, or SVC_EINVAL (bad table or row), SVC_EDB, SVC_ECONN with
 * the message in err. */
int svc_outbox_insert(PGconn *conn, const char *table, const struct svc_outbox_row *row,
                      long long *id_out, char *err, size_t errsz);
/* The same, also giving the SQLSTATE of a failure in sqlstate (char[6], "" when none). */
int svc_outbox_insert_st(PGconn *conn, const char *table, const struct svc_outbox_row *row,
                         long long *id_out, char *err, size_t errsz, char *sqlstate);

/* Deletes the rows still in the table for exchange + routing_key whose tags contain
 * tags_json (a non-empty JSON object: jsonb @>). Returns the number deleted (>= 0) or a
 * negative SVC_E* with the message in err. */
long long svc_outbox_cancel(PGconn *conn, const char *table, const char *exchange,
                            const char *routing_key, const char *tags_json, char *err, size_t errsz,
                            char *sqlstate);

/* Builds the INSERT statement for a quoted table name into out (for tests and for callers
 * that prepare it). Returns 0 or SVC_EINVAL when out is too small. */
int svc_outbox_insert_sql(const char *quoted_table, char *out, size_t outsz);

/* Turns an envelope body object text into the suffix the INSERT appends after the eventTime
 * member: "," + members + "}" or "}" for an empty object. Returns a malloc'd string (caller
 * frees) or NULL when body is not a JSON object text (starts with '{', ends with '}'). */
char *svc_outbox_envelope_suffix(const char *body);

/* True when s is exactly "YYYY-MM-DDTHH:MM:SS.ffffffZ" (digits checked, not ranges). */
bool svc_outbox_is_iso_utc(const char *s);

/* Writes the current UTC time as "YYYY-MM-DDTHH:MM:SS.ffffffZ" into out; returns out. */
char *svc_outbox_now_iso(char *out, size_t outsz);

#endif
