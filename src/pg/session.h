/* pg/session: running statements on an open session (a bare PGconn).
 *
 * Per-connection state (the prelude and the prepared statements) lives in libpq's instance
 * data (PQregisterEventProc, svc_pg_state() below), so it follows the PGconn wherever it is
 * lent (the consumer lends its connection to svccomm.db) and is freed with it; a PQreset()
 * forgets it.
 *
 * Prelude: statements without parameters (static strings, at most SVC_PG_MAX_PRELUDE) that must
 * run before the next statement on conn, e.g. the consumer's "BEGIN" + "SAVEPOINT svc_msg".
 * They are not sent on their own: svc_pg_query() sends them together with the next statement in
 * one libpq pipeline (one round trip), and a message whose handler never touches the database
 * costs no round trip at all. When a prelude statement fails, the statement after it is not
 * run and the prelude's error is returned for it.
 *
 * Prepared statements: svc_pg_query(..., prepare = true) keeps a named prepared statement for
 * the SQL text (at most 16 per connection) and uses it from then on (the parse and plan of a
 * complex statement cost more than its execution); the Parse travels in the same round trip
 * as the first execution. A statement whose execution fails is prepared again at its next use;
 * a session that lost one (26000, a pooler) gets unnamed statements from then on.
 *
 * Deferred statements (the consumer's pipelined handler statements): while allowed
 * (svc_pg_pipeline_allow), svc_pg_send() queues a statement, with any pending prelude, in a
 * libpq pipeline and returns without waiting for its result; the results are read at the next
 * synchronisation: svc_pg_sync(), any other statement on conn (svc_pg_query and friends sync
 * first), or a bound (SVC_PG_PIPELINE_MAX statements or SVC_PG_PIPELINE_BYTES of parameters).
 * The first error a sync reads is kept as the session's "late error" until
 * svc_pg_pipeline_reset(): once a queued statement failed, the transaction is aborted and only
 * a rollback helps, which is the owner's job (the consumer fails the whole batch).
 * Deferred statements are prepared too (their Parse queued with the first execution), using
 * at most half of the cache; a Parse that did not succeed is forgotten when the sync reads it.
 */
#ifndef SVC_PG_SESSION_H
#define SVC_PG_SESSION_H

#include <libpq-events.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#define SVC_PG_MAX_PRELUDE    3
#define SVC_PG_PIPELINE_MAX   1000          /* queued statements before a sync */
#define SVC_PG_PIPELINE_BYTES (1024 * 1024) /* bytes of queued parameters before a sync */

/* Per-connection state of a module (this one's, outbox/batch's): a block in libpq's instance
 * data keyed by the module's own PGEventProc, whose body is svc_pg_state_event(). It makes a
 * zeroed state of size bytes when proc is registered, calls forget(state) on PQreset (a new
 * server session) and forget, then free, when the connection is finished. */
int svc_pg_state_event(PGEventId id, void *info, PGEventProc proc, size_t size,
                       void (*forget)(void *state));
/* The state of proc on conn, registering proc (under name) first when create. NULL when conn
 * is NULL, when there is none and create is false, or out of memory. */
void *svc_pg_state(PGconn *conn, PGEventProc proc, const char *name, bool create);

/* Replaces the pending prelude (n == 0 clears it). Returns 0 or SVC_ENOMEM / SVC_EINVAL. */
int svc_pg_set_prelude(PGconn *conn, const char *const *stmts, int n);
/* True while a prelude waits for the next statement. */
bool svc_pg_prelude_pending(PGconn *conn);
/* Drops the pending prelude without running it. */
void svc_pg_clear_prelude(PGconn *conn);

/* Runs one statement with text parameters, after any pending prelude, like PQexecParams.
 * prepare: use (and keep) a prepared statement for this SQL text, see above. Never NULL
 * except out of memory. */
PGresult *svc_pg_query(PGconn *conn, const char *sql, int nparams, const char *const *params,
                       bool prepare);
/* The same, but ahead of the pending prelude, which stays pending (rows that belong to the
 * message before it). */
PGresult *svc_pg_query_before_prelude(PGconn *conn, const char *sql, int nparams,
                                      const char *const *params, bool prepare);
/* Runs a text of one or more statements (simple query protocol), after the pending prelude
 * (sent in the same text). Returns the last result, as PQexec. */
PGresult *svc_pg_query_text(PGconn *conn, const char *sql);

/* Allows (or not) svc_pg_send() to queue statements on conn; 0 or SVC_ENOMEM. */
int svc_pg_pipeline_allow(PGconn *conn, bool on);
/* Queues one statement (text parameters, after any pending prelude) without waiting for its
 * result. Returns 0 when queued; SVC_EINVAL when queuing is not allowed or not possible (run
 * it with svc_pg_query instead); SVC_EDB when a sync it needed (a bound) read a failure or a
 * late error is already kept (svc_pg_late_error); SVC_ECONN when the connection failed. */
int svc_pg_send(PGconn *conn, const char *sql, int nparams, const char *const *params);
/* Statements queued by svc_pg_send() whose results were not read yet. */
int svc_pg_pipeline_pending(PGconn *conn);
/* Reads the results of every queued statement. 0 when there were none or all succeeded;
 * SVC_EDB when one failed (kept as the late error); SVC_ECONN when the connection failed. */
int svc_pg_sync(PGconn *conn);
/* The kept late error: the failed result (owned by the session; NULL when none). */
const PGresult *svc_pg_late_error(PGconn *conn);
/* End of the transaction: forgets the late error (a pipeline still queued is read first). */
void svc_pg_pipeline_reset(PGconn *conn);

/* svc_pg_query() without preparing, checked with svc_pg_result_error() (a statement may
 * return rows or not). Returns 0 with *res set (caller clears; res may be NULL to discard
 * the result) or a negative SVC_E* with the message in err and the SQLSTATE in sqlstate
 * (may be NULL). On failure *res is NULL and nothing needs clearing; a NULL conn is
 * SVC_ECONN ("not connected", 08003). */
int svc_pg_exec_params(PGconn *conn, const char *sql, int nparams, const char *const *params,
                       PGresult **res, char *err, size_t errsz, char *sqlstate);

/* Runs a statement without parameters (several statements separated by ';' allowed), checked
 * as svc_pg_exec_params(). */
int svc_pg_exec_simple(PGconn *conn, const char *sql, char *err, size_t errsz, char *sqlstate);

#endif
