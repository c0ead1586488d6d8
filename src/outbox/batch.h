/* outbox/batch: the outbox rows of one transaction on a connection (the consumer's batch).
 *
 * Deferred rows. With deferral on (the consumer turns it on for the connection it lends to
 * handlers), an outbox row costs no round trip of its own: svc_outbox_defer_row() appends its
 * JSON object to a buffer, and svc_outbox_flush() writes all of them with one statement that
 * takes the array as $1 (the consumer flushes before its COMMIT; the outbox cancel flushes
 * before it looks). Other SQL does not flush: it does not see the rows until then. A flush that
 * fails poisons the transaction: every row of the batch is then suspect and the caller must
 * roll the whole transaction back (svc_outbox_poisoned() gives the reason).
 *
 * Ids: a deferred row takes its id from the table's sequence in the statement that writes it,
 * like every other writer's row, so ids follow the order in which writers held their locks
 * (outbox/write.c). Its id is not known before the flush.
 *
 * The state lives in libpq's instance data (PQregisterEventProc), like pg/session's: it
 * follows the PGconn wherever it is lent, is freed with it, and a PQreset() drops it.
 */
#ifndef SVC_OUTBOX_BATCH_H
#define SVC_OUTBOX_BATCH_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

/* Turns deferral on or off for conn. */
void svc_outbox_set_deferral(PGconn *conn, bool on);
/* True when rows written on conn are deferred. */
bool svc_outbox_deferral(PGconn *conn);

/* Appends one row for sql (a statement with one parameter, a JSON array of row objects).
 * Rows for another statement, or past 1 MiB, are flushed first. Returns 0 or a negative
 * SVC_E* with the message in err and the SQLSTATE in sqlstate (may be NULL). */
int svc_outbox_defer_row(PGconn *conn, const char *sql, const char *json_object, char *err,
                         size_t errsz, char *sqlstate);
/* Writes the deferred rows now (one statement, one round trip, ahead of a pending prelude).
 * Returns 0 or a negative SVC_E* as svc_outbox_defer_row(); a failure poisons. */
int svc_outbox_flush(PGconn *conn, char *err, size_t errsz, char *sqlstate);

/* Queue position, and dropping what was queued after it (a message that failed). */
size_t svc_outbox_deferred_mark(PGconn *conn);
void svc_outbox_deferred_truncate(PGconn *conn, size_t mark);
/* Flushes so far on conn: a message whose rows may have been written (by a flush during it)
 * cannot be undone with ROLLBACK TO SAVEPOINT. */
unsigned long svc_outbox_flush_count(PGconn *conn);

/* Marks the transaction as poisoned (see above); the first reason is kept. */
void svc_outbox_poison(PGconn *conn, const char *reason);
/* The error of a failed deferred write in this transaction, or NULL. */
const char *svc_outbox_poisoned(PGconn *conn);

/* End of a transaction: drops queued rows and the poison. */
void svc_outbox_transaction_reset(PGconn *conn);

#endif
