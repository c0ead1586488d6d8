/* loop: svc_publisher_run(), the relay's one thread. Each turn runs the timers (reconnects,
 * poll interval, next due row, rebalance, probe, stats), claims and publishes when there is
 * work and room, then sleeps in poll() on both sockets until a confirm, a notification or the
 * next timer. On stop it drains the confirms in flight (up to SHUTDOWN_TIMEOUT), writes what
 * they decided and returns. */
#include <errno.h>
#include <inttypes.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "outbox/envelope.h"
#include "relay/internal.h"
#include "relay/relay.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/log.h"

#define PROBE_IDLE      10.0 /* probe the database after this many idle seconds */
#define DELETE_MAX_WAIT 0.1  /* seconds a confirmed row may wait for a claim to delete it */
#define DUE_CHECK_EVERY 1.0  /* without LISTEN: seconds between reads of the next due time */

static void stats(struct relay *r)
{
	long backlog = -1;
	double oldest = 0;

	if (r->db_up) {
		int rc = svc_relay_backlog(&r->pg, &r->q, &backlog, &oldest);

		if (rc == SVC_ECONN)
			relay_db_lost(r, "reading the backlog");
	}
	const struct svc_log_stat stats[] = {
	    {"published", (double)r->published},
	    {"confirmed", (double)r->confirmed},
	    {"returned", (double)r->returned},
	    {"nacked", (double)r->nacked},
	    {"parked", (double)r->parked},
	    {"deferred", (double)r->deferred},
	    {"in_flight", (double)r->fl.count},
	    {"backlog", (double)backlog},
	    {"oldest_due_s", (double)(long long)(oldest * 10 + 0.5) / 10},
	    {"partitions", (double)r->n_claimable},
	    {"relays", (double)r->members},
	};
	svc_log_stats(COMP, stats, sizeof(stats) / sizeof(stats[0]));
}

static void read_notifications(struct relay *r)
{
	PGnotify *n;

	if (!PQconsumeInput(r->pg.conn)) {
		svc_pg_set_error(r->pg.error, sizeof(r->pg.error), PQerrorMessage(r->pg.conn));
		relay_db_lost(r, "reading notifications");
		return;
	}
	while ((n = PQnotifies(r->pg.conn))) {
		r->work = r->woken = true;
		PQfreemem(n);
	}
}

static double min_d(double a, double b)
{
	return a < b ? a : b;
}

/* True when the loop must go on without sleeping: a claim can run now, or confirms are
 * buffered in rabbitmq-c (then read). */
static bool no_sleep(struct relay *r)
{
	PGnotify *note;

	/* libpq reads notifications that arrive during any query (claim, delete, rebalance) into
	 * its own queue; the socket then has nothing new to poll for, so take them from there. */
	while (r->db_up && r->listen && (note = PQnotifies(r->pg.conn))) {
		r->work = r->woken = true;
		PQfreemem(note);
	}
	if (r->work && r->mq_up && r->db_up && relay_claim_limit(r) > 0 && r->n_claimable > 0)
		return true;
	if (r->mq_up && r->db_up && relay_ahead_ready(r))
		return true;
	if (r->mq_up && svc_amqp_buffered(r->mq)) {
		relay_handle_confirms(r, 0);
		return true;
	}
	return false;
}

/* When to wake up at the latest, from now t: the earliest timer, at most a second. */
static double wake_time(struct relay *r, double t)
{
	double until = t + 1.0;

	if (r->n_del > 0)
		until = min_d(until, r->del_since + DELETE_MAX_WAIT);
	until = min_d(until, r->next_poll);
	if (!r->listen && r->db_up)
		until = min_d(until, r->next_due_check);
	until = min_d(until, r->next_rebalance);
	until = min_d(until, r->next_stats);
	if (r->next_due > 0)
		until = min_d(until, r->next_due);
	if (r->next_short_poll > 0)
		until = min_d(until, r->next_short_poll);
	if (relay_ahead_expiry(r) > 0)
		until = min_d(until, relay_ahead_expiry(r));
	if (!r->db_up)
		until = min_d(until, r->db_retry_at);
	if (!r->mq_up)
		until = min_d(until, r->mq_retry_at);
	return until;
}

/* Sleeps in poll() on both sockets until one is readable or until, then reads it. */
static void sleep_until(struct relay *r, double t, double until)
{
	struct pollfd pfd[2];
	int nfd = 0, mq_i = -1, pg_i = -1;
	int timeout_ms = until > t ? (int)((until - t) * 1000) + 1 : 0;

	if (r->mq_up) {
		pfd[nfd].fd = svc_amqp_fd(r->mq);
		pfd[nfd].events = POLLIN;
		mq_i = nfd++;
	}
	if (r->db_up && r->listen) {
		pfd[nfd].fd = PQsocket(r->pg.conn);
		pfd[nfd].events = POLLIN;
		pg_i = nfd++;
	}
	if (poll(pfd, (nfds_t)nfd, timeout_ms) < 0) {
		if (errno != EINTR)
			svc_error(COMP, "poll: %s", strerror(errno));
		return;
	}
	if (mq_i >= 0 && pfd[mq_i].revents)
		relay_handle_confirms(r, 0);
	else if (r->mq_up)
		relay_handle_confirms(r, 0); /* lets rabbitmq-c send and check heartbeats */
	if (pg_i >= 0 && r->db_up && pfd[pg_i].revents)
		read_notifications(r);
}

static void wait_events(struct relay *r)
{
	double t = svc_clock_mono();

	if (no_sleep(r))
		return;
	/* About to sleep. Confirmed rows wait for the next claim only while one is sure to come
	 * soon: more work, room expected from outstanding confirms, and not for too long. */
	if (r->n_del > 0 && (!r->work || !r->mq_up || r->n_claimable == 0 || r->fl.count == 0 ||
	                     t - r->del_since >= DELETE_MAX_WAIT))
		relay_flush_deletes(r);
	sleep_until(r, t, wake_time(r, t));
}

static void timers(struct relay *r)
{
	double t = svc_clock_mono();

	if (!r->db_up && t >= r->db_retry_at)
		relay_db_connect(r);
	if (!r->mq_up && t >= r->mq_retry_at)
		relay_mq_connect(r);
	if (t >= r->next_poll) {
		r->work = true;
		r->next_poll =
		    t +
		    (r->cfg->publisher_poll_interval > 0 ? r->cfg->publisher_poll_interval : 1.0);
	}
	/* Without notifications a row scheduled after the last claim is unknown until the next
	 * poll: reading the next due time (one index probe) keeps schedules on time in poll
	 * mode too, while rows due at once still wait for the poll as documented. */
	if (!r->listen && r->db_up && t >= r->next_due_check) {
		r->next_due_check = t + DUE_CHECK_EVERY;
		if (r->next_due == 0 || r->next_due > r->next_due_check)
			relay_read_next_due(r);
	}
	if (r->next_due > 0 && t >= r->next_due) {
		r->work = true;
		r->next_due = 0;
	}
	if (r->next_short_poll > 0 && t >= r->next_short_poll) {
		r->work = true;
		r->next_short_poll = 0;
	}
	if (relay_ahead_expiry(r) > 0 && t >= relay_ahead_expiry(r)) {
		svc_debug(COMP, "claimed rows waited %.3g s for room: claiming them again",
		          t - r->ahead_at);
		relay_drop_ahead(r);
	}
	if (r->db_up && t >= r->next_rebalance)
		relay_rebalance(r);
	if (r->db_up && t - r->db_last_ok > PROBE_IDLE) {
		int rc = svc_relay_probe(&r->pg);

		if (rc == SVC_ECONN)
			relay_db_lost(r, "probe");
		else
			r->db_last_ok = t;
	}
	if (t >= r->next_stats) {
		if (r->cfg->stats_interval > 0)
			stats(r);
		r->next_stats = t + (r->cfg->stats_interval > 0 ? r->cfg->stats_interval : 3600);
	}
}

static void relay_free(struct relay *r)
{
	if (r->mq)
		svc_amqp_free(r->mq);
	svc_amqp_nodes_release(&r->nodes);
	svc_pg_release(&r->pg);
	svc_relay_sql_release(&r->q);
	svc_flight_release(&r->fl);
	PQclear(r->ahead);
	relay_ex_free_all(r);
	free(r->defer_ids);
	free(r->park_ids);
	free(r->skip_ids);
	free(r->del_ids);
	free(r->hdrbuf);
	free(r);
}

/* Allocates the relay and its lists (each room for the window). Returns 0, SVC_ECONFIG (bad
 * OUTBOX_TABLE, logged) or SVC_ENOMEM. */
static int relay_new(const struct svc_config *cfg, volatile sig_atomic_t *stop, struct relay **out)
{
	struct relay *r = calloc(1, sizeof(*r));
	size_t window = cfg->publisher_window > 0 ? (size_t)cfg->publisher_window : 1;
	enum svc_wire_format fmt;
	int rc = SVC_ENOMEM;

	if (!r)
		return SVC_ENOMEM;
	r->cfg = cfg;
	r->stop = stop;
	r->seed = (unsigned int)getpid() ^ (unsigned int)time(NULL);
	svc_pg_init(&r->pg);
	if (svc_wire_format_parse(cfg->wire_format, &fmt) != 0) {
		svc_error(COMP, "WIRE_FORMAT \"%s\" is not \"svccomm\" or \"django\"",
		          cfg->wire_format);
		rc = SVC_ECONFIG;
		goto fail;
	}
	r->content_type = svc_wire_content_type(fmt);
	if (svc_relay_sql_init(&r->q, cfg->outbox_table) != 0) {
		svc_error(COMP, "OUTBOX_TABLE \"%s\" is not a valid table name", cfg->outbox_table);
		rc = SVC_ECONFIG;
		goto fail;
	}
	r->mq = svc_amqp_new();
	r->defer_ids = calloc(window, sizeof(int64_t));
	r->park_ids = calloc(window, sizeof(int64_t));
	r->skip_ids = calloc(window, sizeof(int64_t));
	r->del_cap = window;
	r->del_ids = calloc(window, sizeof(int64_t));
	if (!r->mq || !r->defer_ids || !r->park_ids || !r->skip_ids || !r->del_ids ||
	    svc_flight_init(&r->fl, window) != 0)
		goto fail;
	svc_amqp_set_tls(r->mq, &cfg->broker_tls);
	{
		char err[600];
		int nrc = svc_amqp_nodes_init(&r->nodes, (const char *const *)cfg->broker_urls,
		                              cfg->n_broker_urls, err, sizeof(err));
		if (nrc != 0) {
			svc_error(COMP, "%s", err);
			rc = nrc == SVC_EINVAL ? SVC_ECONFIG : nrc;
			goto fail;
		}
		if (cfg->broker_shuffle)
			svc_amqp_nodes_shuffle(&r->nodes, r->seed);
	}
	snprintf(r->conn_name, sizeof(r->conn_name), "svccomm runpublisher %s pid %d", cfg->app_id,
	         (int)getpid());
	*out = r;
	return 0;
fail:
	relay_free(r);
	return rc;
}

/* Stops claiming: waits for the confirms in flight, then writes what they decided. */
static void shut_down(struct relay *r)
{
	svc_info(COMP, "stopping: waiting up to %.3g s for %zu outstanding confirm(s)",
	         r->cfg->shutdown_timeout, r->fl.count);
	relay_drain(r, svc_clock_mono() + r->cfg->shutdown_timeout);
	if (r->fl.count > 0)
		svc_warn(COMP,
		         "%zu message(s) still unconfirmed: their rows stay and are sent again",
		         r->fl.count);
	relay_flush_lists(r);
	relay_flush_deletes(r);
	if (r->cfg->stats_interval > 0)
		stats(r);
}

int svc_publisher_run(const struct svc_config *cfg, volatile sig_atomic_t *stop)
{
	struct relay *r = NULL;
	int rc;

	if (!cfg->database_url || !*cfg->database_url) {
		svc_error(COMP, "DATABASE_URL is not set: the relay reads the outbox from it");
		return SVC_ECONFIG;
	}
#ifdef __GLIBC__
	/* Each claim's result (up to half the window of rows) is freed before the next claim
	 * allocates as much again: without this, glibc gives that memory back to the kernel
	 * every time (brk) and the next claim faults it in again, a tenth of the relay's CPU. */
	mallopt(M_TRIM_THRESHOLD, 8 * 1024 * 1024);
#endif
	if ((rc = relay_new(cfg, stop, &r)) != 0)
		return rc;
	svc_info(COMP, "relay for table %s starting (mode %s, batch %ld, window %zu)", r->q.table,
	         cfg->publisher_mode, cfg->publisher_batch_size, r->fl.cap);
	r->next_stats = svc_clock_mono() + (cfg->stats_interval > 0 ? cfg->stats_interval : 3600);
	relay_metrics_init(r);
	while (!*stop) {
		timers(r);
		relay_metrics_tick(r, svc_clock_mono());
		if (*stop)
			break;
		if ((r->work || relay_ahead_ready(r)) && r->mq_up && r->db_up)
			relay_claim_and_publish(r);
		if (*stop)
			break;
		wait_events(r);
	}
	shut_down(r);
	relay_free(r);
	return 0;
}
