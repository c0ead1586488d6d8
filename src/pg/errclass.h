/* pg/errclass: whose fault a PostgreSQL error is, from its SQLSTATE.
 *
 * The infrastructure's: the connection failed (class 08), the server is shutting down or not
 * accepting connections (57P), it is out of resources (53) or failing below SQL (58), it is
 * read-only (25006: a standby, or default_transaction_read_only), or the transaction lost a
 * race with another one (40001 serialization failure, 40P01 deadlock). Running the same work
 * again later can succeed: a consumer rolls back, requeues and backs off without counting an
 * attempt. Every other SQLSTATE (and an unknown one) is the work's own: the message's fault.
 *
 * Of the infrastructure's, those of svc_pg_sqlstate_is_conn() (pg/conn.h: 08, 57P01..03,
 * 25006) also say this session is no use any more: the caller reconnects (with several hosts
 * in DATABASE_URL and target_session_attrs=read-write, to whichever is the primary now).
 */
#ifndef SVC_PG_ERRCLASS_H
#define SVC_PG_ERRCLASS_H

#include <stdbool.h>

/* A short name of the infrastructure failure sqlstate stands for ("read-only",
 * "serialization failure", ...), or NULL when it is the work's fault (also for NULL, "" or a
 * malformed sqlstate). */
const char *svc_pg_infra_reason(const char *sqlstate);

/* True when sqlstate is the infrastructure's (svc_pg_infra_reason() is not NULL). */
bool svc_pg_sqlstate_is_infra(const char *sqlstate);

#endif
