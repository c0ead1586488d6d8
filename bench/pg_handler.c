/* pg_handler: the PostgreSQL ceiling of the transactional consumer. A plain libpq client does,
 * for each of N messages, what the benchmark's handler asks for, with no broker and no Lua:
 *
 *   INSERT INTO <sink> (event_id) VALUES ($1)                       -- the handler's own row
 *   INSERT INTO <outbox> (id, exchange, routing_key, body)          -- the outbox event,
 *     SELECT n.id, $1, $2, '{"eventId":"' || n.id || ... FROM (SELECT nextval(...)) n
 *
 * both prepared, one round trip each, and one COMMIT per --batch messages (the grouping that
 * frees a consumer from one fsync per message). This is the straightforward efficient client;
 * svccomm's consumer can beat it, since it writes a batch's outbox rows with one statement.
 *
 *   pg_handler [--url CONNINFO] [--table PREFIX] [--count N] [--batch B]
 *
 * The tables (PREFIX_sink, PREFIX_outbox; default bench_pgh) are created and dropped again.
 * Prints one JSON line on stdout. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "bench_common.h"

static int check(PGresult *r, const char *what)
{
	ExecStatusType st = PQresultStatus(r);

	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
		fprintf(stderr, "pg_handler: %s: %s\n", what, PQresultErrorMessage(r));
		PQclear(r);
		return -1;
	}
	PQclear(r);
	return 0;
}

static int exec(PGconn *c, const char *sql)
{
	return check(PQexec(c, sql), sql);
}

int main(int argc, char **argv)
{
	const char *url = getenv("SVCCOMM_DATABASE_URL"), *prefix = "bench_pgh";
	long count = 20000, batch = 100, done = 0;
	PGconn *c = NULL;
	char sql[1024], id[32];
	double t0, secs;
	int rc = 1;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--url") && v)
			url = argv[++i];
		else if (!strcmp(a, "--table") && v)
			prefix = argv[++i];
		else if (!strcmp(a, "--count"))
			count = bench_parse_long(a, argv[++i]);
		else if (!strcmp(a, "--batch"))
			batch = bench_parse_long(a, argv[++i]);
		else {
			fprintf(stderr,
			        "usage: pg_handler [--url CONNINFO] [--table PREFIX] [--count N] "
			        "[--batch B]\n");
			return 2;
		}
	}
	if (!url || !bench_ident_ok(prefix, 40)) {
		fprintf(stderr, "pg_handler: need --url (or SVCCOMM_DATABASE_URL) and a lower-case "
		                "table prefix\n");
		return 2;
	}
	c = PQconnectdb(url);
	if (PQstatus(c) != CONNECTION_OK) {
		fprintf(stderr, "pg_handler: connect: %s", PQerrorMessage(c));
		goto out;
	}
	if (exec(c, "SET client_min_messages = warning"))
		goto out;
	snprintf(
	    sql, sizeof(sql),
	    "DROP TABLE IF EXISTS %s_sink, %s_outbox; "
	    "CREATE TABLE %s_sink (event_id text NOT NULL, received_at timestamptz NOT NULL "
	    "DEFAULT clock_timestamp()); "
	    "CREATE TABLE %s_outbox (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL "
	    "DEFAULT clock_timestamp(), send_after timestamptz NOT NULL DEFAULT now(), "
	    "exchange text NOT NULL, routing_key text NOT NULL, body text NOT NULL, "
	    "message_id text, correlation_id text, headers jsonb, tags jsonb, attempts integer "
	    "NOT NULL DEFAULT 0, last_error text, parked_at timestamptz); "
	    "CREATE INDEX ON %s_outbox (send_after, id) WHERE parked_at IS NULL",
	    prefix, prefix, prefix, prefix, prefix);
	if (exec(c, sql))
		goto out;
	snprintf(sql, sizeof(sql), "INSERT INTO %s_sink (event_id) VALUES ($1)", prefix);
	if (check(PQprepare(c, "sink", sql, 1, NULL), "prepare sink"))
		goto out;
	snprintf(
	    sql, sizeof(sql),
	    "INSERT INTO %s_outbox (id, exchange, routing_key, body) SELECT n.id, $1, $2, "
	    "'{\"eventId\":\"' || n.id || '\",\"eventTime\":\"' || to_char(clock_timestamp() AT "
	    "TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') || '\",\"eventType\":' || "
	    "to_json($2::text) || ',\"aggregate\":' || to_json($1::text) || ',\"payload\":' || "
	    "$3 || '}' FROM (SELECT nextval('%s_outbox_id_seq') AS id) n RETURNING id",
	    prefix, prefix);
	if (check(PQprepare(c, "outbox", sql, 3, NULL), "prepare outbox"))
		goto out;
	t0 = bench_now();
	while (done < count) {
		if (exec(c, "BEGIN"))
			goto out;
		for (long k = 0; k < batch && done < count; k++, done++) {
			char payload[64];
			const char *ps[1] = {id};
			const char *po[3] = {"bench.out", "bench.done", payload};

			snprintf(id, sizeof(id), "%ld", done + 1);
			snprintf(payload, sizeof(payload), "{\"id\":\"%ld\"}", done + 1);
			if (check(PQexecPrepared(c, "sink", 1, ps, NULL, NULL, 0), "sink insert") ||
			    check(PQexecPrepared(c, "outbox", 3, po, NULL, NULL, 0),
			          "outbox insert"))
				goto out;
		}
		if (exec(c, "COMMIT"))
			goto out;
	}
	secs = bench_now() - t0;
	fprintf(stderr, "pg_handler: %ld messages in %.3f s = %.0f msg/s (commit every %ld)\n",
	        count, secs, count / secs, batch);
	printf("{\"bench\":\"pg_handler\",\"count\":%ld,\"batch\":%ld,\"rate\":%.1f}\n", count,
	       batch, count / secs);
	rc = 0;
out:
	if (rc)
		printf("{\"bench\":\"pg_handler\",\"error\":\"see stderr\"}\n");
	if (c && PQstatus(c) == CONNECTION_OK) {
		snprintf(sql, sizeof(sql), "DROP TABLE IF EXISTS %s_sink, %s_outbox", prefix,
		         prefix);
		PQclear(PQexec(c, sql));
	}
	PQfinish(c);
	return rc;
}
