/* message: one delivery, stage by stage. The body is checked in C first (size, UTF-8); then
 * the message's savepoint is opened (lazily) and its inbox row written; the handler runs; its
 * database work is kept or undone; last, its outcome is counted, logged, or republished. */
#include "consumer/internal.h"

#include <stdio.h>
#include <string.h>

#include "config/config.h"
#include "pg/errclass.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/log.h"
#include "util/utf8.h"

/* Why the body cannot go to a handler (the x-svccomm-reason token, msg says more), or NULL. */
static const char *body_problem(const struct svc_consumer *c, const struct svc_delivery *d,
                                char *msg, size_t msgsz)
{
	size_t bad = 0;
	if (d->oversize) {
		snprintf(msg, msgsz, "body of %llu bytes exceeds MAX_MESSAGE_BYTES (%ld)",
		         (unsigned long long)d->body_size, c->cfg->max_message_bytes);
		return "too-large";
	}
	if (!svc_utf8_valid(d->body, d->body_len, &bad)) {
		snprintf(msg, msgsz, "invalid UTF-8 at byte %zu", bad);
		return "invalid-utf8";
	}
	return NULL;
}

/* The watch cancelled the handler's statement at HANDLER_TIMEOUT: the handler failed, even
 * when it caught the error. */
static void timed_out_in_sql(struct svc_consumer *c, struct svc_handler_result *res)
{
	char was[sizeof(c->pending_error)];
	memcpy(was, res->failed ? c->pending_error : "", res->failed ? sizeof(was) : 1);
	res->failed = true;
	res->infra[0] = '\0';
	snprintf(c->pending_error, sizeof(c->pending_error),
	         "timed out after %.3g s (HANDLER_TIMEOUT): its database statement was cancelled"
	         "%s%.1900s",
	         c->cfg->handler_timeout, was[0] ? ": " : "", was);
}

/* Statuses whose database work is kept: the others (and failures) roll back. */
static bool keeps_work(const char *status)
{
	return strcmp(status, "ok") == 0 || strcmp(status, "skipped") == 0 ||
	       strcmp(status, "unrouted") == 0;
}

/* After the handler, whose statements ran when touched: the session must still be usable, and
 * a transaction the handler left aborted (it caught a failed statement) fails the message. */
static int check_session(struct svc_consumer *c, bool touched, struct svc_handler_result *res)
{
	if (touched && PQstatus(c->pg.conn) != CONNECTION_OK) {
		snprintf(c->pg.error, sizeof(c->pg.error), "connection lost during a handler");
		return SVC_ECONN;
	}
	if (touched && !res->failed && !svc_outbox_poisoned(c->pg.conn) &&
	    PQtransactionStatus(c->pg.conn) == PQTRANS_INERROR) {
		res->failed = true;
		snprintf(
		    c->pending_error, sizeof(c->pending_error),
		    "the handler left the transaction aborted (a failed statement was caught): "
		    "its work is rolled back");
	}
	return 0;
}

/* Outbox rows were written during this message (a cancel, or a full buffer), some perhaps its
 * own, outside its savepoint: only a whole rollback undoes them. Alone in the batch, it rolls
 * back now (*touched: nothing left to undo); else the batch is poisoned. */
static int undo_flushed(struct svc_consumer *c, bool *touched)
{
	if (c->batch_n != 1) {
		svc_outbox_poison(c->pg.conn, "rows of a failed message were already written");
		return 0;
	}
	c->in_tx = c->sp_open = false;
	svc_outbox_transaction_reset(c->pg.conn);
	svc_pg_pipeline_reset(c->pg.conn);
	int rc = svc_consumer_db_cmd(c, "ROLLBACK");
	if (rc == 0)
		*touched = false;
	return rc;
}

/* Rolls the message's own work back: its savepoint, and its outbox rows never sent. */
static int undo_message(struct svc_consumer *c, bool touched, size_t mark)
{
	if (touched) {
		int rc = svc_consumer_db_cmd(c, "ROLLBACK TO SAVEPOINT svc_msg");
		if (rc)
			return rc;
	}
	if (c->pg.conn)
		svc_outbox_deferred_truncate(c->pg.conn, mark);
	return 0;
}

/* "unrouted": acked with a warning, or dead-lettered with UNROUTED = "dead-letter". */
static int unrouted(struct svc_consumer *c, const struct svc_consumer_msg *m, const char *reason)
{
	char what[800];
	c->unrouted++;
	snprintf(what, sizeof(what), "message %s: %s", MSG_ID(m->d), reason);
	if (strcmp(c->cfg->unrouted, "dead-letter") == 0)
		return svc_consumer_dead_letter(c, m, "unrouted", NULL, reason, what, NULL);
	svc_metric_inc(c->m.unrouted);
	/* acked with its batch: said once the ack went out, not when a COMMIT may still fail */
	svc_consumer_batch_note(c, "%s", what);
	return 0;
}

/* "malformed" and any other status: dead-lettered, the reason token naming the kind. */
static int malformed(struct svc_consumer *c, const struct svc_consumer_msg *m,
                     const struct svc_handler_result *res)
{
	const char *reason = res->reason;
	char kind[64], what[800];
	snprintf(kind, sizeof(kind), "%s",
	         strstr(reason, "nested") || strstr(reason, "depth") ? "too-deep"
	         : strncmp(reason, "invalid JSON", 12) == 0          ? "invalid-json"
	                                                             : res->status);
	snprintf(what, sizeof(what), "message %s (%s %s) %s: %s", MSG_ID(m->d), m->exchange,
	         m->routing_key, kind, reason);
	return svc_consumer_dead_letter(c, m, kind, NULL, reason, what, NULL);
}

/* Counts, logs or republishes the message as its handler's result says. */
static int outcome(struct svc_consumer *c, const struct svc_consumer_msg *m,
                   const struct svc_handler_result *res)
{
	if (res->failed) {
		char handler[HANDLER_SZ];
		svc_metric_inc(c->m.failures);
		svc_consumer_lua_last_handler(c, handler, sizeof(handler));
		return svc_consumer_handle_failure(c, m, res->permanent,
		                                   handler[0] ? handler : NULL, c->pending_error);
	}
	if (strcmp(res->status, "ok") == 0) {
		c->ok++;
		svc_metric_inc(c->m.ok);
		if (SVC_LOG_DEBUG >= svc_log_threshold) {
			char handler[HANDLER_SZ];
			struct svc_consumer_logf lf;

			svc_consumer_lua_last_handler(c, handler, sizeof(handler));
			svc_consumer_log_fields(c, m, handler[0] ? handler : NULL, NULL, &lf);
			svc_log_write_kv(SVC_LOG_DEBUG, LOG, lf.f, lf.n,
			                 "message %s (%s %s) handled by %s", MSG_ID(m->d),
			                 m->exchange, m->routing_key, handler[0] ? handler : "-");
		}
		return 0;
	}
	if (strcmp(res->status, "skipped") == 0) {
		struct svc_consumer_logf lf;

		c->skipped++;
		/* handlers.command_consumer's reason for a command past its expired_time */
		svc_metric_inc(strncmp(res->reason, "command expired", 15) == 0 ? c->m.expired
		                                                                : c->m.skipped);
		svc_consumer_log_fields(c, m, NULL, res->reason[0] ? res->reason : NULL, &lf);
		svc_log_kv(SVC_LOG_INFO, LOG, lf.f, lf.n, "message %s (%s %s) skipped%s%s",
		           MSG_ID(m->d), m->exchange, m->routing_key, res->reason[0] ? ": " : "",
		           res->reason);
		return 0;
	}
	if (strcmp(res->status, "unrouted") == 0)
		return unrouted(c, m, res->reason);
	return malformed(c, m, res);
}

/* With INBOX: 1 when the message is done (a duplicate, or dead-lettered for an id that cannot
 * be a key), 0 to run the handler, < 0 on a session error. */
static int inbox_check(struct svc_consumer *c, const struct svc_consumer_msg *m, size_t mark)
{
	char why[SVC_PG_ERRSZ + 64], what[SVC_PG_ERRSZ + 600];
	if (!c->pg.conn || !c->cfg->inbox)
		return 0;
	/* heartbeats while the insert waits: a copy of the same message being handled by another
	 * worker holds its key until that worker commits */
	svc_consumer_watch_arm(c, 0);
	int rc = svc_consumer_inbox_seen(c, m, why, sizeof(why));
	svc_consumer_watch_disarm(c);
	if (rc == SVC_INBOX_NEW)
		return 0;
	bool touched = svc_consumer_end_message(c);
	if (rc == SVC_INBOX_DUP) {
		c->dup++;
		svc_metric_inc(c->m.dup);
	}
	if (rc != SVC_INBOX_BAD)
		return rc;
	/* the sender's fault: undo the insert, dead-letter, keep the session */
	rc = undo_message(c, touched, mark);
	if (rc == 0) {
		snprintf(what, sizeof(what), "message (%s %s): %s", m->exchange, m->routing_key,
		         why);
		rc = svc_consumer_dead_letter(c, m, "invalid-message-id", NULL, why, what, NULL);
	}
	return rc ? rc : 1;
}

void svc_consumer_log_fields(const struct svc_consumer *c, const struct svc_consumer_msg *m,
                             const char *handler, const char *error, struct svc_consumer_logf *lf)
{
	size_t n = 0;

	snprintf(lf->attempt, sizeof(lf->attempt), "%ld", m->attempt);
	lf->f[n++] = (struct svc_log_field)SVC_LOG_STR("queue", c->cfg->queue);
	lf->f[n++] = (struct svc_log_field)SVC_LOG_STR("exchange", m->exchange);
	lf->f[n++] = (struct svc_log_field)SVC_LOG_STR("routing_key", m->routing_key);
	lf->f[n++] = (struct svc_log_field)SVC_LOG_STR("message_id", MSG_ID(m->d));
	lf->f[n++] = (struct svc_log_field)SVC_LOG_NUM("attempt", lf->attempt);
	if (handler)
		lf->f[n++] = (struct svc_log_field)SVC_LOG_STR("handler", handler);
	if (error)
		lf->f[n++] = (struct svc_log_field)SVC_LOG_STR("error", error);
	lf->n = n;
}

void svc_consumer_msg_init(const struct svc_consumer *c, const struct svc_delivery *d,
                           struct svc_consumer_msg *m)
{
	m->d = d;
	if (svc_consumer_copy_trusted(d, c->cfg->queue, c->copy_key)) {
		m->attempt = svc_consumer_attempt(d);
		svc_consumer_origin(d, &m->exchange, &m->routing_key);
		return;
	}
	/* anyone can write x-svccomm-* headers: unsigned, they name nothing */
	m->attempt = 1;
	m->exchange = d->exchange;
	m->routing_key = d->routing_key;
}

/* Why the exchange or routing key cannot reach the router (x-svccomm-reason), or NULL: longer
 * than an AMQP name or not UTF-8 (the router caches them, handlers log them). */
static const char *origin_problem(const struct svc_consumer_msg *m, char *msg, size_t msgsz)
{
	const char *names[2] = {m->exchange, m->routing_key};
	for (int i = 0; i < 2; i++) {
		size_t len = strlen(names[i]), bad = 0;
		const char *what = i ? "routing key" : "exchange";
		if (len > 255) {
			snprintf(msg, msgsz, "%s of %zu bytes exceeds 255", what, len);
			return "invalid-routing";
		}
		if (!svc_utf8_valid(names[i], len, &bad)) {
			snprintf(msg, msgsz, "%s: invalid UTF-8 at byte %zu", what, bad);
			return "invalid-routing";
		}
	}
	return NULL;
}

int svc_consumer_process(struct svc_consumer *c, struct svc_delivery *d)
{
	struct svc_consumer_msg m;
	struct svc_handler_result res;
	char msg[160], what[800];
	struct timespec taken = {0, 0}; /* debug only: when the delivery left the connection */

	if (SVC_LOG_DEBUG >= svc_log_threshold)
		taken = svc_clock_wall();
	c->received++;
	svc_metric_inc(c->m.received);
	svc_consumer_batch_add(c, d);
	svc_consumer_msg_init(c, d, &m);
	if (d->redelivered && svc_consumer_committed_seen(c, d->message_id)) {
		/* its work committed, the ack was lost: not twice */
		c->dup++;
		svc_metric_inc(c->m.dup);
		svc_warn(LOG,
		         "message %s came back after its work committed (the ack was lost): "
		         "acked without the handler",
		         MSG_ID(d));
		return 0;
	}
	const char *problem = origin_problem(&m, msg, sizeof(msg));
	if (problem) {
		/* the names themselves go to no log line and no header */
		snprintf(what, sizeof(what), "message %s: %s", MSG_ID(d), msg);
		m.exchange = m.routing_key = "";
		return svc_consumer_dead_letter(c, &m, problem, NULL, msg, what, NULL);
	}
	problem = body_problem(c, d, msg, sizeof(msg));
	if (problem) {
		snprintf(what, sizeof(what), "message %s (%s %s): %s", MSG_ID(d), m.exchange,
		         m.routing_key, msg);
		return svc_consumer_dead_letter(c, &m, problem, NULL, msg, what, NULL);
	}

	if (SVC_LOG_DEBUG >= svc_log_threshold) {
		struct svc_consumer_logf lf;

		char at[32];

		svc_consumer_log_fields(c, &m, NULL, NULL, &lf);
		/* the stage time bench/run.py's latency section reads (JSON lines) */
		snprintf(at, sizeof(at), "%lld.%06ld", (long long)taken.tv_sec,
		         taken.tv_nsec / 1000L);
		lf.f[lf.n++] = (struct svc_log_field)SVC_LOG_NUM("received_at", at);
		svc_log_write_kv(SVC_LOG_DEBUG, LOG, lf.f, lf.n,
		                 "message %s (%s %s) received, attempt %ld", MSG_ID(d), m.exchange,
		                 m.routing_key, m.attempt);
	}
	int rc = svc_consumer_begin_message(c);
	if (rc)
		return rc;
	/* db.exec statements wait in the pipeline, except while the batch is retried one at a
	 * time and for a message the broker brought back (it may be the one that failed late) */
	if (c->pg.conn)
		(void)svc_pg_pipeline_allow(c->pg.conn, c->cfg->consumer_pipeline && c->solo == 0 &&
		                                            !d->redelivered);
	if (c->pg.conn && c->cfg->inbox) {
		/* the inbox insert reads its result: what earlier messages queued goes first */
		rc = svc_consumer_pipeline_sync(c);
		if (rc)
			return rc;
		if (svc_pg_late_error(c->pg.conn))
			return svc_consumer_commit_batch(c); /* fails: rolled back and requeued */
	}
	size_t mark = c->pg.conn ? svc_outbox_deferred_mark(c->pg.conn) : 0;
	unsigned long flushes = c->pg.conn ? svc_outbox_flush_count(c->pg.conn) : 0;
	rc = inbox_check(c, &m, mark);
	if (rc == SVC_EDB && svc_pg_sqlstate_is_infra(c->pg.sqlstate))
		return svc_consumer_infra_failure(c, c->pg.sqlstate, c->pg.error);
	if (rc)
		return rc == 1 ? 0 : rc;
	svc_consumer_watch_arm(c, c->cfg->handler_timeout);
	double t0 = c->m.handler_s ? svc_clock_mono() : 0;
	svc_consumer_lua_handle(c, &m, &res);
	if (c->m.handler_s)
		svc_metric_observe(c->m.handler_s, SVC_M_CONSUMER_HANDLER_SECONDS,
		                   svc_clock_mono() - t0);
	if (svc_consumer_watch_disarm(c))
		timed_out_in_sql(c, &res);

	bool touched = svc_consumer_end_message(c);
	bool undo = res.failed || !keeps_work(res.status);
	if (undo) {
		/* undoing needs the session: the queued statements' results first */
		rc = svc_consumer_pipeline_sync(c);
		if (rc)
			return rc;
	}
	if (c->pg.conn && svc_pg_late_error(c->pg.conn)) {
		/* A pipelined statement of this batch failed (perhaps an earlier message's):
		 * nothing of the batch commits; it goes back to the queue, this message too, no
		 * attempt counted, and is handled again one message at a time. */
		return svc_consumer_commit_batch(c);
	}
	rc = check_session(c, touched, &res);
	if (rc)
		return rc;
	if (res.failed && res.infra[0]) /* the database's failure, not the message's */
		return svc_consumer_infra_failure(c, res.infra, c->pending_error);
	if (c->pg.conn && undo && svc_outbox_flush_count(c->pg.conn) != flushes) {
		rc = undo_flushed(c, &touched);
		if (rc)
			return rc;
	}
	if (c->pg.conn && svc_outbox_poisoned(c->pg.conn)) {
		/* Any message's work may be wrong, so none of it commits: this rolls back and
		 * requeues the batch (this message too, unblamed), then commits one at a time. */
		return svc_consumer_commit_batch(c);
	}
	if (undo) {
		rc = undo_message(c, touched, mark);
		if (rc)
			return rc;
	}
	return outcome(c, &m, &res);
}
