/* outbox/ops: the statements of the operator's commands on the outbox table (`svccomm outbox
 * stats|list|unpark`; cancel is outbox/write's svc_outbox_cancel()).
 *
 * They run beside live relays: each is one statement (its own transaction), reads take no
 * locks, and unpark only touches parked rows, which no relay claims (claims skip parked_at IS
 * NOT NULL), so it cannot race with a publish. After an unpark the relays are woken with a
 * NOTIFY (an UPDATE fires no insert trigger), so the row goes out without waiting for a poll.
 *
 * Table names come from settings (OUTBOX_TABLE) and are validated and quoted (util/ident.h);
 * every value is a statement parameter. Knows SQL, not AMQP. Results (PGresult) belong to the
 * caller (PQclear); errors are the negative SVC_E* codes with the text kept on the svc_pg. */
#ifndef SVC_OUTBOX_OPS_H
#define SVC_OUTBOX_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "pg/conn.h"

/* The counts of `outbox stats`. */
struct svc_outbox_stats {
	long due;          /* unparked rows with send_after <= now(): the relay's backlog */
	long scheduled;    /* unparked rows with send_after in the future */
	long parked;       /* rows set aside (parked_at IS NOT NULL) */
	double oldest_due; /* seconds since the oldest due row became due, 0 when none */
};

/* Columns of the per-aggregate rows of svc_outbox_ops_stats(), most rows first. */
enum svc_outbox_top_col {
	SVC_OUTBOX_TOP_EXCHANGE,
	SVC_OUTBOX_TOP_DUE,
	SVC_OUTBOX_TOP_SCHEDULED,
	SVC_OUTBOX_TOP_PARKED,
	SVC_OUTBOX_TOP_TOTAL,
};

/* Columns of svc_outbox_ops_list(); times are UTC ISO 8601 ("2026-12-02T03:04:05Z"). */
enum svc_outbox_list_col {
	SVC_OUTBOX_LIST_ID,
	SVC_OUTBOX_LIST_STATE, /* "due" | "scheduled" | "parked" */
	SVC_OUTBOX_LIST_EXCHANGE,
	SVC_OUTBOX_LIST_ROUTING_KEY,
	SVC_OUTBOX_LIST_CREATED,
	SVC_OUTBOX_LIST_SEND_AFTER,
	SVC_OUTBOX_LIST_PARKED_AT, /* NULL unless parked */
	SVC_OUTBOX_LIST_ATTEMPTS,
	SVC_OUTBOX_LIST_LAST_ERROR, /* NULL when none */
	SVC_OUTBOX_LIST_BODY,       /* the first SVC_OUTBOX_EXCERPT characters of the body */
	SVC_OUTBOX_LIST_BODY_LEN,   /* the body's length in bytes */
};

#define SVC_OUTBOX_EXCERPT 200 /* characters of the body that list shows */
#define SVC_OUTBOX_TOP     10  /* aggregates in stats */

/* Columns of svc_outbox_ops_unpark() for a list of ids, one row per id asked, in the order
 * given: the id, whether it was parked and is now due ("t"/"f"), whether it exists ("t"/"f").
 * With all: one column, the ids unparked. */
enum svc_outbox_unpark_col {
	SVC_OUTBOX_UNPARK_ID,
	SVC_OUTBOX_UNPARK_DONE,
	SVC_OUTBOX_UNPARK_EXISTS,
};

/* The counts of the whole table and, in *top, the SVC_OUTBOX_TOP exchanges with most rows
 * (enum svc_outbox_top_col). Two statements, two snapshots: a live table may move between
 * them. Returns 0, SVC_EINVAL (bad table name) or the error of the statement. */
int svc_outbox_ops_stats(struct svc_pg *pg, const char *table, struct svc_outbox_stats *st,
                         PGresult **top);

/* Up to limit rows in id order (enum svc_outbox_list_col): only parked ones when parked_only,
 * only those of exchange when it is not NULL. */
int svc_outbox_ops_list(struct svc_pg *pg, const char *table, bool parked_only,
                        const char *exchange, long limit, PGresult **res);

/* Makes parked rows due again (parked_at NULL, send_after now(), attempts 0; last_error is
 * kept): the rows ids[0..n), or every parked row when all (ids ignored). Then wakes the
 * relays. *res: enum svc_outbox_unpark_col. */
int svc_outbox_ops_unpark(struct svc_pg *pg, const char *table, const int64_t *ids, size_t n,
                          bool all, PGresult **res);

#endif
