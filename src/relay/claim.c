/* claim: claim -> publish. Each claim first deletes the rows confirmed since the previous one
 * (a statement of its own), then skips the rows in flight; the rows it returns are published at
 * once (mandatory, persistent, with the row's properties and headers) and enter the confirm
 * window. After a channel error the rows up to r->isolate_upto go out one at a time, so the
 * next failure names exactly one row. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "relay/headers.h"
#include "relay/internal.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/log.h"

/* Parses the row's headers column into r->hdrs (kept in r->hdrbuf). Returns 1, 0 when the row
 * was parked (headers that can never be sent), or SVC_ENOMEM. */
static int row_headers(struct relay *r, PGresult *res, int i, int64_t id,
                       struct svc_amqp_props *props)
{
	const char *h = PQgetvalue(res, i, SVC_RELAY_COL_HEADERS);
	size_t len = (size_t)PQgetlength(res, i, SVC_RELAY_COL_HEADERS);

	if (len + 1 > r->hdrcap) {
		char *b = realloc(r->hdrbuf, len + 1);

		if (!b)
			return SVC_ENOMEM;
		r->hdrbuf = b;
		r->hdrcap = len + 1;
	}
	memcpy(r->hdrbuf, h, len + 1);
	if (svc_relay_parse_headers(r->hdrbuf, r->hdrs, MAX_HEADERS, &props->n_headers) != 0) {
		relay_park_row(r, id, "headers must be a JSON object of at most 64 scalar values");
		return 0;
	}
	props->headers = r->hdrs;
	return 1;
}

/* The row's message_id, else "<APP_ID>:<row id>" into buf: a bare row id would collide with
 * another producer's in a consumer's inbox. */
static const char *row_message_id(const struct relay *r, PGresult *res, int i, char *buf,
                                  size_t bufsz)
{
	if (!PQgetisnull(res, i, SVC_RELAY_COL_MESSAGE_ID))
		return PQgetvalue(res, i, SVC_RELAY_COL_MESSAGE_ID);
	snprintf(buf, bufsz, "%s:%s", r->cfg->app_id, PQgetvalue(res, i, SVC_RELAY_COL_ID));
	return buf;
}

/* Publishes row i of the claim. Returns 1 (published, *seq set), 0 (parked), or <0 (a lost
 * connection, or out of memory). */
static int publish_row(struct relay *r, PGresult *res, int i, uint64_t *seq)
{
	const char *exchange = PQgetvalue(res, i, SVC_RELAY_COL_EXCHANGE);
	const char *rk = PQgetvalue(res, i, SVC_RELAY_COL_ROUTING_KEY);
	int64_t id = strtoll(PQgetvalue(res, i, SVC_RELAY_COL_ID), NULL, 10);
	char mid[300]; /* APP_ID (<= 255, else refused at publish and parked) ':' id */
	struct svc_amqp_props props = {
	    .content_type = r->content_type,
	    .message_id = row_message_id(r, res, i, mid, sizeof(mid)),
	    .correlation_id = PQgetisnull(res, i, SVC_RELAY_COL_CORRELATION_ID)
	                          ? NULL
	                          : PQgetvalue(res, i, SVC_RELAY_COL_CORRELATION_ID),
	    .app_id = r->cfg->app_id,
	    .timestamp = strtoll(PQgetvalue(res, i, SVC_RELAY_COL_CREATED), NULL, 10),
	    .persistent = true,
	    /* "<APP_ID>:<row id>" names this row alone; a message_id of the row's own may not */
	    .return_by_message_id = PQgetisnull(res, i, SVC_RELAY_COL_MESSAGE_ID),
	};
	char reason[600];
	int rc;

	if (!PQgetisnull(res, i, SVC_RELAY_COL_HEADERS) &&
	    (rc = row_headers(r, res, i, id, &props)) != 1)
		return rc;
	rc = svc_amqp_publish(r->mq, exchange, rk, PQgetvalue(res, i, SVC_RELAY_COL_BODY),
	                      (size_t)PQgetlength(res, i, SVC_RELAY_COL_BODY), &props, true, seq);
	if (rc == 0) {
		r->published++;
		if (SVC_LOG_DEBUG >= svc_log_threshold) {
			char event_id[24];

			snprintf(event_id, sizeof(event_id), "%" PRId64, id);
			const struct svc_log_field fields[] = {
			    SVC_LOG_NUM("event_id", event_id), SVC_LOG_STR("exchange", exchange),
			    SVC_LOG_STR("routing_key", rk),
			    SVC_LOG_STR("message_id", props.message_id)};
			svc_log_write_kv(SVC_LOG_DEBUG, COMP, fields, 4,
			                 "event %" PRId64 " published to \"%s\" with \"%s\"", id,
			                 exchange, rk);
		}
		return 1;
	}
	if (rc == SVC_EINVAL || rc == SVC_EPROTO) {
		snprintf(reason, sizeof(reason), "%s", svc_amqp_error(r->mq));
		relay_park_row(r, id, reason);
		if (rc == SVC_EINVAL)
			return 0;
	}
	relay_mq_lost(r, "publishing");
	return SVC_ECONN;
}

/* Rows per claim: PUBLISHER_BATCH_SIZE, and while a backlog lasts (the last claim came back
 * full) up to BACKLOG_GROWTH times that, at most half the window. Every claim walks past the
 * rows still in flight (they stay in the table until confirmed), so fewer, larger claims cut
 * that walk, the id lists and the transactions per row. */
#define BACKLOG_GROWTH 4

static long claim_batch(const struct relay *r)
{
	long batch = r->cfg->publisher_batch_size > 0 ? r->cfg->publisher_batch_size : 1;
	long grown = batch * BACKLOG_GROWTH, half = (long)r->fl.cap / 2;

	if (!r->backlog)
		return batch;
	if (grown > half)
		grown = half;
	return grown > batch ? grown : batch;
}

static bool ahead_left(const struct relay *r)
{
	return r->ahead && r->ahead_next < r->ahead_n;
}

bool relay_ahead_ready(const struct relay *r)
{
	return ahead_left(r) && svc_flight_free(&r->fl) > 0;
}

/* Claimed rows wait for room at most this long (seconds). Then they are forgotten and claimed
 * again, so a row deleted or rescheduled in the table meanwhile (`outbox cancel`,
 * cancel_future_aggregate_event, `outbox unpark` elsewhere) is not published from a stale copy
 * while the broker holds the window (a memory alarm, a slow disk). */
#define AHEAD_MAX_AGE 1.0

double relay_ahead_expiry(const struct relay *r)
{
	return ahead_left(r) ? r->ahead_at + AHEAD_MAX_AGE : 0;
}

void relay_drop_ahead(struct relay *r)
{
	/* Only marked: a connection may be lost while these rows are being read; the result is
	 * freed before the next claim (or with the relay). */
	if (ahead_left(r))
		r->work = true; /* claim them again */
	r->ahead_next = r->ahead_n;
}

/* A claim does not wait for room in the window: its rows wait in r->ahead and go out as
 * confirms make room, so the broker always has a full window to work on and the claim's round
 * trip happens while it does (a claim that waited for room let the window run between half
 * and full, and empty further during the round trip). The next claim runs once those rows are
 * all published, so the rows in flight are exactly the ones the claim must skip. */
long relay_claim_limit(struct relay *r)
{
	if (ahead_left(r))
		return 0;
	if (r->isolate_upto > 0)
		return r->fl.count == 0 ? 1 : 0;
	return claim_batch(r);
}

/* Logs a failed claim. A missing table usually means the wrong database (an exported
 * SVCCOMM_DATABASE_URL points every service at one) or no `svccomm migrate`: say which
 * database it was and where its URL came from (never the password). */
static void claim_error(struct relay *r)
{
	const char *src = r->cfg->database_url_source;
	char target[512];

	if (strcmp(svc_pg_sqlstate(&r->pg), "42P01") != 0 ||
	    svc_pg_target(r->pg.conn, target, sizeof(target)) != 0) {
		svc_error(COMP, "claiming rows: %s", svc_pg_error(&r->pg));
		return;
	}
	svc_error(COMP,
	          "claiming rows: %s (%s; DATABASE_URL from %s): run `svccomm migrate` for this "
	          "database, or point DATABASE_URL at the right one",
	          svc_pg_error(&r->pg), target, src ? src : "the settings");
}

/* Deletes the confirmed rows, then runs the claim. Returns its result, or NULL after a
 * failure (logged; the connection is dropped when lost). */
static PGresult *claim(struct relay *r, long limit)
{
	size_t n_skip = svc_flight_ids(&r->fl, r->skip_ids);
	PGresult *res = NULL;
	double t0 = svc_clock_mono();
	int rc;

	/* Writers woke this relay, or a backlog keeps it busy: it gives the wake lock back in the
	 * claim's round trip, so writers stop notifying while it claims. */
	const char *unlock = r->q.wake_unlock;
	bool release = r->wake == WAKE_HELD && (r->woken || r->backlog);

	/* Rows whose delete failed (logged) stay confirmed: the claim skips them too. */
	relay_flush_deletes(r);
	if (!r->db_up)
		return NULL;
	if (release && svc_pg_set_prelude(r->pg.conn, &unlock, 1) != 0)
		release = false; /* out of memory: kept, writers go on notifying */
	r->woken = false;
	rc = svc_relay_claim(&r->pg, &r->q, limit, r->skip_ids, n_skip, r->del_ids, r->n_del,
	                     r->n_claimable == SVC_RELAY_PARTITIONS ? NULL : r->claimable, &res);
	svc_metric_observe(r->m.claim_s, SVC_M_RELAY_CLAIM_SECONDS, svc_clock_mono() - t0);
	/* a claim that failed before it was sent leaves the unlock pending: not for later */
	if (r->db_up)
		svc_pg_clear_prelude(r->pg.conn);
	/* Given back, or taken to be: a claim that failed after the unlock ran leaves no way to
	 * know, and a lock still held after all only means writers notify more than they must. */
	if (release) {
		svc_debug(COMP,
		          "wake lock given back: writers do not notify while this relay claims");
		r->wake = WAKE_NONE;
	}
	if (rc) {
		if (rc == SVC_ECONN)
			relay_db_lost(r, "claiming rows");
		else
			claim_error(r);
		r->work = false;
		return NULL;
	}
	r->db_last_ok = svc_clock_mono();
	return res;
}

/* Publishes the rows of r->ahead that fit in the window, in id order, until a connection is
 * lost. Returns the number published. */
static int publish_ahead(struct relay *r)
{
	PGresult *res = r->ahead;
	int published = 0, from = r->ahead_next, i = from;

	/* The messages leave in few large writes rather than one send() each. */
	if (r->mq_up)
		svc_amqp_cork(r->mq);
	for (; i < r->ahead_n && r->mq_up && r->db_up && svc_flight_free(&r->fl) > 0; i++) {
		int64_t id = strtoll(PQgetvalue(res, i, SVC_RELAY_COL_ID), NULL, 10);
		int part = (int)strtol(PQgetvalue(res, i, SVC_RELAY_COL_PART), NULL, 10);
		uint64_t seq = 0;
		int rc = relay_check_exchange(r, PQgetvalue(res, i, SVC_RELAY_COL_EXCHANGE), id);

		if (rc == 1)
			rc = publish_row(r, res, i, &seq);
		if (rc < 0)
			break;
		if (rc == 0)
			continue;
		if (svc_flight_add(&r->fl, seq, id, part) != 0) {
			/* cannot happen: the loop checks the room */
			svc_error(COMP, "in-flight window out of sync; reconnecting");
			relay_mq_lost(r, "bookkeeping");
			break;
		}
		if (r->m.on)
			relay_metrics_published(
			    r, relay_ex_metrics(r, PQgetvalue(res, i, SVC_RELAY_COL_EXCHANGE)));
		published++;
	}
	if (r->mq_up && svc_amqp_uncork(r->mq) != 0)
		relay_mq_lost(r, "publishing");
	/* After a loss, relay_mq_lost / relay_db_lost forgot the rows left (relay_drop_ahead). */
	if (r->mq_up && r->db_up) {
		if (SVC_LOG_DEBUG >= svc_log_threshold && i > from)
			relay_trace_batch(res, from, i, r->ahead_claimed);
		r->ahead_next = i;
	}
	relay_flush_lists(r);
	return published;
}

/* Claims while writers that did not notify are in flight: every SHORT_POLL_MIN seconds while
 * claims find rows, twice as long after each claim that finds none, at most SHORT_POLL_MAX
 * (a writer's transaction may stay open long: a batch job, a consumer's batch). */
#define SHORT_POLL_MIN 0.001
#define SHORT_POLL_MAX 0.02

/* Without the wake lock after a short claim: tries it with the read of the next due time.
 * Taken, the next claim follows at once: it sees every row committed before the lock, and
 * writers notify from then on. Held by a sleeping relay: writers notify, so sleep. Else
 * writers that did not notify are in flight: claim again soon. */
static void try_wake_lock(struct relay *r, int n)
{
	enum svc_relay_wake_try got;
	double secs;
	int rc = svc_relay_next_due_wake(&r->pg, &r->q, &secs, &got);

	if (rc == SVC_ECONN) {
		relay_db_lost(r, "reading the next due time");
		return;
	}
	if (rc != 0)
		return;
	r->next_due = secs >= 0 ? svc_clock_mono() + secs + 0.001 : 0;
	r->next_short_poll = 0;
	if (got != SVC_RELAY_WAKE_WRITER) {
		r->short_poll = 0;
		if (got == SVC_RELAY_WAKE_GOT) {
			svc_debug(COMP, "wake lock taken: claiming once more, then writers notify");
			r->wake = WAKE_NEW;
			r->work = true;
		} else {
			svc_debug(COMP, "wake lock held by a sleeping relay: writers notify");
		}
		return;
	}
	if (n > 0 || r->short_poll == 0)
		r->short_poll = SHORT_POLL_MIN;
	else if ((r->short_poll *= 2) > SHORT_POLL_MAX)
		r->short_poll = SHORT_POLL_MAX;
	r->next_short_poll = svc_clock_mono() + r->short_poll;
	svc_debug(COMP,
	          "wake lock: writers that did not notify are in flight; claiming again in %.3g s",
	          r->short_poll);
}

/* After a short claim (caught up) or a lost connection: no more claims until the next due row,
 * a notification or the poll, unless isolation goes on. */
static void caught_up(struct relay *r, int n, bool after_lock)
{
	r->work = r->isolate_upto > 0 && n > 0;
	/* After the claim that followed taking the lock, rows written from now on wake this
	 * relay, and the next due time was read with the lock. */
	if (!r->db_up || after_lock)
		return;
	if (r->wake == WAKE_NONE && r->listen && r->q.has_wake && r->isolate_upto == 0)
		try_wake_lock(r, n);
	else
		relay_read_next_due(r);
}

void relay_read_next_due(struct relay *r)
{
	double secs;
	int rc;

	if (!r->db_up)
		return;
	rc = svc_relay_next_due(&r->pg, &r->q, &secs);
	if (rc == SVC_ECONN)
		relay_db_lost(r, "reading the next due time");
	else if (rc == 0)
		r->next_due = secs >= 0 ? svc_clock_mono() + secs + 0.001 : 0;
}

void relay_claim_and_publish(struct relay *r)
{
	long limit;
	int n, published;
	bool after_lock;

	/* Confirms that already arrived first: rows they settle leave the skip list and are
	 * deleted by this claim, and the window gets their room. */
	relay_handle_confirms(r, 0);
	if (ahead_left(r)) {
		if (r->mq_up && r->db_up && relay_ahead_ready(r))
			publish_ahead(r);
		return;
	}
	if (r->ahead) {
		PQclear(r->ahead);
		r->ahead = NULL;
	}
	limit = relay_claim_limit(r);
	if (!r->work || limit <= 0 || r->n_claimable == 0 || !r->mq_up || !r->db_up)
		return;
	after_lock = r->wake == WAKE_NEW;
	if (!(r->ahead = claim(r, limit)))
		return;
	if (after_lock)
		r->wake = WAKE_HELD;
	r->ahead_at = svc_clock_mono();
	if (SVC_LOG_DEBUG >= svc_log_threshold)
		r->ahead_claimed = svc_clock_wall();
	n = r->ahead_n = PQntuples(r->ahead);
	r->ahead_next = 0;
	if (r->isolate_upto > 0 && (n == 0 || strtoll(PQgetvalue(r->ahead, 0, SVC_RELAY_COL_ID),
	                                              NULL, 10) > r->isolate_upto)) {
		svc_info(COMP, "isolation done: back to pipelined publishing");
		r->isolate_upto = 0;
	}
	published = publish_ahead(r);
	svc_debug(COMP, "claimed %d of %ld, published %d, in flight %zu", n, limit, published,
	          r->fl.count);
	/* A full batch means more may be waiting; a short one means we caught up. */
	r->backlog = n >= limit && r->isolate_upto == 0;
	if (n < limit || !r->db_up || !r->mq_up)
		caught_up(r, n, after_lock);
}
