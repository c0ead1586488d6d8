/* outbox/ops: statements of `svccomm outbox`. See ops.h. */
#include "outbox/ops.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outbox/relay_sql.h"
#include "util/error.h"
#include "util/ident.h"

#define ISO(col) "to_char(" col ", 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
#define DUE      "parked_at IS NULL AND send_after <= now()"
#define SCHED    "parked_at IS NULL AND send_after > now()"

/* Quotes table into q; SVC_EINVAL with the reason on pg when it is not a valid name. */
static int quote(struct svc_pg *pg, const char *table, char *q, size_t qsz)
{
	if (svc_ident_quote(table, q, qsz) != 0) {
		snprintf(pg->error, sizeof(pg->error), "OUTBOX_TABLE: not a valid table name");
		return SVC_EINVAL;
	}
	return 0;
}

int svc_outbox_ops_stats(struct svc_pg *pg, const char *table, struct svc_outbox_stats *st,
                         PGresult **top)
{
	char q[SVC_IDENT_QUOTED_MAX], sql[1024];
	PGresult *res = NULL;
	int rc;

	*top = NULL;
	if ((rc = quote(pg, table, q, sizeof(q))) != 0)
		return rc;
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FILTER (WHERE " DUE "), count(*) FILTER (WHERE " SCHED "), "
	         "count(*) FILTER (WHERE parked_at IS NOT NULL), coalesce(extract(epoch FROM "
	         "now() - min(send_after) FILTER (WHERE " DUE ")), 0) FROM %s",
	         q);
	if ((rc = svc_pg_exec(pg, sql, 0, NULL, &res)) != 0)
		return rc;
	st->due = strtol(PQgetvalue(res, 0, 0), NULL, 10);
	st->scheduled = strtol(PQgetvalue(res, 0, 1), NULL, 10);
	st->parked = strtol(PQgetvalue(res, 0, 2), NULL, 10);
	st->oldest_due = strtod(PQgetvalue(res, 0, 3), NULL);
	PQclear(res);
	snprintf(sql, sizeof(sql),
	         "SELECT exchange, count(*) FILTER (WHERE " DUE "), count(*) FILTER (WHERE " SCHED
	         "), count(*) FILTER (WHERE parked_at IS NOT NULL), count(*) FROM %s GROUP BY "
	         "exchange ORDER BY count(*) DESC, exchange LIMIT %d",
	         q, SVC_OUTBOX_TOP);
	return svc_pg_exec(pg, sql, 0, NULL, top);
}

int svc_outbox_ops_list(struct svc_pg *pg, const char *table, bool parked_only,
                        const char *exchange, long limit, PGresult **res)
{
	char q[SVC_IDENT_QUOTED_MAX], sql[1536], lim[32];
	const char *params[3] = {parked_only ? "t" : "f", exchange, lim};
	int rc;

	*res = NULL;
	if ((rc = quote(pg, table, q, sizeof(q))) != 0)
		return rc;
	snprintf(lim, sizeof(lim), "%ld", limit);
	snprintf(
	    sql, sizeof(sql),
	    "SELECT id, CASE WHEN parked_at IS NOT NULL THEN 'parked' WHEN send_after > now() "
	    "THEN 'scheduled' ELSE 'due' END, exchange, routing_key, " ISO("created_at") ", " ISO(
	        "send_after") ", " ISO("parked_at") ", attempts, last_error, left(body, %d), "
	                                            "octet_length(body) FROM %s WHERE (NOT "
	                                            "$1::boolean OR parked_at IS NOT NULL) AND "
	                                            "($2::text IS NULL OR exchange = $2) ORDER "
	                                            "BY id LIMIT $3::bigint",
	    SVC_OUTBOX_EXCERPT, q);
	return svc_pg_exec(pg, sql, 3, params, res);
}

/* The ids as an array literal "{1,2,3}"; caller frees. */
static char *id_array(const int64_t *ids, size_t n)
{
	char *s = malloc(n * 21 + 3), *p;

	if (!s)
		return NULL;
	p = s;
	*p++ = '{';
	for (size_t i = 0; i < n; i++)
		p += sprintf(p, "%s%" PRId64, i ? "," : "", ids[i]);
	*p++ = '}';
	*p = '\0';
	return s;
}

int svc_outbox_ops_unpark(struct svc_pg *pg, const char *table, const int64_t *ids, size_t n,
                          bool all, PGresult **res)
{
	char q[SVC_IDENT_QUOTED_MAX], sql[1024];
	const char *params[1];
	struct svc_relay_sql rq;
	char *arr = NULL;
	int rc;

	*res = NULL;
	if ((rc = quote(pg, table, q, sizeof(q))) != 0)
		return rc;
	if (all) {
		snprintf(
		    sql, sizeof(sql),
		    "WITH u AS (UPDATE %s SET parked_at = NULL, send_after = now(), attempts = 0 "
		    "WHERE parked_at IS NOT NULL RETURNING id) SELECT id FROM u ORDER BY id",
		    q);
		rc = svc_pg_exec(pg, sql, 0, NULL, res);
	} else {
		if (!(arr = id_array(ids, n)))
			return SVC_ENOMEM;
		params[0] = arr;
		/* the EXISTS sees the snapshot the UPDATE started from: a row it unparked exists */
		snprintf(
		    sql, sizeof(sql),
		    "WITH u AS (UPDATE %s SET parked_at = NULL, send_after = now(), attempts = 0 "
		    "WHERE parked_at IS NOT NULL AND id = ANY($1::bigint[]) RETURNING id) "
		    "SELECT a.id, a.id IN (SELECT id FROM u), EXISTS (SELECT 1 FROM %s o WHERE "
		    "o.id = a.id) FROM unnest($1::bigint[]) WITH ORDINALITY a(id, n) ORDER BY a.n",
		    q, q);
		rc = svc_pg_exec(pg, sql, 1, params, res);
		free(arr);
	}
	if (rc != 0)
		return rc;
	/* The rows are unparked (committed) whatever happens now: without the wake-up, a relay's
	 * next poll or due-time check finds them. */
	if (svc_relay_sql_init(&rq, table) == 0)
		(void)svc_relay_wake(pg, &rq);
	svc_relay_sql_release(&rq);
	return 0;
}
