/* pg_conn: the libpq layer every database user goes through.
 *
 * Two levels:
 *  - functions on a bare PGconn (svc_pg_open(), svc_pg_result_error(), svc_pg_exec_params()):
 *    used by outbox.c, migrate.c and the Lua binding, which report errors into a caller buffer;
 *  - struct svc_pg, a connection object that keeps its conninfo (for reconnecting) and the text
 *    and SQLSTATE of its last error, as PQerrorMessage() does for libpq. The consumer and the
 *    relay use this one.
 *
 * Every session is opened with TimeZone=UTC and DateStyle=ISO (so timestamps come back as
 * "2024-01-02 03:04:05.123456+00"), TCP keepalives, a connect timeout and
 * fallback_application_name; values given in the conninfo win, except that our "-c" options
 * are appended to any `options` the conninfo has. A password is never logged nor put into an
 * error text by this module.
 *
 * Error classification: a result whose SQLSTATE is of class 08 (connection exception), 57P01..
 * 57P03 (admin shutdown, crash shutdown, cannot connect now), or any failure after which
 * PQstatus() is CONNECTION_BAD is SVC_ECONN (reconnect and retry); any other failure is SVC_EDB.
 */
#ifndef SVC_PG_CONN_H
#define SVC_PG_CONN_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#define SVC_PG_ERRSZ 1024

/* Opens a session. conninfo: "key=value ..." or a postgresql:// URL; application_name is used
 * when the conninfo does not set one (NULL: "svccomm"). Returns the connection (caller owns:
 * PQfinish) or NULL with a message in err (never containing the password). */
PGconn *svc_pg_open(const char *conninfo, const char *application_name, char *err, size_t errsz);

/* True when sqlstate (5 chars) means the connection is gone or unusable. */
bool svc_pg_sqlstate_is_conn(const char *sqlstate);

/* Checks res against the wanted status (PGRES_COMMAND_OK or PGRES_TUPLES_OK; a NULL res is a
 * failure). Returns 0, or SVC_ECONN / SVC_EDB with the message in err (may be NULL) and the
 * SQLSTATE in sqlstate (char[6], may be NULL; "" when unknown). Does not clear res. */
int svc_pg_result_error(PGconn *conn, const PGresult *res, ExecStatusType want, char *err,
                        size_t errsz, char *sqlstate);

/* PQexecParams with text parameters and text results. Returns 0 with *res set (caller clears;
 * res may be NULL to discard the result) or a negative SVC_E* with the message in err.
 * On failure *res is NULL and nothing needs clearing. */
int svc_pg_exec_params(PGconn *conn, const char *sql, int nparams, const char *const *params,
                       PGresult **res, char *err, size_t errsz, char *sqlstate);

/* Runs a statement without parameters (several statements separated by ';' allowed). */
int svc_pg_exec_simple(PGconn *conn, const char *sql, char *err, size_t errsz, char *sqlstate);

/* ---- statements on a bare PGconn: deferred prelude, prepared-statement cache -----------------
 *
 * Per-connection state lives in libpq's instance data (PQregisterEventProc), so it follows the
 * PGconn wherever it is lent (the consumer lends its connection to svccomm.db) and is freed
 * with it; a PQreset() forgets it.
 *
 * Prelude: statements without parameters (static strings, at most SVC_PG_MAX_PRELUDE) that must
 * run before the next statement on conn, e.g. the consumer's "BEGIN" + "SAVEPOINT svc_msg".
 * They are not sent on their own: svc_pg_query() sends them together with the next statement in
 * one libpq pipeline (one round trip), and a message whose handler never touches the database
 * costs no round trip at all. When a prelude statement fails, the statement after it is not
 * run and the prelude's error is returned for it. */
#define SVC_PG_MAX_PRELUDE 3

/* Replaces the pending prelude (n == 0 clears it). Returns 0 or SVC_ENOMEM / SVC_EINVAL. */
int svc_pg_set_prelude(PGconn *conn, const char *const *stmts, int n);
/* True while a prelude waits for the next statement. */
bool svc_pg_prelude_pending(PGconn *conn);
/* Drops the pending prelude without running it. */
void svc_pg_clear_prelude(PGconn *conn);

/* Runs one statement with text parameters, after any pending prelude, like PQexecParams.
 * prepare: keep a named prepared statement for this SQL text on conn and use it from then on
 * (the parse and plan of a complex statement cost more than its execution); the Parse travels
 * in the same round trip as the first execution. A statement whose execution fails is prepared
 * again at its next use; a session that lost one (26000, a pooler) gets unnamed statements
 * from then on. Never NULL except out of memory. */
PGresult *svc_pg_query(PGconn *conn, const char *sql, int nparams, const char *const *params,
                       bool prepare);
/* Runs a text of one or more statements (simple query protocol), after the pending prelude
 * (sent in the same text). Returns the last result, as PQexec. */
PGresult *svc_pg_query_text(PGconn *conn, const char *sql);

/* Deferred rows. With deferral on (the consumer turns it on for the connection it lends to
 * handlers), an outbox row costs no round trip of its own: svc_pg_defer_row() appends its JSON
 * object to a buffer, and svc_pg_flush() writes all of them with one statement that takes the
 * array as $1 (the consumer flushes before its COMMIT; the outbox cancel flushes before it
 * looks). Other SQL does not flush: it does not see the rows until then. A flush that fails
 * poisons the transaction: every row of the batch is then suspect and the caller must roll
 * the whole transaction back (svc_pg_poisoned() gives the reason). */
void svc_pg_set_deferral(PGconn *conn, bool on);
bool svc_pg_deferral(PGconn *conn);
/* Appends one row for sql (a statement with one parameter, a JSON array of row objects).
 * Rows for another statement, or past 1 MiB, are flushed first. */
int svc_pg_defer_row(PGconn *conn, const char *sql, const char *json_object, char *err,
                     size_t errsz, char *sqlstate);
/* Writes the deferred rows now (one statement, one round trip). */
int svc_pg_flush(PGconn *conn, char *err, size_t errsz, char *sqlstate);
/* Queue position, and dropping what was queued after it (a message that failed). */
size_t svc_pg_deferred_mark(PGconn *conn);
void svc_pg_deferred_truncate(PGconn *conn, size_t mark);
/* Flushes so far on conn: a message whose rows may have been written (by a flush during it)
 * cannot be undone with ROLLBACK TO SAVEPOINT. */
unsigned long svc_pg_flush_count(PGconn *conn);
/* Marks the transaction as poisoned (see above). */
void svc_pg_poison(PGconn *conn, const char *reason);
/* The error of a failed deferred write in this transaction, or NULL. */
const char *svc_pg_poisoned(PGconn *conn);
/* End of a transaction: drops queued writes, reserved ids and the poison. */
void svc_pg_transaction_reset(PGconn *conn);
/* An id from `sequence` reserved inside the current transaction: ids are taken in blocks
 * by one statement (first as many as the previous transaction used, at least 8, then doubling
 * up to 128); unused ones are dropped at the end of the transaction, so an id is never used by a
 * later transaction than the one that took it. */
int svc_pg_reserve_id(PGconn *conn, const char *sequence, long long *id, char *err, size_t errsz,
                      char *sqlstate);

/* A connection that remembers its conninfo and its last error. Embed it; _init before use. */
struct svc_pg {
	PGconn *conn;   /* owned; NULL when not connected */
	char *conninfo; /* owned copy (contains the password: never log it) */
	char *app_name; /* owned copy or NULL */
	char error[SVC_PG_ERRSZ];
	char sqlstate[6]; /* SQLSTATE of the last error, "" when none or unknown */
};

void svc_pg_init(struct svc_pg *pg);
/* Closes the connection and frees the copies. */
void svc_pg_release(struct svc_pg *pg);

/* Connects (closing any current connection). Returns 0, SVC_ENOMEM or SVC_ECONN. */
int svc_pg_connect(struct svc_pg *pg, const char *conninfo, const char *application_name);
/* Closes and opens again with the same conninfo. */
int svc_pg_reconnect(struct svc_pg *pg);
/* Closes the connection (keeps the conninfo). */
void svc_pg_close(struct svc_pg *pg);
/* True when connected and PQstatus is CONNECTION_OK. */
bool svc_pg_is_ok(const struct svc_pg *pg);

/* Text of the last error ("" when none). Valid until the next call on pg. */
const char *svc_pg_error(const struct svc_pg *pg);
/* SQLSTATE of the last error ("" when none). */
const char *svc_pg_sqlstate(const struct svc_pg *pg);

/* Parameterized statement; see svc_pg_exec_params(). The error is kept on pg. */
int svc_pg_exec(struct svc_pg *pg, const char *sql, int nparams, const char *const *params,
                PGresult **res);

/* Transaction helpers. Savepoint names must be plain identifiers ([A-Za-z_][A-Za-z0-9_]*). */
int svc_pg_begin(struct svc_pg *pg);
int svc_pg_commit(struct svc_pg *pg);
int svc_pg_rollback(struct svc_pg *pg);
int svc_pg_savepoint(struct svc_pg *pg, const char *name);
int svc_pg_release_savepoint(struct svc_pg *pg, const char *name);
int svc_pg_rollback_to(struct svc_pg *pg, const char *name);

/* "idle" | "active" | "intrans" | "inerror" | "unknown" for PQtransactionStatus(). */
const char *svc_pg_transaction_status_name(PGTransactionStatusType st);

#endif
