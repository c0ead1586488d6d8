/* relay_sql: the relay's SQL. See relay_sql.h. */
#include "outbox/relay_sql.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"
#include "util/hash.h"
#include "util/ident.h"

#define PART_EXPR "(hashtext(exchange) & 63)"

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));

static char *fmt(const char *f, ...)
{
	va_list ap;
	char *s = NULL;
	int n;

	va_start(ap, f);
	n = vsnprintf(NULL, 0, f, ap);
	va_end(ap);
	if (n < 0)
		return NULL;
	s = malloc((size_t)n + 1);
	if (!s)
		return NULL;
	va_start(ap, f);
	vsnprintf(s, (size_t)n + 1, f, ap);
	va_end(ap);
	return s;
}

int32_t svc_relay_key(const char *prefix, const char *table)
{
	uint32_t h = svc_hash_str(svc_hash_str(SVC_HASH_INIT, prefix), table);

	return (int32_t)(h & 0x7fffffff);
}

/* The statements of the hot path, kept prepared on the session (enum svc_relay_stmt). */
static void build_prepared(struct svc_relay_sql *q)
{
	const char *t = q->table;

	/* The claim skips the rows in flight ($1) and the confirmed rows whose delete failed
	 * ($3): both are still in the table. The skip lists are read through NOT IN (SELECT
	 * unnest(..)), a hashed subplan even in the generic plan of the prepared statement (NOT
	 * (id = ANY($1)) is hashed only for a constant array: with a parameter every row visited
	 * would scan the whole list). Only the columns the publish needs; created_at through
	 * date_part (float8): extract() computes in numeric, which costs more per row than the
	 * rest of the row. The confirmed rows are deleted by a statement of their own just
	 * before (svc_relay_delete): a DELETE inside the claim (a data-modifying WITH) makes the
	 * server store the whole result before sending it, and its SELECT, reading the snapshot
	 * from before the DELETE, walks past the deleted rows and must look each up in $3. */
#define CLAIM_COLS                                                                                 \
	"SELECT id, " PART_EXPR ", exchange, routing_key, body, message_id, correlation_id, "      \
	"headers::text, date_part('epoch', created_at)::int8 FROM %s WHERE parked_at IS NULL AND " \
	"send_after <= now() AND id NOT IN (SELECT unnest($1::int8[]) UNION ALL SELECT "           \
	"unnest($3::int8[]))"
	q->claim_all = fmt(CLAIM_COLS " ORDER BY id LIMIT $2", t);
	q->claim_part =
	    fmt(CLAIM_COLS " AND " PART_EXPR " = ANY($4::int4[]) ORDER BY id LIMIT $2", t);
	/* Confirmed rows are mostly one run of ids: one index range scan with a hashed membership
	 * test costs less than a descent of the index per id (id = ANY). Ids spread wider than
	 * DEL_SPREAD times their number use id = ANY. */
	q->del_range = fmt("DELETE FROM %s WHERE id >= $2::int8 AND id <= $3::int8 AND NOT (id NOT "
	                   "IN (SELECT unnest($1::int8[])))",
	                   t);
	q->del = fmt("DELETE FROM %s WHERE id = ANY($1::int8[])", t);
	/* Runs right after a claim that came back short, in its own statement: a row that became
	 * due between the claim's now() and this one's must not be lost (it would wait for the
	 * next poll), so rows due within the last second count too, as "wake again soon". */
	/* The second column tells a session that can no longer write (a standby, or a primary
	 * fenced with default_transaction_read_only) from one that can: the claim itself only
	 * reads, and an idle relay would stay on such a server forever. */
#define NEXT_DUE_COLS                                                                              \
	"SELECT extract(epoch from min(send_after) - now())::float8, "                             \
	"current_setting('transaction_read_only') = 'on' FROM %s WHERE parked_at IS NULL AND "     \
	"send_after > now() - interval '1 second'"
	q->next_due = fmt(NEXT_DUE_COLS, t);
	/* The same, then the wake lock tried once (a FROM item of one row: its volatile function
	 * runs once). When that fails, pg_locks tells a relay that sleeps (granted in exclusive
	 * mode: writers notify) from writers that have not finished (shared: they did not); it is
	 * read only then. The lock key $1 is the table's (svc_relay_listen). */
	q->next_due_wake =
	    fmt("SELECT d.*, w.got, NOT w.got AND EXISTS (SELECT 1 FROM pg_locks WHERE locktype = "
	        "'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = "
	        "current_database()) AND classid = %d::int8::oid AND objid = ($1::int8 & "
	        "4294967295)::oid AND objsubid = 2 AND mode = 'ExclusiveLock' AND granted) FROM "
	        "(" NEXT_DUE_COLS ") d, (SELECT pg_try_advisory_lock(%d, $1::int4) AS got) w",
	        SVC_RELAY_WAKE_CLASS, t, SVC_RELAY_WAKE_CLASS);
}

/* The other statements: rows that could not be sent, stats, health, LISTEN. */
static void build_others(struct svc_relay_sql *q)
{
	const char *t = q->table;

	q->resched =
	    fmt("UPDATE %s SET attempts = attempts + 1, last_error = $3, send_after = now() "
	        "+ least($2::float8, 0.5 * power(2, least(attempts, 30))) * interval '1 "
	        "second' WHERE id = ANY($1::int8[])",
	        t);
	q->park = fmt("UPDATE %s SET attempts = attempts + 1, last_error = $2, parked_at = now() "
	              "WHERE id = ANY($1::int8[])",
	              t);
	/* bounded: the count stops at SVC_RELAY_BACKLOG_MAX rows of the due index, the oldest is
	 * its first entry; the relay samples it every second for its metrics */
	q->backlog = fmt("SELECT (SELECT count(*) FROM (SELECT 1 FROM %s WHERE parked_at IS NULL "
	                 "AND send_after <= now() LIMIT " SVC_RELAY_BACKLOG_MAX_S ") s), "
	                 "coalesce((SELECT extract(epoch from now() - min(send_after)) FROM %s "
	                 "WHERE parked_at IS NULL AND send_after <= now()), 0)::float8",
	                 t, t);
	q->health =
	    fmt("SELECT count(*) FILTER (WHERE parked_at IS NULL AND send_after <= now() - "
	        "$1::float8 * interval '1 second'), count(*) FILTER (WHERE parked_at IS "
	        "NULL AND send_after <= now()), coalesce(extract(epoch from now() - "
	        "min(send_after) FILTER (WHERE parked_at IS NULL AND send_after <= "
	        "now())), 0)::float8, count(*) FILTER (WHERE parked_at IS NOT NULL) FROM %s",
	        t);
	q->listen = fmt("LISTEN \"%s\"", q->channel);
}

int svc_relay_sql_init(struct svc_relay_sql *q, const char *table)
{
	char schema[SVC_IDENT_MAX + 1], name[SVC_IDENT_MAX + 1], quoted[SVC_IDENT_QUOTED_MAX];

	memset(q, 0, sizeof(*q));
	if (svc_ident_split(table, schema, name) != 0 ||
	    svc_ident_quote(table, quoted, sizeof(quoted)) != 0)
		return SVC_EINVAL;
	q->table = strdup(quoted);
	q->channel = strdup(name);
	if (!q->table || !q->channel)
		goto nomem;
	q->key_part = svc_relay_key("svccomm-relay-partition:", table);
	q->key_member = svc_relay_key("svccomm-relay-member:", table);
	build_prepared(q);
	build_others(q);
	if (!q->claim_all || !q->claim_part || !q->del || !q->del_range || !q->resched ||
	    !q->park || !q->next_due || !q->next_due_wake || !q->backlog || !q->health ||
	    !q->listen)
		goto nomem;
	return 0;
nomem:
	svc_relay_sql_release(q);
	return SVC_ENOMEM;
}

void svc_relay_sql_release(struct svc_relay_sql *q)
{
	free(q->table);
	free(q->channel);
	free(q->claim_all);
	free(q->claim_part);
	free(q->del);
	free(q->del_range);
	free(q->resched);
	free(q->park);
	free(q->next_due);
	free(q->next_due_wake);
	free(q->backlog);
	free(q->health);
	free(q->listen);
	free(q->buf.p);
	free(q->del_buf.p);
	free(q->part_buf.p);
	memset(q, 0, sizeof(*q));
}

static int reserve(struct svc_relay_buf *b, size_t need)
{
	char *p;

	if (need <= b->cap)
		return 0;
	p = realloc(b->p, need * 2);
	if (!p)
		return SVC_ENOMEM;
	b->p = p;
	b->cap = need * 2;
	return 0;
}

/* Writes v in decimal at p (at most 20 bytes, no NUL); returns the length. Each claim writes
 * a window's worth of ids, so no snprintf per id. */
static size_t put_int64(char *p, int64_t v)
{
	char tmp[20];
	uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
	size_t n = 0, len = 0;

	do {
		tmp[n++] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		p[len++] = '-';
	while (n)
		p[len++] = tmp[--n];
	return len;
}

/* "{1,2,3}" into b. */
static int id_array(struct svc_relay_buf *b, const int64_t *ids, size_t n)
{
	size_t pos = 0;

	if (reserve(b, n * 21 + 3) != 0)
		return SVC_ENOMEM;
	b->p[pos++] = '{';
	for (size_t i = 0; i < n; i++) {
		if (i)
			b->p[pos++] = ',';
		pos += put_int64(b->p + pos, ids[i]);
	}
	b->p[pos++] = '}';
	b->p[pos] = '\0';
	return 0;
}

static int part_array(struct svc_relay_buf *b, const bool *parts)
{
	size_t pos = 0;
	bool first = true;

	if (reserve(b, SVC_RELAY_PARTITIONS * 4 + 3) != 0)
		return SVC_ENOMEM;
	b->p[pos++] = '{';
	for (int p = 0; p < SVC_RELAY_PARTITIONS; p++) {
		if (!parts[p])
			continue;
		pos += (size_t)snprintf(b->p + pos, 5, first ? "%d" : ",%d", p);
		first = false;
	}
	b->p[pos++] = '}';
	b->p[pos] = '\0';
	return 0;
}

static const char *stmt_sql(const struct svc_relay_sql *q, enum svc_relay_stmt st)
{
	switch (st) {
	case SVC_RELAY_ST_CLAIM_ALL:
		return q->claim_all;
	case SVC_RELAY_ST_CLAIM_PART:
		return q->claim_part;
	case SVC_RELAY_ST_DEL:
		return q->del;
	case SVC_RELAY_ST_DEL_RANGE:
		return q->del_range;
	case SVC_RELAY_ST_NEXT_DUE_WAKE:
		return q->next_due_wake;
	default:
		return q->next_due;
	}
}

/* Runs statement st as a prepared statement of the session (pg/conn's cache). */
static int exec_stmt(struct svc_pg *pg, struct svc_relay_sql *q, enum svc_relay_stmt st,
                     int nparams, const char *const *params, PGresult **res)
{
	ExecStatusType want = st == SVC_RELAY_ST_DEL || st == SVC_RELAY_ST_DEL_RANGE
	                          ? PGRES_COMMAND_OK
	                          : PGRES_TUPLES_OK;
	PGresult *r;
	int rc;

	if (!pg->conn)
		return svc_pg_exec(pg, stmt_sql(q, st), nparams, params, res);
	if (res)
		*res = NULL;
	r = svc_pg_query(pg->conn, stmt_sql(q, st), nparams, params, true);
	rc = svc_pg_result_error(pg->conn, r, want, pg->error, sizeof(pg->error), pg->sqlstate);
	if (rc < 0 || !res)
		PQclear(r);
	else
		*res = r;
	return rc;
}

int svc_relay_claim(struct svc_pg *pg, struct svc_relay_sql *q, long limit, const int64_t *skip,
                    size_t n_skip, const int64_t *skip2, size_t n_skip2, const bool *parts,
                    PGresult **res)
{
	char lim[24];
	const char *params[4] = {NULL, lim, NULL, NULL};
	int rc;

	snprintf(lim, sizeof(lim), "%ld", limit);
	if (parts) {
		if ((rc = part_array(&q->part_buf, parts)) != 0)
			return rc;
		params[3] = q->part_buf.p;
	}
	if ((rc = id_array(&q->buf, skip, n_skip)) != 0 ||
	    (rc = id_array(&q->del_buf, skip2, n_skip2)) != 0)
		return rc;
	params[0] = q->buf.p;
	params[2] = q->del_buf.p;
	return exec_stmt(pg, q, parts ? SVC_RELAY_ST_CLAIM_PART : SVC_RELAY_ST_CLAIM_ALL,
	                 parts ? 4 : 3, params, res);
}

#define DEL_SPREAD 4

int svc_relay_delete(struct svc_pg *pg, struct svc_relay_sql *q, const int64_t *ids, size_t n)
{
	char lo[24], hi[24];
	const char *params[3] = {NULL, lo, hi};
	int64_t min, max;
	int rc;

	if (n == 0)
		return 0;
	if ((rc = id_array(&q->buf, ids, n)) != 0)
		return rc;
	params[0] = q->buf.p;
	min = max = ids[0];
	for (size_t i = 1; i < n; i++) {
		if (ids[i] < min)
			min = ids[i];
		if (ids[i] > max)
			max = ids[i];
	}
	if ((uint64_t)(max - min) >= (uint64_t)n * DEL_SPREAD + 64)
		return exec_stmt(pg, q, SVC_RELAY_ST_DEL, 1, params, NULL);
	snprintf(lo, sizeof(lo), "%" PRId64, min);
	snprintf(hi, sizeof(hi), "%" PRId64, max);
	return exec_stmt(pg, q, SVC_RELAY_ST_DEL_RANGE, 3, params, NULL);
}

int svc_relay_reschedule(struct svc_pg *pg, struct svc_relay_sql *q, const int64_t *ids, size_t n,
                         double cap, const char *reason)
{
	char capbuf[32];
	const char *params[3];
	int rc;

	if (n == 0)
		return 0;
	if ((rc = id_array(&q->buf, ids, n)) != 0)
		return rc;
	snprintf(capbuf, sizeof(capbuf), "%.3f", cap > 0 ? cap : 1.0);
	params[0] = q->buf.p;
	params[1] = capbuf;
	params[2] = reason;
	return svc_pg_exec(pg, q->resched, 3, params, NULL);
}

int svc_relay_park(struct svc_pg *pg, struct svc_relay_sql *q, const int64_t *ids, size_t n,
                   const char *reason)
{
	const char *params[2];
	int rc;

	if (n == 0)
		return 0;
	if ((rc = id_array(&q->buf, ids, n)) != 0)
		return rc;
	params[0] = q->buf.p;
	params[1] = reason;
	return svc_pg_exec(pg, q->park, 2, params, NULL);
}

/* Reads the first two columns of a next-due result (see svc_relay_next_due). */
static int read_next_due(struct svc_pg *pg, PGresult *res, double *secs)
{
	if (PQgetvalue(res, 0, 1)[0] == 't') {
		/* as the server says it when a write is refused (SQLSTATE 25006) */
		snprintf(pg->error, sizeof(pg->error),
		         "the server runs only read-only transactions (a standby, or a primary "
		         "fenced read-only): reconnecting to find the read-write one");
		snprintf(pg->sqlstate, sizeof(pg->sqlstate), "25006");
		return SVC_ECONN;
	}
	*secs = PQgetisnull(res, 0, 0) ? -1.0 : strtod(PQgetvalue(res, 0, 0), NULL);
	/* Already due: claim again shortly. Not at once: it may be a row still in flight, which
	 * the claim skips, and that must not turn into a busy loop until its confirm. */
	if (*secs < 0.05 && !PQgetisnull(res, 0, 0))
		*secs = 0.05;
	return 0;
}

int svc_relay_next_due(struct svc_pg *pg, struct svc_relay_sql *q, double *secs)
{
	PGresult *res = NULL;
	int rc = exec_stmt(pg, q, SVC_RELAY_ST_NEXT_DUE, 0, NULL, &res);

	if (rc)
		return rc;
	rc = read_next_due(pg, res, secs);
	PQclear(res);
	return rc;
}

int svc_relay_next_due_wake(struct svc_pg *pg, struct svc_relay_sql *q, double *secs,
                            enum svc_relay_wake_try *wake)
{
	char k[16];
	const char *params[1] = {k};
	PGresult *res = NULL;
	int rc;

	snprintf(k, sizeof(k), "%" PRId32, q->key_wake);
	rc = exec_stmt(pg, q, SVC_RELAY_ST_NEXT_DUE_WAKE, 1, params, &res);
	if (rc)
		return rc;
	/* the lock is this session's even when the server turned out read-only: the session is
	 * dropped then, and the lock with it */
	rc = read_next_due(pg, res, secs);
	*wake = PQgetvalue(res, 0, 2)[0] == 't'   ? SVC_RELAY_WAKE_GOT
	        : PQgetvalue(res, 0, 3)[0] == 't' ? SVC_RELAY_WAKE_OTHER
	                                          : SVC_RELAY_WAKE_WRITER;
	PQclear(res);
	return rc;
}

int svc_relay_backlog(struct svc_pg *pg, struct svc_relay_sql *q, long *count, double *oldest)
{
	PGresult *res = NULL;
	int rc = svc_pg_exec(pg, q->backlog, 0, NULL, &res);

	if (rc)
		return rc;
	*count = strtol(PQgetvalue(res, 0, 0), NULL, 10);
	*oldest = strtod(PQgetvalue(res, 0, 1), NULL);
	PQclear(res);
	return 0;
}

int svc_relay_health(struct svc_pg *pg, struct svc_relay_sql *q, double max_delay, long *late,
                     long *due, double *oldest, long *parked)
{
	char d[32];
	const char *params[1] = {d};
	PGresult *res = NULL;
	int rc;

	snprintf(d, sizeof(d), "%.6f", max_delay);
	rc = svc_pg_exec(pg, q->health, 1, params, &res);
	if (rc)
		return rc;
	*late = strtol(PQgetvalue(res, 0, 0), NULL, 10);
	*due = strtol(PQgetvalue(res, 0, 1), NULL, 10);
	*oldest = strtod(PQgetvalue(res, 0, 2), NULL);
	*parked = strtol(PQgetvalue(res, 0, 3), NULL, 10);
	PQclear(res);
	return 0;
}

/* The channel of sql/003_outbox_notify_channel.sql for the table $1; no row when it is missing. */
#define SCHEMA_CHANNEL_SQL                                                                         \
	"SELECT CASE WHEN octet_length(x) > 63 THEN 'svccomm_' || md5(x) ELSE x END FROM (SELECT " \
	"n.nspname || '.' || c.relname AS x FROM pg_class c JOIN pg_namespace n ON n.oid = "       \
	"c.relnamespace WHERE c.oid = to_regclass($1)) s"

int svc_relay_listen(struct svc_pg *pg, struct svc_relay_sql *q)
{
	const char *params[1] = {q->table};
	PGresult *res = NULL;
	char *ident, sql[160];
	int rc;

	q->has_wake = false;
	rc = svc_pg_exec(pg, q->listen, 0, NULL, NULL);
	/* with the wake lock's key, hashed by the server as the trigger hashes it */
	if (rc == 0)
		rc = svc_pg_exec(pg, "SELECT x, hashtext(x) FROM (" SCHEMA_CHANNEL_SQL ") t(x)", 1,
		                 params, &res);
	if (rc != 0)
		return rc;
	q->schema_channel[0] = '\0';
	if (PQntuples(res) == 1) {
		snprintf(q->schema_channel, sizeof(q->schema_channel), "%s", PQgetvalue(res, 0, 0));
		q->key_wake = (int32_t)strtol(PQgetvalue(res, 0, 1), NULL, 10);
	}
	PQclear(res);
	if (!q->schema_channel[0])
		return 0;
	ident = PQescapeIdentifier(pg->conn, q->schema_channel, strlen(q->schema_channel));
	if (!ident)
		return SVC_ENOMEM;
	snprintf(sql, sizeof(sql), "LISTEN %s", ident);
	PQfreemem(ident);
	if ((rc = svc_pg_exec(pg, sql, 0, NULL, NULL)) != 0)
		return rc;
	snprintf(q->wake_unlock, sizeof(q->wake_unlock),
	         "SELECT pg_advisory_unlock(%d, %" PRId32 ")", SVC_RELAY_WAKE_CLASS, q->key_wake);
	q->has_wake = true;
	return 0;
}

int svc_relay_notify(struct svc_pg *pg, struct svc_relay_sql *q, const char *payload)
{
	const char *params[2] = {q->channel, payload};

	return svc_pg_exec(pg, "SELECT pg_notify($1, $2)", 2, params, NULL);
}

int svc_relay_wake(struct svc_pg *pg, struct svc_relay_sql *q)
{
	static const char sql[] = "SELECT pg_notify(x, '') FROM (" SCHEMA_CHANNEL_SQL ") t(x)";
	const char *params[1] = {q->table};
	int rc = svc_relay_notify(pg, q, "");

	return rc ? rc : svc_pg_exec(pg, sql, 1, params, NULL);
}

int svc_relay_join(struct svc_pg *pg, struct svc_relay_sql *q)
{
	char k[16];
	const char *params[1] = {k};

	snprintf(k, sizeof(k), "%" PRId32, q->key_member);
	return svc_pg_exec(pg, "SELECT pg_advisory_lock($1::int4, pg_backend_pid())", 1, params,
	                   NULL);
}

int svc_relay_members(struct svc_pg *pg, struct svc_relay_sql *q, long *n)
{
	char k[16];
	const char *params[1] = {k};
	PGresult *res = NULL;
	int rc;

	snprintf(k, sizeof(k), "%" PRId32, q->key_member);
	rc = svc_pg_exec(pg,
	                 "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
	                 "AND objsubid = 2 AND classid = $1::int8::oid AND database = (SELECT oid "
	                 "FROM pg_database WHERE datname = current_database())",
	                 1, params, &res);
	if (rc)
		return rc;
	*n = strtol(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	return 0;
}

int svc_relay_lock_parts(struct svc_pg *pg, struct svc_relay_sql *q, const int *cand, size_t ncand,
                         long want, int *got, size_t *ngot)
{
	char k[16], w[24];
	const char *params[3] = {k, NULL, w};
	PGresult *res = NULL;
	size_t pos = 0;
	int rc;

	*ngot = 0;
	if (ncand == 0 || want <= 0)
		return 0;
	if ((rc = reserve(&q->buf, ncand * 12 + 3)) != 0)
		return rc;
	q->buf.p[pos++] = '{';
	for (size_t i = 0; i < ncand; i++)
		pos += (size_t)snprintf(q->buf.p + pos, 13, i ? ",%d" : "%d", cand[i]);
	q->buf.p[pos++] = '}';
	q->buf.p[pos] = '\0';
	snprintf(k, sizeof(k), "%" PRId32, q->key_part);
	snprintf(w, sizeof(w), "%ld", want);
	params[1] = q->buf.p;
	/* The executor pulls rows lazily through LIMIT, so the locks are tried in order and no
	 * more than want are taken. */
	rc = svc_pg_exec(pg,
	                 "SELECT c.p FROM unnest($2::int4[]) AS c(p) WHERE "
	                 "pg_try_advisory_lock($1::int4, c.p) LIMIT $3",
	                 3, params, &res);
	if (rc)
		return rc;
	for (int i = 0; i < PQntuples(res) && (size_t)i < ncand; i++)
		got[(*ngot)++] = (int)strtol(PQgetvalue(res, i, 0), NULL, 10);
	PQclear(res);
	return 0;
}

int svc_relay_unlock_part(struct svc_pg *pg, struct svc_relay_sql *q, int part)
{
	char k[16], p[16];
	const char *params[2] = {k, p};

	snprintf(k, sizeof(k), "%" PRId32, q->key_part);
	snprintf(p, sizeof(p), "%d", part);
	return svc_pg_exec(pg, "SELECT pg_advisory_unlock($1::int4, $2::int4)", 2, params, NULL);
}

int svc_relay_probe(struct svc_pg *pg)
{
	return svc_pg_exec(pg, "SELECT 1", 0, NULL, NULL);
}
