/* pg_outbox: the PostgreSQL ceiling of the relay. Fills an outbox-shaped table with N rows of
 * SIZE-byte bodies, then drains it in batches the way a relay must, and times each drain:
 *   select-delete     SELECT the next batch in id order (the relay's claim columns), then
 *                     DELETE WHERE id = ANY($1) (two statements per batch, autocommit)
 *   delete-returning  one DELETE ... WHERE id IN (SELECT ... ORDER BY id LIMIT B FOR UPDATE
 *                     SKIP LOCKED) RETURNING the claim columns
 *
 *   pg_outbox [--url CONNINFO] [--table NAME] [--count N] [--size BYTES] [--batch B[,B...]]
 *
 * The table (default bench_pg_outbox) is dropped and recreated; every value goes through
 * parameters. Prints one JSON line on stdout. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "bench_common.h"

#define MAX_BATCHES 16

/* Run a statement; returns 0 when it succeeded. Clears the result unless out is given. */
static int run(PGconn *c, const char *sql, int n, const char *const *params, PGresult **out)
{
	PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
	ExecStatusType st = PQresultStatus(r);

	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
		fprintf(stderr, "pg_outbox: %s\n", PQresultErrorMessage(r));
		PQclear(r);
		return -1;
	}
	if (out)
		*out = r;
	else
		PQclear(r);
	return 0;
}

static int fill(PGconn *c, const char *t, long count, long size, double *secs)
{
	char sql[1024], cnt[32], sz[32];
	const char *p[2] = {cnt, sz};
	double t0 = bench_now();

	snprintf(sql, sizeof(sql), "DROP TABLE IF EXISTS \"%s\"", t);
	if (run(c, sql, 0, NULL, NULL))
		return -1;
	snprintf(sql, sizeof(sql),
	         "CREATE TABLE \"%s\" (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL "
	         "DEFAULT clock_timestamp(), send_after timestamptz NOT NULL DEFAULT now(), "
	         "exchange text NOT NULL, routing_key text NOT NULL, body text NOT NULL, "
	         "message_id text, correlation_id text, headers jsonb, tags jsonb, attempts "
	         "integer NOT NULL DEFAULT 0, last_error text, parked_at timestamptz)",
	         t);
	if (run(c, sql, 0, NULL, NULL))
		return -1;
	snprintf(sql, sizeof(sql),
	         "CREATE INDEX \"%s_due_idx\" ON \"%s\" (send_after, id) WHERE parked_at IS NULL",
	         t, t);
	if (run(c, sql, 0, NULL, NULL))
		return -1;
	snprintf(cnt, sizeof(cnt), "%ld", count);
	snprintf(sz, sizeof(sz), "%ld", size);
	snprintf(sql, sizeof(sql),
	         "INSERT INTO \"%s\" (exchange, routing_key, body) SELECT 'bench', 'bench.pg', "
	         "rpad('{\"eventId\":\"' || g || '\",\"payload\":\"', $2::int - 2, 'x') || '\"}' "
	         "FROM generate_series(1, $1::int8) g",
	         t);
	if (run(c, sql, 2, p, NULL))
		return -1;
	snprintf(sql, sizeof(sql), "VACUUM ANALYZE \"%s\"", t);
	if (run(c, sql, 0, NULL, NULL))
		return -1;
	*secs = bench_now() - t0;
	return 0;
}

#define CLAIM_COLS                                                                                 \
	"id, exchange, routing_key, body, coalesce(message_id, id::text), correlation_id, "        \
	"headers::text, attempts, extract(epoch from created_at)::int8"

static int drain_select_delete(PGconn *c, const char *t, long count, long batch, double *secs)
{
	char claim[1024], del[256], last[32] = "0", lim[32];
	char *ids = malloc((size_t)batch * 21 + 3);
	long done = 0;
	double t0 = bench_now();
	int rc = -1;

	if (!ids)
		return -1;
	snprintf(claim, sizeof(claim),
	         "SELECT " CLAIM_COLS
	         " FROM \"%s\" WHERE parked_at IS NULL AND send_after <= now() "
	         "AND id > $1 ORDER BY id LIMIT $2",
	         t);
	snprintf(del, sizeof(del), "DELETE FROM \"%s\" WHERE id = ANY($1::int8[])", t);
	snprintf(lim, sizeof(lim), "%ld", batch);
	while (done < count) {
		const char *p[2] = {last, lim};
		const char *dp[1] = {ids};
		PGresult *r;
		size_t off = 0;
		int n, i;

		if (run(c, claim, 2, p, &r))
			goto out;
		n = PQntuples(r);
		if (n == 0) {
			PQclear(r);
			fprintf(stderr, "pg_outbox: table empty after %ld rows\n", done);
			goto out;
		}
		ids[off++] = '{';
		for (i = 0; i < n; i++) {
			const char *id = PQgetvalue(r, i, 0);
			size_t len = strlen(id);

			if (i)
				ids[off++] = ',';
			memcpy(ids + off, id, len);
			off += len;
		}
		ids[off++] = '}';
		ids[off] = 0;
		snprintf(last, sizeof(last), "%s", PQgetvalue(r, n - 1, 0));
		PQclear(r);
		if (run(c, del, 1, dp, NULL))
			goto out;
		done += n;
	}
	*secs = bench_now() - t0;
	rc = 0;
out:
	free(ids);
	return rc;
}

static int drain_delete_returning(PGconn *c, const char *t, long count, long batch, double *secs)
{
	char sql[1024], lim[32];
	const char *p[1] = {lim};
	long done = 0;
	double t0 = bench_now();

	snprintf(
	    sql, sizeof(sql),
	    "DELETE FROM \"%s\" WHERE id IN (SELECT id FROM \"%s\" WHERE parked_at IS NULL AND "
	    "send_after <= now() ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) "
	    "RETURNING " CLAIM_COLS,
	    t, t);
	snprintf(lim, sizeof(lim), "%ld", batch);
	while (done < count) {
		PGresult *r;
		int n;

		if (run(c, sql, 1, p, &r))
			return -1;
		n = PQntuples(r);
		PQclear(r);
		if (n == 0) {
			fprintf(stderr, "pg_outbox: table empty after %ld rows\n", done);
			return -1;
		}
		done += n;
	}
	*secs = bench_now() - t0;
	return 0;
}

int main(int argc, char **argv)
{
	const char *url = getenv("SVCCOMM_DATABASE_URL"), *table = "bench_pg_outbox";
	char *batches = NULL;
	long count = 100000, size = 300, b[MAX_BATCHES];
	int nb = 0, i, rc = 1;
	PGconn *c = NULL;
	char sql[256];

	for (i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--url") && v)
			url = argv[++i];
		else if (!strcmp(a, "--table") && v)
			table = argv[++i];
		else if (!strcmp(a, "--count"))
			count = bench_parse_long(a, argv[++i]);
		else if (!strcmp(a, "--size"))
			size = bench_parse_long(a, argv[++i]);
		else if (!strcmp(a, "--batch") && v)
			batches = argv[++i];
		else {
			fprintf(stderr,
			        "usage: pg_outbox [--url CONNINFO] [--table NAME] [--count N] "
			        "[--size BYTES] [--batch B[,B...]]\n");
			return 2;
		}
	}
	if (!url || !bench_ident_ok(table, 63) || size < 40) {
		fprintf(stderr, "pg_outbox: need --url (or SVCCOMM_DATABASE_URL), a lower-case "
		                "table name and --size >= 40\n");
		return 2;
	}
	for (char *tok = strtok(batches ? batches : (char[]){"500"}, ","); tok;
	     tok = strtok(NULL, ",")) {
		if (nb == MAX_BATCHES)
			return 2;
		b[nb++] = bench_parse_long("--batch", tok);
	}
	c = PQconnectdb(url);
	if (PQstatus(c) != CONNECTION_OK) {
		fprintf(stderr, "pg_outbox: connect: %s", PQerrorMessage(c));
		goto out;
	}
	if (run(c, "SET client_min_messages = warning", 0, NULL, NULL))
		goto out;
	printf("{\"bench\":\"pg_outbox\",\"count\":%ld,\"size\":%ld,\"runs\":[", count, size);
	for (i = 0; i < nb; i++) {
		double fill_s = 0, sd = 0, dr = 0;

		if (fill(c, table, count, size, &fill_s) ||
		    drain_select_delete(c, table, count, b[i], &sd) ||
		    fill(c, table, count, size, &fill_s) ||
		    drain_delete_returning(c, table, count, b[i], &dr))
			goto out;
		fprintf(stderr,
		        "pg_outbox: batch %ld: select+delete %.0f rows/s, delete-returning %.0f "
		        "rows/s (fill %.0f rows/s)\n",
		        b[i], count / sd, count / dr, count / fill_s);
		printf(
		    "%s{\"batch\":%ld,\"select_delete_rate\":%.1f,\"delete_returning_rate\":%.1f,"
		    "\"fill_rate\":%.1f}",
		    i ? "," : "", b[i], count / sd, count / dr, count / fill_s);
	}
	rc = 0;
out:
	printf("]%s}\n", rc ? ",\"error\":\"see stderr\"" : "");
	if (c && PQstatus(c) == CONNECTION_OK) {
		snprintf(sql, sizeof(sql), "DROP TABLE IF EXISTS \"%s\"", table);
		run(c, sql, 0, NULL, NULL);
	}
	PQfinish(c);
	return rc;
}
