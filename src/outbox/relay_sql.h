/* relay_sql: every SQL statement the relay (src/relay/) runs against the outbox table.
 *
 * The write side (outbox/write.c) inserts rows; this module claims due rows, deletes confirmed
 * ones, reschedules or parks rows that could not be sent, takes the partition advisory locks
 * that let several relays share one table, and answers the health check. It knows SQL, not
 * AMQP.
 *
 * Partitions: a row belongs to partition (hashtext(exchange) & 63), so every row of one
 * aggregate (exchange) is in the same partition. A relay publishes only rows of partitions whose
 * session-level advisory lock (two-key form: key_part, partition) it holds on its connection.
 * Each relay also holds one membership lock (key_member, backend pid) so relays can count each
 * other in pg_locks. Both keys are derived from the table name, so relays of different outbox
 * tables in one database never meet.
 *
 * Prepared statements: the statements of the hot path (claim, delete, next due) are prepared on
 * the session at their first use (pg/conn's prepared-statement cache, which lives and dies
 * with the PGconn) and executed by name from then on, so PostgreSQL neither parses nor plans
 * them again. A session that loses them (a pooler that does not keep prepared statements)
 * falls back to unnamed statements.
 *
 * Ownership: struct svc_relay_sql owns its SQL texts and scratch buffers for array
 * parameters; the struct svc_pg connection is the caller's. Every function returns 0 or a
 * negative SVC_E* (SVC_ECONN: reconnect; SVC_EDB: the statement failed), the text being kept
 * on the svc_pg. */
#ifndef SVC_OUTBOX_RELAY_H
#define SVC_OUTBOX_RELAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "pg/conn.h"

#define SVC_RELAY_PARTITIONS 64

/* Columns of a claim result, in order. */
enum svc_relay_col {
	SVC_RELAY_COL_ID,
	SVC_RELAY_COL_PART,
	SVC_RELAY_COL_EXCHANGE,
	SVC_RELAY_COL_ROUTING_KEY,
	SVC_RELAY_COL_BODY,
	SVC_RELAY_COL_MESSAGE_ID, /* message_id or NULL (the relay makes "<APP_ID>:<id>") */
	SVC_RELAY_COL_CORRELATION_ID,
	SVC_RELAY_COL_HEADERS, /* headers::text or NULL */
	SVC_RELAY_COL_CREATED, /* created_at as whole seconds since the epoch */
};

/* The statements kept prepared on the session. */
enum svc_relay_stmt {
	SVC_RELAY_ST_CLAIM_ALL,
	SVC_RELAY_ST_CLAIM_PART,
	SVC_RELAY_ST_DEL,
	SVC_RELAY_ST_DEL_RANGE,
	SVC_RELAY_ST_NEXT_DUE,
	SVC_RELAY_ST_NEXT_DUE_WAKE,
};

/* The first key of the wake lock (two-key advisory lock form): 0x73766377, "svcw". The
 * insert trigger of sql/006_outbox_notify_auto.sql writes the same number. */
#define SVC_RELAY_WAKE_CLASS 1937138551

/* What trying the wake lock found. */
enum svc_relay_wake_try {
	SVC_RELAY_WAKE_GOT,    /* this session holds it now: writers notify from now on */
	SVC_RELAY_WAKE_OTHER,  /* another session holds it exclusively (a relay that sleeps) */
	SVC_RELAY_WAKE_WRITER, /* writers that did not notify have not finished */
};

/* A growable text buffer for one array parameter. */
struct svc_relay_buf {
	char *p;
	size_t cap;
};

struct svc_relay_sql {
	char *table;   /* quoted, possibly schema-qualified: "public"."svccomm_outbox" */
	char *channel; /* NOTIFY channel before migration 003: the bare table name (unquoted) */
	char schema_channel[64]; /* since 003: "schema.table" (svc_relay_listen() reads it) */
	int32_t key_part;
	int32_t key_member;
	/* The wake lock of sql/006_outbox_notify_auto.sql: (SVC_RELAY_WAKE_CLASS,
	 * hashtext(schema_channel)), read by svc_relay_listen(); has_wake false until then. */
	bool has_wake;
	int32_t key_wake;
	char wake_unlock[80]; /* the statement that gives it back (a prelude of the claim) */
	char *claim_all;      /* claim from every partition, skipping the ids $1 and $3 */
	char *claim_part;     /* the same, from the partitions in $4 only */
	char *del;            /* id = ANY($1) */
	char *del_range;      /* the ids $1, all within [$2, $3] */
	char *resched;
	char *park;
	char *next_due;
	char *next_due_wake; /* next_due, then the wake lock tried (see svc_relay_next_due) */
	char *backlog;
	char *health;
	char *listen;
	struct svc_relay_buf buf, del_buf, part_buf; /* scratch for array literals */
};

/* Validates table ([schema.]identifier, each [A-Za-z_][A-Za-z0-9_]*, at most 63 bytes) and
 * builds the statements. Returns 0, SVC_EINVAL (bad name) or SVC_ENOMEM. */
int svc_relay_sql_init(struct svc_relay_sql *q, const char *table);
/* Frees the statements and buffers and zeroes q (also after a failed init). */
void svc_relay_sql_release(struct svc_relay_sql *q);

/* Stable 31-bit hash (FNV-1a) of prefix followed by table, used for the advisory lock keys.
 * Relays of different versions must agree on it: never change its value. */
int32_t svc_relay_key(const char *prefix, const char *table);

/* Claims up to limit due rows (send_after <= now(), not parked) in id order, skipping the ids
 * in skip[0..n_skip) (rows this relay has in flight: still in the table until confirmed), the
 * ids in skip2[0..n_skip2) (confirmed rows whose delete failed: still in the table too) and,
 * when parts is not NULL, rows outside the partitions with parts[p] true. *res: caller
 * clears. Columns: enum svc_relay_col. Nothing is locked: the partition lock makes this relay
 * the only one publishing these rows. */
int svc_relay_claim(struct svc_pg *pg, struct svc_relay_sql *q, long limit, const int64_t *skip,
                    size_t n_skip, const int64_t *skip2, size_t n_skip2, const bool *parts,
                    PGresult **res);
/* Deletes the rows with these ids (one statement: an index range scan when the ids lie close
 * together, else a lookup per id). */
int svc_relay_delete(struct svc_pg *pg, struct svc_relay_sql *q, const int64_t *ids, size_t n);
/* Keeps the rows for a later attempt: attempts + 1, last_error = reason, send_after = now() +
 * min(cap, 0.5 * 2^attempts) seconds. */
int svc_relay_reschedule(struct svc_pg *pg, struct svc_relay_sql *q, const int64_t *ids, size_t n,
                         double cap, const char *reason);
/* Sets rows aside for good: parked_at = now(), last_error = reason, attempts + 1. */
int svc_relay_park(struct svc_pg *pg, struct svc_relay_sql *q, const int64_t *ids, size_t n,
                   const char *reason);
/* Seconds until the earliest send_after of an unparked row that is not yet due, or 0.05 for one
 * that became due within the last second; *secs < 0 when there is none. SVC_ECONN (SQLSTATE
 * 25006) also when the session runs only read-only transactions: the server is no primary. */
int svc_relay_next_due(struct svc_pg *pg, struct svc_relay_sql *q, double *secs);
/* svc_relay_next_due, and in the same statement tries the wake lock (q->has_wake must be
 * true, and this session must not hold it already: session-level advisory locks count). */
int svc_relay_next_due_wake(struct svc_pg *pg, struct svc_relay_sql *q, double *secs,
                            enum svc_relay_wake_try *wake);
/* Number of due unparked rows (counted up to SVC_RELAY_BACKLOG_MAX) and the age in seconds of
 * the oldest one (0 when none): two index scans, cheap enough to run every second. */
#define SVC_RELAY_BACKLOG_MAX   100000
#define SVC_RELAY_BACKLOG_MAX_S "100000"
int svc_relay_backlog(struct svc_pg *pg, struct svc_relay_sql *q, long *count, double *oldest);
/* For checkpublisher: rows due for longer than max_delay seconds (*late), due rows (*due), the
 * oldest due age and the number of parked rows. */
int svc_relay_health(struct svc_pg *pg, struct svc_relay_sql *q, double max_delay, long *late,
                     long *due, double *oldest, long *parked);

/* LISTEN on the table's channels: "schema.table" (as the trigger of sql/003 computes it, read
 * from the catalog) and the bare table name that older triggers notify. */
int svc_relay_listen(struct svc_pg *pg, struct svc_relay_sql *q);
/* NOTIFY the channel with payload (to check that notifications arrive). */
int svc_relay_notify(struct svc_pg *pg, struct svc_relay_sql *q, const char *payload);

/* NOTIFY both channels (the bare table name and "schema.table"), so that listening relays
 * look for due rows now: after rows were made due by an UPDATE, which fires no trigger. */
int svc_relay_wake(struct svc_pg *pg, struct svc_relay_sql *q);

/* Takes this relay's membership lock (released when the session ends). */
int svc_relay_join(struct svc_pg *pg, struct svc_relay_sql *q);
/* Counts the relays of this table (membership locks in pg_locks); at least 1 after join. */
int svc_relay_members(struct svc_pg *pg, struct svc_relay_sql *q, long *n);
/* Tries the partition locks of cand[0..ncand) in that order and stops after want successes;
 * got[] receives the partitions locked, *ngot their count. */
int svc_relay_lock_parts(struct svc_pg *pg, struct svc_relay_sql *q, const int *cand, size_t ncand,
                         long want, int *got, size_t *ngot);
/* Releases one partition lock. */
int svc_relay_unlock_part(struct svc_pg *pg, struct svc_relay_sql *q, int part);
/* A cheap round trip to detect a dead connection. */
int svc_relay_probe(struct svc_pg *pg);

#endif
