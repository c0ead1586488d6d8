/* inbox: deduplication inside the handlers' transaction. A message's id is inserted into
 * INBOX_TABLE under the message's savepoint before its handler runs: a conflict means a
 * committed earlier copy, so the message is acked without running again; a rollback forgets
 * the row together with the handler's work. Old rows are deleted in bounded rounds.
 * The id comes from the sender: one that cannot be a key (not UTF-8, too long) or that the
 * database refuses as bad data (SQLSTATE class 22) is the message's fault, never the
 * session's: the caller dead-letters the message and the queue moves on. */
#include "consumer/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "util/error.h"
#include "util/ident.h"
#include "util/clock.h"
#include "util/json_scan.h"
#include "util/log.h"
#include "util/utf8.h"

/* Cleanup keeps pace with any insert rate: each DELETE's batch doubles while full ones come
 * back quickly, and a pass goes on until caught up or its time budget is spent (the caller
 * then runs the next pass a second later instead of a minute). Measured against deletes of
 * fixed 1,000-row batches and against time-partitioned tables in the report of issue 22. */
#define CLEANUP_BATCH_MIN 1000
#define CLEANUP_BATCH_MAX 50000
#define CLEANUP_BUDGET    0.25 /* seconds of DELETEs per pass, between messages */
#define ID_MAX            400  /* bytes of an inbox id: "<exchange>:<eventId>" fits */

/* Why id cannot key the inbox, or NULL. */
static const char *id_problem(const char *id)
{
	size_t len = strlen(id);
	if (len > ID_MAX)
		return "longer than 400 bytes";
	if (!svc_utf8_valid(id, len, NULL))
		return "not valid UTF-8";
	return NULL;
}

int svc_consumer_message_id(const char *amqp_message_id, const char *exchange, const char *body,
                            size_t len, char *out, size_t outsz)
{
	char id[128];
	int n;
	if (amqp_message_id && *amqp_message_id) {
		n = snprintf(out, outsz, "%s", amqp_message_id);
	} else {
		if (svc_json_top_field(body, len, "eventId", id, sizeof(id)) != 0 &&
		    svc_json_top_field(body, len, "event_id", id, sizeof(id)) != 0)
			return SVC_EINVAL;
		n = snprintf(out, outsz, "%s:%s", exchange, id);
	}
	if (n < 0 || (size_t)n >= outsz || id_problem(out))
		return SVC_EPROTO;
	return 0;
}

int svc_consumer_inbox_prepare(struct svc_consumer *c)
{
	const struct svc_config *cfg = c->cfg;
	if (!cfg->inbox)
		return 0;
	if (!cfg->database_url) {
		svc_error(LOG, "settings.lua: INBOX: needs DATABASE_URL");
		return SVC_ECONFIG;
	}
	if (svc_ident_quote(cfg->inbox_table, c->inbox_table, sizeof(c->inbox_table)) != 0) {
		svc_error(LOG, "settings.lua: INBOX_TABLE: not a valid identifier");
		return SVC_ECONFIG;
	}
	snprintf(c->inbox_sql, sizeof(c->inbox_sql),
	         "INSERT INTO %s (queue, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
	         c->inbox_table);
	snprintf(c->cleanup_sql, sizeof(c->cleanup_sql),
	         "DELETE FROM %s WHERE ctid IN (SELECT ctid FROM %s WHERE received_at < "
	         "now() - make_interval(secs => $1::float8) LIMIT $2::int8)",
	         c->inbox_table, c->inbox_table);
	return 0;
}

int svc_consumer_inbox_seen(struct svc_consumer *c, const struct svc_consumer_msg *m, char *why,
                            size_t whysz)
{
	const struct svc_delivery *d = m->d;
	char id[ID_MAX + 2];
	int rc = svc_consumer_message_id(d->message_id, m->exchange, d->body, d->body_len, id,
	                                 sizeof(id));
	if (rc == SVC_EINVAL) {
		/* the Python library's commands and calls carry no id: said once, not per message
		 */
		if (!c->inbox_warned_no_id)
			svc_warn(LOG,
			         "inbox cannot deduplicate messages without an id (no message_id, "
			         "no eventId; e.g. the Python library's commands and calls): they "
			         "are handled without deduplication (logged once)");
		else
			svc_debug(LOG, "message without an id: inbox not used");
		c->inbox_warned_no_id = true;
		return SVC_INBOX_NEW;
	}
	if (rc) {
		const char *p = d->message_id && *d->message_id ? id_problem(d->message_id) : NULL;
		snprintf(why, whysz, "message id %s: cannot be an inbox key",
		         p ? p : "(from the envelope) longer than 400 bytes or not valid UTF-8");
		return SVC_INBOX_BAD;
	}
	const char *vals[2] = {c->cfg->queue, id};
	PGresult *r = svc_pg_query(c->pg.conn, c->inbox_sql, 2, vals, true);
	if (PQresultStatus(r) != PGRES_COMMAND_OK) {
		rc = svc_consumer_db_fail(c, r, "inbox insert");
		/* bad data (class 22) is the message's; anything else stays the session's */
		if (rc == SVC_EDB && svc_pg_sqlstate_is_data(c->pg.sqlstate)) {
			snprintf(why, whysz, "message id refused by the database: %s", c->pg.error);
			return SVC_INBOX_BAD;
		}
		return rc;
	}
	bool dup = strcmp(PQcmdTuples(r), "0") == 0;
	PQclear(r);
	if (dup)
		svc_info(LOG, "message %s already handled (inbox): skipped", id);
	return dup ? SVC_INBOX_DUP : SVC_INBOX_NEW;
}

bool svc_consumer_inbox_cleanup(struct svc_consumer *c)
{
	char secs[32], lim[24];
	const char *vals[2] = {secs, lim};
	long batch = CLEANUP_BATCH_MIN, total = 0;
	double start = svc_clock_mono(), took;
	bool more = false;

	snprintf(secs, sizeof(secs), "%.3f", c->cfg->inbox_retention);
	while (!svc_consumer_stop) {
		double t0 = svc_clock_mono();

		snprintf(lim, sizeof(lim), "%ld", batch);
		PGresult *r =
		    PQexecParams(c->pg.conn, c->cleanup_sql, 2, NULL, vals, NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_COMMAND_OK) {
			svc_consumer_db_fail(c, r, "inbox cleanup");
			svc_warn(LOG, "%s", c->pg.error);
			return false;
		}
		long n = strtol(PQcmdTuples(r), NULL, 10);
		PQclear(r);
		total += n;
		if (n < batch)
			break;
		took = svc_clock_mono();
		if (took - start >= CLEANUP_BUDGET) {
			more = true;
			break;
		}
		if (batch < CLEANUP_BATCH_MAX && (took - t0) * 4 < CLEANUP_BUDGET)
			batch *= 2;
	}
	if (total > 0)
		svc_debug(LOG, "inbox cleanup removed %ld rows in %.3f s%s", total,
		          svc_clock_mono() - start, more ? ", more to do" : "");
	return more;
}

int svc_consumer_inbox_stats(PGconn *conn, const char *table, double *rows, double *oldest,
                             char *err, size_t errsz)
{
	char quoted[SVC_IDENT_QUOTED_MAX], sql[512];
	const char *params[1] = {quoted};
	PGresult *res = NULL;
	int rc;

	if (svc_ident_quote(table, quoted, sizeof(quoted)) != 0) {
		snprintf(err, errsz, "INBOX_TABLE: not a valid identifier");
		return SVC_EINVAL;
	}
	/* The planner's estimate: counting a large inbox would take longer than the check. */
	snprintf(sql, sizeof(sql),
	         "SELECT greatest(c.reltuples, 0)::float8, (SELECT coalesce(extract(epoch from "
	         "now() - min(received_at)), 0)::float8 FROM %s) FROM pg_class c WHERE c.oid = "
	         "$1::regclass",
	         quoted);
	rc = svc_pg_exec_params(conn, sql, 1, params, &res, err, errsz, NULL);
	if (rc < 0)
		return rc;
	*rows = PQntuples(res) ? strtod(PQgetvalue(res, 0, 0), NULL) : 0;
	*oldest = PQntuples(res) ? strtod(PQgetvalue(res, 0, 1), NULL) : 0;
	PQclear(res);
	return 0;
}
