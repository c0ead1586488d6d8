/* batch: the open batch of deliveries, its transaction and its acks. Messages share one
 * transaction, each under its own savepoint; the batch is committed, then acked with one
 * multiple ack. A message whose outcome was republished (retry or dead letter) is "settled": it
 * is acked even when the COMMIT fails. A failed COMMIT requeues the rest and commits them one at
 * a time ("solo") to find the message that causes it. A failure that is the database's, not
 * the message's (pg/errclass.h), rolls the batch back, requeues it without counting an attempt
 * and backs off. */
#include "consumer/internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "pg/errclass.h"
#include "util/backoff.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/log.h"

#define REFUSED_LOG_EVERY 60.0 /* seconds between two "the DLQ refused" error lines */

bool svc_consumer_should_commit(size_t batch_len, size_t limit, double elapsed_s, double interval_s)
{
	if (batch_len == 0)
		return false;
	return batch_len >= (limit ? limit : 1) || elapsed_s >= interval_s;
}

void svc_consumer_batch_add(struct svc_consumer *c, const struct svc_delivery *d)
{
	if (c->batch_n == 0) {
		c->batch_start = svc_clock_mono();
		c->batch_gen = c->generation;
		c->notes_len = c->notes_more = 0;
	}
	c->tags[c->batch_n] = d->tag;
	svc_consumer_batch_id(c, c->batch_n, d->message_id);
	c->settled[c->batch_n] = false;
	c->batch_n++;
	svc_metric_set(c->m.in_flight, (double)c->batch_n);
}

void svc_consumer_batch_note(struct svc_consumer *c, const char *fmt, ...)
{
	size_t room = sizeof(c->notes) - c->notes_len;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(c->notes + c->notes_len, room, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= room) {
		c->notes[c->notes_len] = '\0';
		c->notes_more++;
		return;
	}
	c->notes_len += (size_t)n + 1;
}

/* The batch was acked: what its notes said is true now. */
static void log_notes(struct svc_consumer *c)
{
	for (size_t i = 0; i < c->notes_len; i += strlen(c->notes + i) + 1)
		svc_warn(LOG, "%s: acked", c->notes + i);
	if (c->notes_more)
		svc_warn(LOG, "%zu more unrouted message(s): acked", c->notes_more);
	c->notes_len = c->notes_more = 0;
}

/* The statements wait on the connection (pg_conn's prelude) and travel with the message's
 * first statement, in the same round trip: a handler that never touches the database costs no
 * round trip. */
int svc_consumer_begin_message(struct svc_consumer *c)
{
	static const char *const begin[] = {"BEGIN", "SAVEPOINT svc_msg"};
	static const char *const next[] = {"RELEASE SAVEPOINT svc_msg", "SAVEPOINT svc_msg"};
	static const char *const first[] = {"SAVEPOINT svc_msg"};

	if (!c->pg.conn)
		return 0;
	int rc = !c->in_tx    ? svc_pg_set_prelude(c->pg.conn, begin, 2)
	         : c->sp_open ? svc_pg_set_prelude(c->pg.conn, next, 2)
	                      : svc_pg_set_prelude(c->pg.conn, first, 1);
	if (rc) {
		snprintf(c->pg.error, sizeof(c->pg.error), "out of memory");
		return rc;
	}
	return 0;
}

bool svc_consumer_end_message(struct svc_consumer *c)
{
	if (!c->pg.conn)
		return false;
	if (svc_pg_prelude_pending(c->pg.conn)) {
		svc_pg_clear_prelude(c->pg.conn);
		return false;
	}
	c->in_tx = true;
	c->sp_open = true;
	return true;
}

/* The x-svccomm-signature of a copy of m that carries attempt (a dead letter carries none:
 * moved back to QUEUE by hand, it starts again at 1 on its first route), or NULL. */
static const char *copy_signature(const struct svc_consumer *c, const struct svc_consumer_msg *m,
                                  long attempt, char out[SVC_COPY_SIGNATURE_LEN + 1])
{
	int rc = svc_consumer_sign_copy(c->copy_key, c->cfg->queue, m->exchange, m->routing_key,
	                                attempt, m->d->body, m->d->body_len, out);
	return rc == 0 ? out : NULL;
}

/* The longest retry delay (0 without RETRY_DELAYS). */
static long longest_delay(const struct svc_consumer *c)
{
	long ms = 0;
	for (size_t i = 0; i < c->cfg->n_retry_delays; i++)
		if (c->delay_ms[i] > ms)
			ms = c->delay_ms[i];
	return ms;
}

/* Publishes m's copy (info) to the retry queue of delay ms; its name is left in queue. */
static int copy_to_retry(struct svc_consumer *c, const struct svc_consumer_msg *m, long ms,
                         const struct svc_failure_info *info, char *queue, size_t queuesz)
{
	svc_consumer_retry_queue(c->cfg->queue, ms, queue, queuesz);
	return svc_consumer_publish_copy(c, m->d, queue, info);
}

/* The DLQ refused m's copy (a nack: a max-length policy with reject-publish, a full disk...).
 * That is not the connection's fault: the message waits in the longest retry queue with the
 * same attempt, so it comes back, fails the same way and tries the DLQ again, while the
 * messages behind it flow. Logged at error at most once per REFUSED_LOG_EVERY. Returns 0 or
 * a negative code (no retry queue to hold it, or that refused too). */
static int hold_refused(struct svc_consumer *c, const struct svc_consumer_msg *m,
                        const char *reason, const char *error, const char *what, const char *tail)
{
	char queue[300], sig[SVC_COPY_SIGNATURE_LEN + 1];
	long ms = longest_delay(c);
	double now = svc_clock_mono();

	struct svc_consumer_logf lf;

	svc_consumer_log_fields(c, m, NULL, tail ? tail : error, &lf);
	c->dlq_refused++;
	svc_metric_inc(c->m.refused);
	c->dlq_refused_unlogged++;
	/* invalid-routing: the origin was blanked, a held copy would come back without it */
	if (ms == 0 || strcmp(reason, "invalid-routing") == 0) {
		svc_log_kv(SVC_LOG_ERROR, LOG, lf.f, lf.n,
		           "%s: the dead-letter queue '%s' refused it (basic.nack)%s%s", what,
		           c->dlq, tail ? ": " : "", tail ? tail : "");
		return SVC_ENACK;
	}
	struct svc_failure_info info = {
	    .dead_letter = false,
	    .next_attempt = m->attempt,
	    .exchange = m->exchange,
	    .routing_key = m->routing_key,
	    .error = error,
	    .signature = copy_signature(c, m, m->attempt, sig),
	};
	int rc = copy_to_retry(c, m, ms, &info, queue, sizeof(queue));
	if (rc)
		return rc;
	c->settled[c->batch_n - 1] = true;
	if (c->dlq_refused_logged == 0 || now - c->dlq_refused_logged >= REFUSED_LOG_EVERY) {
		svc_log_kv(SVC_LOG_ERROR, LOG, lf.f, lf.n,
		           "%s: the dead-letter queue '%s' refused it (basic.nack: a max-length "
		           "policy with overflow reject-publish?): held in '%s' for %ld ms, then "
		           "tried again; %llu refused since the last such line, %llu in all%s%s",
		           what, c->dlq, queue, ms, c->dlq_refused_unlogged, c->dlq_refused,
		           tail ? ": " : "", tail ? tail : "");
		c->dlq_refused_logged = now;
		c->dlq_refused_unlogged = 0;
	} else {
		svc_debug(LOG, "%s: refused by '%s', held in '%s'", what, c->dlq, queue);
	}
	return 0;
}

int svc_consumer_dead_letter(struct svc_consumer *c, const struct svc_consumer_msg *m,
                             const char *reason, const char *handler, const char *error,
                             const char *what, const char *tail)
{
	char sig[SVC_COPY_SIGNATURE_LEN + 1];
	char why[1400];

	if (svc_consumer_headers_too_large(m->d)) {
		/* the copy goes without the headers: say so first, the original reason after */
		snprintf(why, sizeof(why), "headers of %zu bytes exceed %d: not copied; %s: %s",
		         svc_consumer_headers_size(m->d), SVC_COPY_HEADERS_MAX, reason,
		         error ? error : "-");
		reason = "headers-too-large";
		error = why;
	}
	struct svc_failure_info info = {
	    .dead_letter = true,
	    .attempts = m->attempt,
	    .exchange = m->exchange,
	    .routing_key = m->routing_key,
	    .error = error,
	    .handler = handler,
	    .reason = reason,
	    .signature = copy_signature(c, m, 1, sig),
	};
	int rc = svc_consumer_publish_copy(c, m->d, c->dlq, &info);
	if (rc == SVC_ENACK)
		return hold_refused(c, m, reason, error, what, tail);
	if (rc == 0) {
		c->dead++;
		svc_consumer_metrics_dead_letter(c, reason);
		c->settled[c->batch_n - 1] = true;
		/* logged once the broker confirmed the copy: only then is it true */
		struct svc_consumer_logf lf;

		svc_consumer_log_fields(c, m, handler, tail ? tail : error, &lf);
		lf.f[lf.n++] = (struct svc_log_field)SVC_LOG_STR("reason", reason);
		if (tail)
			svc_log_kv(SVC_LOG_WARNING, LOG, lf.f, lf.n, "%s, dead-lettered: %s", what,
			           tail);
		else
			svc_log_kv(SVC_LOG_WARNING, LOG, lf.f, lf.n, "%s: dead-lettered", what);
	}
	return rc;
}

int svc_consumer_handle_failure(struct svc_consumer *c, const struct svc_consumer_msg *m,
                                bool permanent, const char *handler, const char *error_text)
{
	char excerpt[1024], first[256], queue[300], sig[SVC_COPY_SIGNATURE_LEN + 1], what[800];
	size_t di = 0;
	svc_consumer_error_excerpt(error_text, ERROR_LINES, excerpt, sizeof(excerpt));
	svc_consumer_error_excerpt(error_text, 1, first, sizeof(first));
	enum svc_failure_action a = svc_consumer_failure_action(
	    m->attempt, c->cfg->max_attempts, c->cfg->n_retry_delays, permanent, &di);
	snprintf(what, sizeof(what), "message %s (%s %s) failed in %s, attempt %ld", MSG_ID(m->d),
	         m->exchange, m->routing_key, handler ? handler : "-", m->attempt);
	/* a retry copy could not carry headers this large: no retry */
	if (a == SVC_FAIL_DEAD_LETTER || svc_consumer_headers_too_large(m->d))
		return svc_consumer_dead_letter(c, m,
		                                permanent ? "permanent-error" : "max-attempts",
		                                handler, excerpt, what, first);
	struct svc_failure_info info = {
	    .dead_letter = false,
	    .next_attempt = m->attempt + 1,
	    .exchange = m->exchange,
	    .routing_key = m->routing_key,
	    .error = excerpt,
	    .signature = copy_signature(c, m, m->attempt + 1, sig),
	};
	long ms = c->delay_ms[di];
	int rc = copy_to_retry(c, m, ms, &info, queue, sizeof(queue));
	if (rc == SVC_ENACK && ms != longest_delay(c)) {
		/* that retry queue refused the copy (a max-length policy with reject-publish?): the
		 * longest one holds it instead, as for a refusing DLQ, so the queue keeps flowing
		 */
		char refused[300];
		snprintf(refused, sizeof(refused), "%s", queue);
		ms = longest_delay(c);
		rc = copy_to_retry(c, m, ms, &info, queue, sizeof(queue));
		if (rc == 0)
			svc_error(LOG,
			          "%s: the retry queue '%s' refused it (basic.nack): held in '%s'",
			          what, refused, queue);
	}
	if (rc == 0) {
		struct svc_consumer_logf lf;
		char delay[24];

		c->retried++;
		svc_metric_inc(c->m.retried);
		c->settled[c->batch_n - 1] = true;
		snprintf(delay, sizeof(delay), "%ld", ms);
		svc_consumer_log_fields(c, m, handler, first, &lf);
		lf.f[lf.n++] = (struct svc_log_field)SVC_LOG_NUM("retry_in_ms", delay);
		svc_log_kv(SVC_LOG_WARNING, LOG, lf.f, lf.n, "%s, retry in %ld ms: %s", what, ms,
		           first);
	}
	return rc;
}

int svc_consumer_pipeline_sync(struct svc_consumer *c)
{
	if (!c->pg.conn || svc_pg_pipeline_pending(c->pg.conn) == 0)
		return 0;
	svc_consumer_watch_arm(c, 0); /* heartbeats while the results come */
	int rc = svc_pg_sync(c->pg.conn);
	svc_consumer_watch_disarm(c);
	if (rc == SVC_ECONN) {
		snprintf(c->pg.error, sizeof(c->pg.error),
		         "connection lost while reading pipelined statements' results");
		return SVC_ECONN;
	}
	return 0; /* a failure is kept as the session's late error */
}

/* Nothing of the batch may commit (why: its outbox rows could not all be written, or a
 * pipelined statement failed). Returns 0 or SVC_ECONN; the reason is left in c->pg.error. */
static int rollback_failed(struct svc_consumer *c, const char *what, const char *reason)
{
	char why[sizeof(c->pg.error)];
	size_t head = strlen(what) + 2;
	int room = head < sizeof(why) ? (int)(sizeof(why) - head - 1) : 0;
	snprintf(why, sizeof(why), "%s: %.*s", what, room,
	         reason); /* a long reason loses its end */
	c->in_tx = false;
	c->sp_open = false;
	svc_outbox_transaction_reset(c->pg.conn); /* reason may point into it: copied above */
	svc_pg_pipeline_reset(c->pg.conn);
	svc_pg_clear_prelude(c->pg.conn); /* a savepoint of the transaction rolled back */
	int rc = svc_consumer_db_cmd(c, "ROLLBACK");
	if (rc == SVC_ECONN)
		return rc;
	snprintf(c->pg.error, sizeof(c->pg.error), "%s", why);
	return 0;
}

/* COMMIT; a COMMIT that answers ROLLBACK (an aborted transaction) failed too. Returns 0 or
 * SVC_ECONN, *failed with the reason in c->pg.error. */
static int commit(struct svc_consumer *c, bool *failed)
{
	svc_consumer_watch_arm(c, 0); /* heartbeats while the COMMIT waits */
	PGresult *r = PQexec(c->pg.conn, "COMMIT");
	svc_consumer_watch_disarm(c);
	int rc = 0;
	c->in_tx = false;
	c->sp_open = false;
	svc_outbox_transaction_reset(c->pg.conn);
	svc_pg_pipeline_reset(c->pg.conn);
	if (PQresultStatus(r) == PGRES_COMMAND_OK && strcmp(PQcmdStatus(r), "COMMIT") == 0) {
		PQclear(r);
		return 0;
	}
	if (PQresultStatus(r) == PGRES_COMMAND_OK) {
		PQclear(r);
		snprintf(c->pg.error, sizeof(c->pg.error),
		         "COMMIT: the transaction was rolled back");
	} else {
		rc = svc_consumer_db_fail(c, r, "COMMIT");
	}
	if (rc == SVC_ECONN)
		return rc;
	*failed = true;
	return 0;
}

/* Ends the batch's transaction, if any. Returns 0 or SVC_ECONN; *failed when it did not
 * commit (reason in c->pg.error). */
static int end_transaction(struct svc_consumer *c, bool *failed)
{
	*failed = false;
	c->pg.sqlstate[0] = '\0';
	if (c->pg.conn && c->in_tx) {
		/* the pipelined statements' results: one failure fails the batch */
		int rc = svc_consumer_pipeline_sync(c);
		if (rc)
			return rc;
	}
	const PGresult *late = c->pg.conn ? svc_pg_late_error(c->pg.conn) : NULL;
	if (late) {
		char msg[SVC_PG_ERRSZ], state[6];
		svc_pg_result_error(c->pg.conn, late, PGRES_COMMAND_OK, msg, sizeof(msg), state);
		*failed = true;
		int rc = rollback_failed(c, "a pipelined statement failed", msg);
		memcpy(c->pg.sqlstate, state, sizeof(state));
		return rc;
	}
	if (c->pg.conn && c->in_tx) {
		/* the outbox rows of the batch, in one statement; a failure poisons the batch */
		char ferr[256], state[6] = "";
		if (svc_outbox_flush(c->pg.conn, ferr, sizeof(ferr), state) < 0)
			memcpy(c->pg.sqlstate, state, sizeof(state));
	}
	const char *poison = c->pg.conn ? svc_outbox_poisoned(c->pg.conn) : NULL;
	if (c->pg.conn && poison) {
		*failed = true;
		return rollback_failed(c, "writing the batch's outbox rows", poison);
	}
	if (c->pg.conn && c->in_tx)
		return commit(c, failed);
	return 0;
}

/* Committed alone and failed again: this message is the cause. */
static int blame_message(struct svc_consumer *c)
{
	char handler[HANDLER_SZ];
	struct svc_consumer_msg m;
	svc_consumer_msg_init(c, &c->d, &m);
	svc_consumer_lua_last_handler(c, handler, sizeof(handler));
	int rc =
	    svc_consumer_handle_failure(c, &m, false, handler[0] ? handler : NULL, c->pg.error);
	if (rc)
		return rc;
	c->solo--;
	rc = svc_amqp_consumer_ack(&c->cs, c->tags[0], false);
	c->batch_n = 0;
	svc_metric_set(c->m.in_flight, 0);
	return rc;
}

/* Nothing of the batch is committed: requeue what depends on the commit (the broker keeps its
 * headers, so no attempt is counted), ack what was already republished (retry/DLQ). */
static int return_batch(struct svc_consumer *c)
{
	int rc = 0;
	for (size_t i = 0; i < c->batch_n && rc == 0; i++)
		rc = c->settled[i] ? svc_amqp_consumer_ack(&c->cs, c->tags[i], false)
		                   : svc_amqp_consumer_nack(&c->cs, c->tags[i], false, true);
	c->batch_n = 0;
	svc_metric_set(c->m.in_flight, 0);
	return rc;
}

/* The batch failed to commit for its own reasons: back to the queue, then commit one by one
 * to find the culprit. The connections are fine: the session goes on. */
static int requeue_batch(struct svc_consumer *c)
{
	size_t n = c->batch_n;
	int rc = return_batch(c);
	c->solo = n;
	return rc;
}

/* Waits seconds without reading from the broker (deliveries stay queued in order), keeping
 * both connections alive with heartbeats. */
static void pause_with_heartbeats(struct svc_consumer *c, double seconds)
{
	double until = svc_clock_mono() + seconds;
	for (;;) {
		svc_amqp_send_heartbeat(c->in);
		svc_amqp_send_heartbeat(c->out);
		double left = until - svc_clock_mono();
		if (left <= 0 || svc_consumer_stop)
			break;
		svc_consumer_nap(left > 0.5 ? 0.5 : left);
	}
}

int svc_consumer_infra_failure(struct svc_consumer *c, const char *sqlstate, const char *error)
{
	char state[6], first[256];
	int rc = 0;

	snprintf(state, sizeof(state), "%s", sqlstate);
	svc_consumer_error_excerpt(error, 1, first, sizeof(first));
	if (c->pg.conn) {
		c->in_tx = c->sp_open = false;
		svc_outbox_transaction_reset(c->pg.conn);
		svc_pg_pipeline_reset(c->pg.conn);
		svc_pg_clear_prelude(c->pg.conn);
		if (PQtransactionStatus(c->pg.conn) != PQTRANS_IDLE)
			rc = svc_consumer_db_cmd(c, "ROLLBACK");
		if (rc == SVC_ECONN)
			return rc;
	}
	size_t n = c->batch_n;
	rc = c->batch_gen == c->generation ? return_batch(c) : 0;
	c->batch_n = 0;
	svc_metric_set(c->m.in_flight, 0);
	c->infra_failures++;
	int k = c->infra_failures > 30 ? 30 : (int)c->infra_failures;
	double delay = svc_backoff(k - 1, INFRA_BACKOFF_BASE_S, c->cfg->reconnect_max_delay,
	                           (double)rand() / ((double)RAND_MAX + 1.0));
	svc_warn(LOG,
	         "database unavailable (%s, SQLSTATE %s): %s: %zu message(s) go back to the "
	         "queue, no attempt counted; next try in %.1f s",
	         svc_pg_infra_reason(state) ? svc_pg_infra_reason(state) : "failure", state, first,
	         n, delay);
	if (rc == 0)
		pause_with_heartbeats(c, delay);
	/* read-only (25006): this server is no primary any more; the session ends and the next
	 * one connects to whichever host is (target_session_attrs=read-write) */
	if (rc == 0 && svc_pg_sqlstate_is_conn(state)) {
		snprintf(c->pg.sqlstate, sizeof(c->pg.sqlstate), "%s", state);
		snprintf(c->pg.error, sizeof(c->pg.error), "%s", first);
		return SVC_ECONN;
	}
	return rc;
}

/* With LOG_LEVEL = "debug": when the batch's COMMIT began and ended (wall clock, seconds since
 * the epoch with microseconds); bench/run.py's latency section reads it to tell how long
 * deliveries waited behind a COMMIT. */
static void trace_commit(const struct svc_consumer *c, struct timespec began)
{
	struct timespec ended = svc_clock_wall();
	char n[24], tb[32], te[32];

	snprintf(n, sizeof(n), "%zu", c->batch_n);
	snprintf(tb, sizeof(tb), "%lld.%06ld", (long long)began.tv_sec, began.tv_nsec / 1000L);
	snprintf(te, sizeof(te), "%lld.%06ld", (long long)ended.tv_sec, ended.tv_nsec / 1000L);
	const struct svc_log_field fields[] = {SVC_LOG_NUM("messages", n), SVC_LOG_NUM("began", tb),
	                                       SVC_LOG_NUM("ended", te)};
	svc_log_write_fields(SVC_LOG_DEBUG, LOG, "commit times", fields, 3);
}

int svc_consumer_commit_batch(struct svc_consumer *c)
{
	bool failed;
	if (c->batch_n == 0)
		return 0;
	if (c->batch_gen != c->generation) {
		/* tags of an older channel: never ack them */
		c->batch_n = 0;
		svc_metric_set(c->m.in_flight, 0);
		return 0;
	}
	double t0 = c->m.commit_s ? svc_clock_mono() : 0;
	struct timespec began = {0, 0}; /* debug only: the "commit times" stage line */
	if (SVC_LOG_DEBUG >= svc_log_threshold)
		began = svc_clock_wall();
	int rc = end_transaction(c, &failed);
	if (rc)
		return rc;
	if (SVC_LOG_DEBUG >= svc_log_threshold)
		trace_commit(c, began);
	if (!failed) {
		c->infra_failures = 0;
		svc_consumer_committed_record(c);
		rc = svc_amqp_consumer_ack(&c->cs, c->tags[c->batch_n - 1], true);
		if (rc == 0)
			log_notes(c);
		else
			svc_warn(
			    LOG,
			    "%zu message(s) committed but the ack failed: when they come back, "
			    "those with a message id are acked without their handler",
			    c->batch_n);
		if (c->solo)
			c->solo--;
		if (c->m.commit_s) {
			svc_metric_observe(c->m.commit_s, SVC_M_CONSUMER_COMMIT_SECONDS,
			                   svc_clock_mono() - t0);
			svc_metric_observe(c->m.batch_size, SVC_M_CONSUMER_BATCH_SIZE,
			                   (double)c->batch_n);
		}
		c->batch_n = 0;
		svc_metric_set(c->m.in_flight, 0);
		return rc;
	}
	if (svc_pg_sqlstate_is_infra(c->pg.sqlstate))
		return svc_consumer_infra_failure(c, c->pg.sqlstate, c->pg.error);
	const struct svc_log_field fields[] = {SVC_LOG_STR("queue", c->cfg->queue),
	                                       SVC_LOG_STR("error", c->pg.error)};
	svc_log_kv(SVC_LOG_WARNING, LOG, fields, 2,
	           "%s: %zu message(s) go back to the queue, to be handled one at a time",
	           c->pg.error, c->batch_n);
	if (c->batch_n == 1 && c->solo && !c->settled[0] && c->d.tag == c->tags[0])
		return blame_message(c);
	return requeue_batch(c);
}
