/* outbox/write: every SQL statement of the outbox write side (insert, cancel).
 *
 * Knows SQL, not AMQP nor Lua; links into the plain-Lua native module, so it uses only libpq,
 * util/ and libc. Table names come from settings (OUTBOX_TABLE): they are checked with
 * svc_ident_check() (util/ident.h) and always double-quoted in statements; every value travels
 * as a statement parameter. On a connection with deferral on (outbox/batch.h) a row is
 * queued for the batch's statement instead of inserted at once.
 *
 * The row layout and its meaning for other writers is documented in sql/001_outbox.sql; the
 * body of an event row, the envelope, in outbox/envelope.h.
 */
#ifndef SVC_OUTBOX_WRITE_H
#define SVC_OUTBOX_WRITE_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#include "outbox/envelope.h"

/* One outbox row to write. Strings are borrowed for the duration of the call; NULL = absent. */
struct svc_outbox_row {
	const char *exchange;    /* required (may be "" for the default exchange) */
	const char *routing_key; /* required */
	/* envelope = false: the exact body. envelope = true: a JSON object text whose members
	 * follow eventId and eventTime in the stored body (svc_envelope_members()); the
	 * statement writes the envelope around them (outbox/envelope.h). */
	const char *body;
	bool envelope;
	enum svc_wire_format wire_format; /* of the envelope (outbox/envelope.h); 0 = svccomm */
	const char *event_time;     /* timestamptz text for eventTime; default send_after, then
	                             * the database clock at insert (clock_timestamp()) */
	const char *send_after;     /* timestamptz text; default now() (due at commit) */
	const char *message_id;     /* AMQP message_id; default "<APP_ID>:<row id>" */
	const char *correlation_id; /* AMQP correlation_id */
	const char *headers_json;   /* JSON object of string values: extra AMQP headers */
	const char *tags_json;      /* JSON object of string values: scheduled-event tags */
	const char *id_sequence;    /* the table's id sequence (pg_get_serial_sequence result),
	                             * when the caller cached it: saves a catalog lookup per row */
};

/* Inserts one row in ONE round trip on conn, inside whatever transaction conn has open (with
 * deferral on and id_sequence given: queued, no round trip). The row id is taken from the
 * table's id sequence by the statement that inserts the row, so the envelope's eventId equals
 * it. Returns 0 with *id_out set (0 for a queued row: its id is taken when the batch is
 * written), or SVC_EINVAL (bad table or row), SVC_EDB, SVC_ECONN with the message in err. */
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

#endif
