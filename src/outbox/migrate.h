/* migrate: creates and upgrades the outbox and inbox tables (`svccomm migrate`).
 *
 * The migrations are the sql/NNN_*.sql files compiled in as svc_embedded_sql[] (name order).
 * A migration whose name contains "_inbox" targets the inbox table, every other one the
 * outbox table; in the SQL, {{outbox}} / {{inbox}} stand for the quoted table name,
 * {{outbox_name}} / {{inbox_name}} for the bare table name (inside quoted index, trigger and
 * function names, and as the NOTIFY channel) and {{outbox_prefix}} / {{inbox_prefix}} for
 * the quoted schema plus a dot (or nothing); {{envelope}} is the event envelope's SQL
 * expression (outbox/envelope.h) over the variables new_id, send_at, event_type, aggregate and
 * payload of the outbox functions.
 *
 * Applied migrations are recorded in svccomm_migrations(table_name, version, applied_at), in
 * the schema of the outbox table (or the first schema of the search path). Each migration
 * runs in its own transaction under pg_advisory_xact_lock, so several processes may migrate
 * at once: the first applies, the others see it recorded.
 */
#ifndef SVC_MIGRATE_H
#define SVC_MIGRATE_H

#include <libpq-fe.h>
#include <stddef.h>

/* Advisory lock key taken by every migration transaction ("svccomm" in ASCII). */
#define SVC_MIGRATE_LOCK_KEY "32496242386136429"

/* Applies the migrations not applied yet for these tables. inbox_table may be NULL (inbox
 * migrations skipped). conn must be idle (no open transaction). Returns how many were applied
 * (each is logged at info level; 0: all were there), or SVC_EINVAL (bad table name), SVC_EDB,
 * SVC_ECONN with the message in err. */
int svc_migrate(PGconn *conn, const char *outbox_table, const char *inbox_table, char *err,
                size_t errsz);

/* How many migrations `svc_migrate` would apply for these tables (inbox_table may be NULL),
 * their names in list (", "-separated, cut to listsz); or SVC_EINVAL, SVC_EDB, SVC_ECONN
 * with the message in err. Reads only. */
int svc_migrate_pending(PGconn *conn, const char *outbox_table, const char *inbox_table, char *list,
                        size_t listsz, char *err, size_t errsz);

/* Replaces the placeholders of sql for the given table names (each may be NULL when sql does
 * not use it). Returns a malloc'd string (caller frees) or NULL: a bad name, an unknown
 * placeholder, a placeholder of a NULL name, or out of memory. */
char *svc_migrate_render(const char *sql, const char *outbox_table, const char *inbox_table);

#endif
