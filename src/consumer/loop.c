/* loop: svc_consumer_run. Sessions one after the other until a stop signal: a session
 * connects (PostgreSQL, the consuming and the publishing broker connections), declares the
 * topology, and reads, processes and commits deliveries until a connection is lost; the next
 * one starts after a backoff. Housekeeping (stats, heartbeats of the publishing connection,
 * inbox cleanup, a check that QUEUE still exists, the bindings declared again) runs between
 * messages. */
#include "consumer/internal.h"

#include <lauxlib.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "consumer/supervisor.h"
#include "util/backoff.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/log.h"

#define IDLE_TICK_MS        250
#define INBOX_CLEANUP_EVERY 60.0
#define MAX_BATCH           65535
#define QUEUE_CHECK_EVERY   5.0
#define BIND_CHECK_EVERY    5.0 /* a deleted exchange loses events for at most this long */
#define RECONNECT_BASE_S    0.5 /* first reconnect delay, doubling up to RECONNECT_MAX_DELAY */
/* The broker sends a delivery's content header in one frame whatever frame_max says: a message
 * published just under 131072 bytes comes back larger once a dead-lettering added x-death.
 * The consuming connection reads frames up to this size, so such a message can still be read
 * and dead-lettered instead of killing every session. */
#define READ_FRAME_MAX (1 << 20)
/* A session that settled no message and lasted less than this does not reset the reconnect
 * backoff: a message that kills each session (a frame that cannot be read) must not make the
 * consumer reconnect in a hot loop. */
#define SESSION_PROGRESS_S 10.0

static void stats_line(struct svc_consumer *c, double now)
{
	double dt = now - c->last_stats;
	double rate = dt > 0 ? (double)(c->received - c->last_received) / dt : 0;
	const struct svc_log_stat stats[] = {
	    {"received", (double)c->received},
	    {"ok", (double)c->ok},
	    {"retried", (double)c->retried},
	    {"dead_lettered", (double)c->dead},
	    {"unrouted", (double)c->unrouted},
	    {"duplicates", (double)c->dup},
	    {"skipped", (double)c->skipped},
	    {"dlq_refused", (double)c->dlq_refused},
	    {"rate_per_s", (double)(long long)(rate * 10 + 0.5) / 10},
	};
	svc_log_stats(LOG, stats, sizeof(stats) / sizeof(stats[0]));
	c->last_stats = now;
	c->last_received = c->received;
}

/* Housekeeping between messages. idle: nothing is waiting, so a broker round trip is cheap.
 * Returns 0, or SVC_EPROTO when the queue vanished. The broker normally says so with a
 * basic.cancel (amqp_conn announces consumer_cancel_notify); the passive check is the safety
 * net for a cancel that never comes. */
static int idle_work(struct svc_consumer *c, bool idle)
{
	double now = svc_clock_mono();
	if (c->cfg->stats_interval > 0 && now - c->last_stats >= c->cfg->stats_interval)
		stats_line(c, now);
	svc_consumer_metrics_lua(c);
	if (now - c->last_out_poll >= 1.0) {
		/* let rabbitmq-c answer heartbeats on the otherwise idle publishing connection */
		struct svc_amqp_confirm conf[8];
		size_t n = 0;
		c->last_out_poll = now;
		if (svc_amqp_is_open(c->out) &&
		    svc_amqp_poll_confirms(c->out, 0, conf, 8, &n, NULL, NULL) == SVC_ECONN)
			svc_amqp_close(c->out);
	}
	if (c->pg.conn && c->cfg->inbox && !c->in_tx &&
	    now - c->last_cleanup >= INBOX_CLEANUP_EVERY) {
		c->last_cleanup = now;
		if (svc_consumer_inbox_cleanup(c)) /* behind: the next pass in a second */
			c->last_cleanup -= INBOX_CLEANUP_EVERY - 1.0;
	}
	if (now - c->last_bind_check >= BIND_CHECK_EVERY) {
		/* RPCs on the consuming channel: deliveries arriving meanwhile are queued by
		 * rabbitmq-c and read next */
		c->last_bind_check = now;
		int rc = svc_consumer_restore_bindings(c);
		if (rc) {
			snprintf(c->cs.err, sizeof(c->cs.err), "restoring the bindings of '%s': %s",
			         c->cfg->queue, svc_amqp_error(c->in));
			return rc;
		}
		svc_debug(LOG, "bindings of '%s' declared again in %.2f ms", c->cfg->queue,
		          (svc_clock_mono() - now) * 1000.0);
	}
	if (idle && !c->batch_n && now - c->last_queue_check >= QUEUE_CHECK_EVERY) {
		c->last_queue_check = now;
		int rc = svc_amqp_declare_queue(c->in, c->cfg->queue, amqp_empty_table, true);
		/* only a channel closed by the broker (404) says the queue is gone; a timeout
		 * or a lost connection says nothing about it */
		if (rc == SVC_EPROTO)
			snprintf(c->cs.err, sizeof(c->cs.err), "queue '%s' is gone: %s",
			         c->cfg->queue, svc_amqp_error(c->in));
		else if (rc)
			snprintf(c->cs.err, sizeof(c->cs.err), "checking queue '%s': %s",
			         c->cfg->queue, svc_amqp_error(c->in));
		if (rc)
			return rc;
	}
	return 0;
}

/* Connects everything and starts consuming; 0 or a negative code (logged). */
static int session_open(struct svc_consumer *c)
{
	const struct svc_config *cfg = c->cfg;
	char name[128];
	int rc;

	if (cfg->database_url) {
		rc = svc_consumer_db_connect(c);
		if (rc) {
			svc_error(LOG, "PostgreSQL: %s", c->pg.error);
			return rc;
		}
	}
	snprintf(name, sizeof(name), "svccomm consumer %s", cfg->queue);
	rc = svc_amqp_nodes_connect(&c->nodes, c->in, (int)cfg->heartbeat, name);
	if (rc == 0)
		rc = svc_amqp_read_frame_max(c->in, READ_FRAME_MAX);
	if (rc) {
		svc_error(LOG, "RabbitMQ: %s", svc_amqp_error(c->in));
		return rc;
	}
	rc = svc_consumer_connect_out(c);
	if (rc == 0)
		rc = svc_consumer_declare_topology(c);
	if (rc)
		return rc;
	long pf = cfg->prefetch_count;
	rc = svc_amqp_consumer_qos(&c->cs, c->in, (uint16_t)(pf > 65535 ? 65535 : pf < 0 ? 0 : pf));
	if (rc == 0)
		rc = svc_amqp_consumer_start(&c->cs, c->in, cfg->queue);
	if (rc) {
		svc_error(LOG, "consuming '%s': %s", cfg->queue, c->cs.err);
		return rc;
	}
	svc_info(LOG, "consuming '%s' (prefetch %ld%s)", cfg->queue, pf,
	         cfg->database_url ? ", transactional" : "");
	return 0;
}

/* Rolls back what is open and closes every connection: unacked deliveries return to the
 * queue when the consuming channel closes. */
static void session_close(struct svc_consumer *c)
{
	if (c->pg.conn) {
		svc_outbox_transaction_reset(c->pg.conn);
		svc_pg_pipeline_reset(c->pg.conn);
	}
	if (c->pg.conn && c->in_tx && PQstatus(c->pg.conn) == CONNECTION_OK)
		svc_consumer_db_cmd(c, "ROLLBACK");
	c->batch_n = 0;
	svc_consumer_metrics_session(c, false);
	/* a broker connection that broke (not one never opened, as when the database failed
	 * first): the next session starts with the next node */
	if ((svc_amqp_node(c->in)[0] && !svc_amqp_is_open(c->in)) ||
	    (svc_amqp_node(c->out)[0] && !svc_amqp_is_open(c->out)))
		svc_amqp_nodes_lost(&c->nodes);
	svc_amqp_close(c->in);
	svc_amqp_close(c->out);
	c->cs.active = false;
	svc_consumer_db_disconnect(c);
}

/* A commit or a message failed with rc: logs which connection is lost; returns the code that
 * ends the session. */
static int session_lost(struct svc_consumer *c, int rc)
{
	if (rc == SVC_ECONN && c->pg.conn &&
	    (PQstatus(c->pg.conn) != CONNECTION_OK || svc_pg_sqlstate_is_conn(c->pg.sqlstate)))
		svc_error(LOG,
		          "PostgreSQL: %s: unacked messages go back to the queue; reconnecting",
		          c->pg.error);
	else if (c->pg.conn && c->pg.error[0] && rc == SVC_EDB)
		svc_error(LOG, "PostgreSQL: %s", c->pg.error);
	else
		svc_error(LOG, "RabbitMQ: %s (%s): unacked messages go back to the queue",
		          svc_strerror(rc), c->cs.err[0] ? c->cs.err : svc_amqp_error(c->in));
	return rc ? rc : SVC_ECONN;
}

/* A stop was requested: the last batch is committed and acked, then the consumer cancelled. */
static int session_stop(struct svc_consumer *c)
{
	int rc = svc_consumer_commit_batch(c);
	if (rc == 0) {
		svc_amqp_consumer_cancel(&c->cs);
		svc_info(LOG, "stopped: last batch committed and acked");
	}
	return rc;
}

/* Nothing is waiting: commit what we have, then housekeeping. */
static int on_idle(struct svc_consumer *c)
{
	int rc = svc_consumer_commit_batch(c);
	if (rc)
		return session_lost(c, rc);
	rc = svc_consumer_devwatch_poll(c);
	if (rc)
		return session_lost(c, rc);
	rc = idle_work(c, true);
	if (rc)
		svc_warn(LOG, "%s: reconnecting", c->cs.err);
	return rc;
}

static int on_delivery(struct svc_consumer *c)
{
	int rc = svc_consumer_process(c, &c->d);
	if (rc)
		return session_lost(c, rc);
	size_t limit = c->solo ? 1 : c->limit;
	if (svc_consumer_should_commit(c->batch_n, limit, svc_clock_mono() - c->batch_start,
	                               c->cfg->consumer_commit_interval)) {
		rc = svc_consumer_commit_batch(c);
		if (rc)
			return session_lost(c, rc);
	}
	if (c->received % 1024 == 0)
		idle_work(c, false);
	if (svc_consumer_lua_wants_recycle(c)) { /* a fresh state needs no open batch */
		rc = svc_consumer_commit_batch(c);
		if (rc)
			return session_lost(c, rc);
		if (svc_consumer_lua_recycle(c) != 0) {
			c->lua_unusable = true;
			return SVC_ELUA;
		}
	}
	rc = svc_consumer_devwatch_poll(c);
	if (rc)
		return session_lost(c, rc);
	return 0;
}

/* Reads and handles deliveries until a stop (0) or a failure (a negative code). */
static int session_loop(struct svc_consumer *c)
{
	for (;;) {
		svc_metrics_heartbeat(); /* idle, the loop still turns every IDLE_TICK_MS */
		if (svc_consumer_stop)
			return session_stop(c);
		int wait = c->batch_n ? 0 : IDLE_TICK_MS;
		int rc =
		    svc_amqp_consumer_next(&c->cs, &c->d, (size_t)c->cfg->max_message_bytes, wait);
		if (rc == SVC_ETIMEOUT) {
			rc = on_idle(c);
		} else if (rc) {
			if (c->cs.cancelled)
				svc_warn(LOG, "%s (queue deleted?): reconnecting", c->cs.err);
			else
				svc_error(LOG, "RabbitMQ: %s", c->cs.err);
		} else {
			rc = on_delivery(c);
		}
		if (rc)
			return rc;
	}
}

/* One connected session. Returns 0 on a requested stop, SVC_ECONFIG when the settings cannot
 * work, another negative code when a connection failed (reconnect). */
static unsigned long long settled_count(const struct svc_consumer *c)
{
	return c->ok + c->retried + c->dead + c->unrouted + c->dup + c->skipped;
}

static int session(struct svc_consumer *c, unsigned *failures)
{
	c->generation++;
	int rc = session_open(c);
	if (rc == 0) {
		unsigned long long settled = settled_count(c);
		double start = svc_clock_mono();

		svc_consumer_metrics_session(c, true);
		if (!c->connected_once)
			svc_supervisor_ready(); /* an exit status 2 is no longer a configuration
			                           error */
		c->connected_once = true;
		c->last_queue_check = c->last_bind_check = start;
		rc = session_loop(c);
		if (rc == 0 || settled_count(c) != settled ||
		    svc_clock_mono() - start >= SESSION_PROGRESS_S)
			*failures = 0;
	}
	session_close(c);
	return rc;
}

/* Checks the settings and allocates the consumer; 0, or the exit code to return (logged). */
static int consumer_init(struct svc_consumer *c, const struct svc_config *cfg)
{
	if (!cfg->queue) {
		svc_error(LOG, "settings.lua: QUEUE: required by runconsumer, not set");
		return SVC_EXIT_USAGE;
	}
	if (svc_consumer_dlq_name(cfg->queue, c->dlq, sizeof(c->dlq)) != 0) {
		svc_error(LOG, "QUEUE: name too long");
		return SVC_EXIT_USAGE;
	}
	if (svc_consumer_inbox_prepare(c) != 0)
		return SVC_EXIT_USAGE;
	svc_consumer_copy_key(cfg->broker_url, c->copy_key);
	long pf = cfg->prefetch_count;
	c->limit = pf <= 0 ? 1000 : pf > MAX_BATCH ? MAX_BATCH : (size_t)pf;
	if (!cfg->database_url) /* no COMMIT to amortize: ack early, keep the window full */
		c->limit = c->limit >= 4 ? c->limit / 4 : 1;
	c->tags = calloc(c->limit + 1, sizeof(*c->tags));
	c->settled = calloc(c->limit + 1, sizeof(*c->settled));
	c->delay_ms = calloc(cfg->n_retry_delays + 1, sizeof(*c->delay_ms));
	c->in = svc_amqp_new();
	c->out = svc_amqp_new();
	if (!c->tags || !c->settled || !c->delay_ms || !c->in || !c->out ||
	    svc_consumer_committed_init(c) != 0) {
		svc_error(LOG, "out of memory");
		return SVC_EXIT_FAILURE;
	}
	svc_amqp_set_tls(c->in, &cfg->broker_tls);
	svc_amqp_set_tls(c->out, &cfg->broker_tls);
	char err[600];
	if (svc_amqp_nodes_init(&c->nodes, (const char *const *)cfg->broker_urls,
	                        cfg->n_broker_urls, err, sizeof(err)) != 0) {
		svc_error(LOG, "%s", err);
		return SVC_EXIT_USAGE;
	}
	if (cfg->broker_shuffle) /* here, in the worker: each draws its own order */
		svc_amqp_nodes_shuffle(&c->nodes, (unsigned)getpid() ^ (unsigned)time(NULL));
	for (size_t i = 0; i < cfg->n_retry_delays; i++)
		c->delay_ms[i] = svc_consumer_delay_ms(cfg->retry_delays[i]);
	if (svc_consumer_watch_start(c) != 0) {
		svc_error(LOG, "cannot start the heartbeat and deadline thread");
		return SVC_EXIT_FAILURE;
	}
	return 0;
}

static void consumer_free(struct svc_consumer *c)
{
	svc_consumer_signals_disarm();
	svc_consumer_watch_stop(c);
	svc_consumer_devwatch_close(c);
	svc_consumer_committed_free(c);
	if (c->in)
		svc_amqp_free(c->in);
	if (c->out)
		svc_amqp_free(c->out);
	svc_amqp_nodes_release(&c->nodes);
	svc_pg_release(&c->pg);
	svc_delivery_release(&c->d);
	free(c->tags);
	free(c->settled);
	free(c->delay_ms);
}

/* Sessions until a stop signal; the exit code. */
static int run_sessions(struct svc_consumer *c)
{
	const struct svc_config *cfg = c->cfg;
	unsigned failures = 0;

	while (!svc_consumer_stop) {
		int rc = session(c, &failures);
		if (svc_consumer_stop)
			break;
		if (rc == SVC_ECONFIG && !c->connected_once)
			return SVC_EXIT_USAGE;
		if (c->lua_unusable) { /* every message would fail: a restart is the only cure */
			svc_error(LOG, "the Lua state could not be rebuilt (see above): stopping; "
			               "unacked messages go back to the queue");
			stats_line(c, svc_clock_mono());
			return SVC_EXIT_FAILURE;
		}
		failures++;
		double delay = svc_backoff((failures > INT_MAX ? INT_MAX : (int)failures) - 1,
		                           RECONNECT_BASE_S, cfg->reconnect_max_delay,
		                           (double)rand() / ((double)RAND_MAX + 1.0));
		svc_info(LOG, "reconnecting in %.1f s (attempt %u)", delay, failures);
		svc_consumer_nap(delay);
	}
	stats_line(c, svc_clock_mono());
	return SVC_EXIT_OK;
}

int svc_consumer_run(const struct svc_config *cfg, struct svc_runtime *rt, int worker)
{
	struct svc_consumer c;
	int exit_code;

	memset(&c, 0, sizeof(c));
	c.cfg = cfg;
	c.rt = rt;
	c.L = svc_runtime_state(rt);
	c.worker = worker;
	c.ref_conn = LUA_NOREF;
	svc_pg_init(&c.pg);
	exit_code = consumer_init(&c, cfg);
	if (exit_code == 0 && svc_consumer_lua_setup(&c) != 0)
		exit_code = SVC_EXIT_FAILURE;
	if (exit_code == 0 && svc_consumer_dev && svc_consumer_devwatch_open(&c) != 0)
		exit_code = SVC_EXIT_FAILURE;
	if (exit_code != 0)
		goto out;
	svc_consumer_metrics_init(&c);
	/* LUA_MEMORY_LIMIT_MB is set by the command runner (cli.c) before any command runs, so
	 * the requires of svc_consumer_lua_setup() ran under it too; forked workers inherit it. */
	svc_consumer_signals_install(cfg->shutdown_timeout);
	srand((unsigned)getpid() ^ (unsigned)time(NULL));
	c.last_stats = c.last_cleanup = svc_clock_mono();
	c.last_cleanup -= INBOX_CLEANUP_EVERY; /* first cleanup soon after start */
	exit_code = run_sessions(&c);
out:
	consumer_free(&c);
	return exit_code;
}
