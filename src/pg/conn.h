/* pg/conn: opening PostgreSQL sessions, their errors, and the connection object.
 *
 * Two levels:
 *  - functions on a bare PGconn (svc_pg_open(), svc_pg_result_error()): used by the outbox,
 *    the migrations and the Lua binding, which report errors into a caller buffer;
 *  - struct svc_pg, a connection object that keeps its conninfo (for reconnecting) and the text
 *    and SQLSTATE of its last error, as PQerrorMessage() does for libpq. The relay uses it.
 * Statements on a session (prepared statements, prelude, pipeline) are in pg/session.h.
 *
 * Every session is opened with TimeZone=UTC and DateStyle=ISO (so timestamps come back as
 * "2024-01-02 03:04:05.123456+00"), TCP keepalives, a connect timeout and
 * fallback_application_name; values given in the conninfo win, except that our "-c" options
 * are appended to any `options` the conninfo has. A password is never logged nor put into an
 * error text by this module.
 *
 * Error classification: a result whose SQLSTATE is of class 08 (connection exception), 57P01..
 * 57P03 (admin shutdown, crash shutdown, cannot connect now), 25006 (read-only SQL
 * transaction: the server is no longer the primary, and a new connection with
 * target_session_attrs=read-write finds the one that is), or any failure after which
 * PQstatus() is CONNECTION_BAD is SVC_ECONN (reconnect and retry); any other failure is SVC_EDB.
 * Among those, class 22 (data exception, svc_pg_sqlstate_is_data()) blames the value sent, so
 * a caller can blame whoever supplied it (the consumer dead-letters the message).
 */
#ifndef SVC_PG_CONN_H
#define SVC_PG_CONN_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#include "pg/session.h"

#define SVC_PG_ERRSZ 1024

/* Opens a session. conninfo: "key=value ..." or a postgresql:// URL; application_name is used
 * when the conninfo does not set one (NULL: "svccomm"). Returns the connection (caller owns:
 * PQfinish) or NULL with a message in err (never containing the password). */
PGconn *svc_pg_open(const char *conninfo, const char *application_name, char *err, size_t errsz);

/* True when sqlstate (5 chars) means the connection is gone or unusable (also 25006: the
 * server cannot take writes any more, another connection may). */
bool svc_pg_sqlstate_is_conn(const char *sqlstate);
/* True when sqlstate (5 chars) says a value was bad (class 22, data exception): the fault of
 * whoever supplied the value, not of the connection. */
bool svc_pg_sqlstate_is_data(const char *sqlstate);

/* Checks res against the wanted status (PGRES_COMMAND_OK or PGRES_TUPLES_OK; a NULL res is a
 * failure). Returns 0, or SVC_ECONN / SVC_EDB with the message in err (may be NULL) and the
 * SQLSTATE in sqlstate (char[6], may be NULL; "" when unknown). Does not clear res. */
int svc_pg_result_error(PGconn *conn, const PGresult *res, ExecStatusType want, char *err,
                        size_t errsz, char *sqlstate);

/* Copies msg (NULL: "unknown error") into err (may be NULL) on one line: libpq's trailing
 * newlines dropped, each inner line break (with the indentation after it) written " | ", so
 * "ERROR: x\nDETAIL: y\n" becomes "ERROR: x | DETAIL: y"; cut to errsz. */
void svc_pg_set_error(char *err, size_t errsz, const char *msg);

/* Writes which database conn is for, 'database "<name>" on <host>:<port> as <user>' (never
 * the password), into out: 0, or SVC_EINVAL when conn is NULL or has no database. */
int svc_pg_target(PGconn *conn, char *out, size_t outsz);

/* "idle" | "active" | "intrans" | "inerror" | "unknown" for PQtransactionStatus(). */
const char *svc_pg_transaction_status_name(PGTransactionStatusType st);

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

#endif
