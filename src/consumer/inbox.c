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
#include "util/json_scan.h"
#include "util/log.h"
#include "util/utf8.h"

#define CLEANUP_BATCH  "1000" /* rows per DELETE */
#define CLEANUP_ROUNDS 20     /* DELETEs per call at most */
#define ID_MAX         400    /* bytes of an inbox id: "<exchange>:<eventId>" fits */

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
	         "now() - make_interval(secs => $1::float8) LIMIT " CLEANUP_BATCH ")",
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

void svc_consumer_inbox_cleanup(struct svc_consumer *c)
{
	char secs[32];
	const char *vals[1] = {secs};
	snprintf(secs, sizeof(secs), "%.3f", c->cfg->inbox_retention);
	for (int round = 0; round < CLEANUP_ROUNDS && !svc_consumer_stop; round++) {
		PGresult *r =
		    PQexecParams(c->pg.conn, c->cleanup_sql, 1, NULL, vals, NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_COMMAND_OK) {
			svc_consumer_db_fail(c, r, "inbox cleanup");
			svc_warn(LOG, "%s", c->pg.error);
			return;
		}
		long n = strtol(PQcmdTuples(r), NULL, 10);
		PQclear(r);
		if (n > 0)
			svc_debug(LOG, "inbox cleanup removed %ld rows", n);
		if (n < atol(CLEANUP_BATCH))
			return;
	}
}
