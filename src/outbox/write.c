/* outbox/write: the INSERT of one row (at once or deferred) and the cancel. See write.h. */
#include "outbox/write.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outbox/batch.h"
#include "outbox/envelope.h"
#include "pg/conn.h"
#include "util/error.h"
#include "util/ident.h"

/* The envelope of each statement (outbox/envelope.h), from its own columns. */
#define INSERT_ENVELOPE SVC_ENVELOPE_SQL("$14", "n.id", "$13", "$5", "$1", "$6")
#define ROWS_ENVELOPE                                                                              \
	SVC_ENVELOPE_SQL("r.wire_format", "r.id", "r.event_time_utc", "r.event_time",              \
	                 "r.send_after", "r.body")

/* $1 send_after, $2 exchange, $3 routing_key, $4 envelope?, $5 event_time, $6 body or
 * envelope tail, $7 message_id, $8 correlation_id, $9 headers, $10 tags, $11 table name
 * (quoted, for pg_get_serial_sequence), $12 the id sequence when known (COALESCE does not
 * evaluate the lookup then), $13 eventTime already formatted in C (svc_envelope_time()), $14
 * the envelope's format (svc_wire_format_name()). */
static const char insert_fmt[] =
    "INSERT INTO %s (id, send_after, exchange, routing_key, body, message_id, "
    "correlation_id, headers, tags) "
    "SELECT n.id, coalesce($1::timestamptz, now()), $2, $3, "
    "CASE WHEN $4::boolean THEN " INSERT_ENVELOPE " ELSE $6 END, "
    "$7, $8, $9::jsonb, $10::jsonb "
    "FROM (SELECT nextval(COALESCE($12::regclass, "
    "pg_get_serial_sequence($11, 'id')::regclass)) AS id) n RETURNING id";

/* Deferred rows (the consumer's connection): many rows in one statement, $1 a JSON array of
 * objects with the fields of insert_fmt's parameters; the second %s is the id sequence (a
 * string literal). One statement for a batch's rows costs about a tenth of one statement per
 * row. Each row takes its id here, when it is inserted, like insert_fmt: the transaction holds
 * every lock its handlers took by now, so a writer that committed under one of them before has
 * the lower id and the relay's id order follows the order of those commits (issue 17). The
 * subquery is not pulled up (nextval is volatile), so id and eventId are one value, and the
 * function scan yields the rows in queue order, so ids follow the order of the calls. */
static const char rows_fmt[] =
    "INSERT INTO %s (id, send_after, exchange, routing_key, body, message_id, "
    "correlation_id, headers, tags) "
    "SELECT r.id, coalesce(r.send_after::timestamptz, now()), r.exchange, r.routing_key, "
    "CASE WHEN r.envelope THEN " ROWS_ENVELOPE " ELSE r.body END, "
    "r.message_id, r.correlation_id, r.headers::jsonb, r.tags::jsonb "
    "FROM (SELECT nextval('%s'::regclass) AS id, j.* "
    "FROM json_to_recordset($1::json) AS j(send_after text, exchange text, "
    "routing_key text, envelope boolean, event_time text, body text, message_id text, "
    "correlation_id text, headers text, tags text, event_time_utc text, wire_format text)) r";

int svc_outbox_insert_sql(const char *quoted_table, char *out, size_t outsz)
{
	int n = snprintf(out, outsz, insert_fmt, quoted_table);

	return (n < 0 || (size_t)n >= outsz) ? SVC_EINVAL : 0;
}

/* ---- deferred rows as JSON (outbox/batch.h) ---------------------------------------------- */

struct jbuf {
	char *p;
	size_t len, cap;
	bool failed;
};

static void jb_put(struct jbuf *b, const char *s, size_t n)
{
	if (b->failed)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		char *q;

		while (cap < b->len + n + 1)
			cap *= 2;
		q = realloc(b->p, cap);
		if (!q) {
			b->failed = true;
			return;
		}
		b->p = q;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

/* "key":"escaped value" or "key":null */
static void jb_field(struct jbuf *b, const char *key, const char *v)
{
	static const char hex[] = "0123456789abcdef";
	const char *run;

	jb_put(b, b->len > 1 ? ",\"" : "\"", b->len > 1 ? 2 : 1);
	jb_put(b, key, strlen(key));
	if (!v) {
		jb_put(b, "\":null", 6);
		return;
	}
	jb_put(b, "\":\"", 3);
	for (run = v; *v; v++) {
		unsigned char c = (unsigned char)*v;
		char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};

		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		jb_put(b, run, (size_t)(v - run));
		if (c == '"' || c == '\\') {
			esc[1] = (char)c;
			jb_put(b, esc, 2);
		} else {
			jb_put(b, esc, 6);
		}
		run = v + 1;
	}
	jb_put(b, run, (size_t)(v - run));
	jb_put(b, "\"", 1);
}

/* params: insert_fmt's parameters ($1..$14). */
static int defer_row(PGconn *conn, const char *qname, const char *sequence,
                     const char *const *params, char *err, size_t errsz, char *sqlstate)
{
	static const char *const keys[] = {
	    "send_after", "exchange",   "routing_key",    NULL,      "event_time",
	    "body",       "message_id", "correlation_id", "headers", "tags"};
	char sql[sizeof(rows_fmt) + 3 * SVC_IDENT_QUOTED_MAX], num[40];
	struct jbuf b = {0};
	int n, rc;

	/* the sequence name comes from pg_get_serial_sequence() of a checked table name: it has
	 * no quote to escape, and one would only make the statement fail */
	if (strchr(sequence, '\'') ||
	    (n = snprintf(sql, sizeof(sql), rows_fmt, qname, sequence)) < 0 ||
	    (size_t)n >= sizeof(sql)) {
		svc_pg_set_error(err, errsz, "bad outbox id sequence name");
		return SVC_EINVAL;
	}
	snprintf(num, sizeof(num), "{\"envelope\":%s",
	         strcmp(params[3], "true") == 0 ? "true" : "false");
	jb_put(&b, num, strlen(num));
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		if (keys[i])
			jb_field(&b, keys[i], params[i]);
	}
	jb_field(&b, "event_time_utc", params[12]);
	jb_field(&b, "wire_format", params[13]);
	jb_put(&b, "}", 1);
	if (b.failed) {
		free(b.p);
		svc_pg_set_error(err, errsz, "out of memory");
		return SVC_ENOMEM;
	}
	rc = svc_outbox_defer_row(conn, sql, b.p, err, errsz, sqlstate);
	free(b.p);
	return rc;
}

int svc_outbox_insert_st(PGconn *conn, const char *table, const struct svc_outbox_row *row,
                         long long *id_out, char *err, size_t errsz, char *sqlstate)
{
	char qname[SVC_IDENT_QUOTED_MAX];
	char sql[sizeof(insert_fmt) + SVC_IDENT_QUOTED_MAX];
	char *tail = NULL;
	const char *params[14];
	char now_iso[40];
	PGresult *res = NULL;
	int rc;

	if (sqlstate)
		sqlstate[0] = '\0';
	if (svc_ident_check(table, err, errsz) < 0)
		return SVC_EINVAL;
	if (!row || !row->exchange || !row->routing_key || !row->body) {
		svc_pg_set_error(err, errsz, "outbox row needs exchange, routing_key and body");
		return SVC_EINVAL;
	}
	svc_ident_quote(table, qname, sizeof(qname));
	svc_outbox_insert_sql(qname, sql, sizeof(sql));
	if (row->envelope) {
		tail = svc_envelope_tail(row->body);
		if (!tail) {
			svc_pg_set_error(err, errsz, "envelope body is not a JSON object text");
			return SVC_EINVAL;
		}
	}
	params[0] = row->send_after;
	params[1] = row->exchange;
	params[2] = row->routing_key;
	params[3] = row->envelope ? "true" : "false";
	params[4] = row->event_time;
	params[5] = row->envelope ? tail : row->body;
	params[6] = row->message_id;
	params[7] = row->correlation_id;
	params[8] = row->headers_json;
	params[9] = row->tags_json;
	params[10] = qname;
	params[11] = row->id_sequence;
	params[12] = row->envelope ? svc_envelope_time(row->event_time, row->send_after, now_iso,
	                                               sizeof(now_iso))
	                           : NULL;
	params[13] = svc_wire_format_name(row->wire_format);
	if (row->id_sequence && svc_outbox_deferral(conn)) {
		/* the consumer's connection: the row is written, and takes its id, with the
		 * batch before its COMMIT. The first row of a transaction the handlers' SQL has
		 * not opened yet opens it (the pending BEGIN and savepoint, one round trip per
		 * batch at most), so the batch commits its rows and a flush lands inside it. */
		if (PQtransactionStatus(conn) == PQTRANS_IDLE && svc_pg_prelude_pending(conn)) {
			res = svc_pg_query(conn, "SELECT 1", 0, NULL, false);
			rc = svc_pg_result_error(conn, res, PGRES_TUPLES_OK, err, errsz, sqlstate);
			if (rc < 0)
				goto out;
		}
		rc = defer_row(conn, qname, row->id_sequence, params, err, errsz, sqlstate);
		if (rc == 0 && id_out)
			*id_out = 0;
		goto out;
	}
	/* unnamed: an application's connection may go through a transaction-pooling proxy */
	rc = svc_pg_exec_params(conn, sql, 14, params, &res, err, errsz, sqlstate);
	if (rc < 0)
		goto out;
	if (PQntuples(res) != 1) {
		svc_pg_set_error(err, errsz, "outbox insert returned no row");
		rc = SVC_EDB;
		goto out;
	}
	if (id_out)
		*id_out = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
out:
	PQclear(res);
	free(tail);
	return rc;
}

int svc_outbox_insert(PGconn *conn, const char *table, const struct svc_outbox_row *row,
                      long long *id_out, char *err, size_t errsz)
{
	return svc_outbox_insert_st(conn, table, row, id_out, err, errsz, NULL);
}

long long svc_outbox_cancel(PGconn *conn, const char *table, const char *exchange,
                            const char *routing_key, const char *tags_json, char *err, size_t errsz,
                            char *sqlstate)
{
	char qname[SVC_IDENT_QUOTED_MAX];
	char sql[256 + SVC_IDENT_QUOTED_MAX];
	const char *params[3];
	char *tail;
	PGresult *res = NULL;
	long long n;
	int rc;

	if (sqlstate)
		sqlstate[0] = '\0';
	if (svc_ident_check(table, err, errsz) < 0)
		return SVC_EINVAL;
	if (!exchange || !routing_key || !tags_json) {
		svc_pg_set_error(err, errsz, "cancel needs exchange, routing_key and tags");
		return SVC_EINVAL;
	}
	/* An empty subset would match every scheduled row of the key: refuse it (the tail of an
	 * object without members is "}"). */
	tail = svc_envelope_tail(tags_json);
	if (!tail || strcmp(tail, "}") == 0) {
		free(tail);
		svc_pg_set_error(err, errsz, "cancel needs a non-empty JSON object of tags");
		return SVC_EINVAL;
	}
	free(tail);
	svc_ident_quote(table, qname, sizeof(qname));
	snprintf(sql, sizeof(sql),
	         "DELETE FROM %s WHERE exchange = $1 AND routing_key = $2 AND tags @> $3::jsonb",
	         qname);
	params[0] = exchange;
	params[1] = routing_key;
	params[2] = tags_json;
	/* rows this transaction deferred must be there to be cancelled */
	if ((rc = svc_outbox_flush(conn, err, errsz, sqlstate)) < 0)
		return rc;
	rc = svc_pg_exec_params(conn, sql, 3, params, &res, err, errsz, sqlstate);
	if (rc < 0)
		return rc;
	n = strtoll(PQcmdTuples(res), NULL, 10);
	PQclear(res);
	return n;
}
