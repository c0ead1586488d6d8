/* conn: the relay's two connections, a PostgreSQL session and a RabbitMQ channel in confirm
 * mode. Both reconnect forever with jittered exponential backoff capped at
 * RECONNECT_MAX_DELAY; losing one forgets what only that connection made true (advisory
 * locks, publish sequence numbers), never the rows: they stay in the table. */
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "relay/internal.h"
#include "util/backoff.h"
#include "util/clock.h"
#include "util/log.h"

#define LISTEN_CHECK_MS 2000

static double rnd(struct relay *r)
{
	return (double)rand_r(&r->seed) / RAND_MAX;
}

/* When to try again after failure number *fails (counted up). */
static double retry_at(struct relay *r, int *fails)
{
	return svc_clock_mono() + svc_backoff((*fails)++, 0.5, r->cfg->reconnect_max_delay, rnd(r));
}

void relay_db_lost(struct relay *r, const char *what)
{
	if (r->db_up)
		svc_error(COMP, "database: %s: %s", what, svc_pg_error(&r->pg));
	svc_pg_close(&r->pg);
	r->db_up = false;
	/* The session's advisory locks are gone: another relay may own these partitions now. */
	memset(r->held, 0, sizeof(r->held));
	memset(r->releasing, 0, sizeof(r->releasing));
	memset(r->claimable, 0, sizeof(r->claimable));
	r->n_claimable = 0;
	relay_metrics_partitions(r);
	r->wake = WAKE_NONE;
	r->short_poll = r->next_short_poll = 0;
	/* Confirms still to come cannot be recorded: forget them (the rows are sent again). */
	svc_flight_clear(&r->fl);
	relay_drop_ahead(r);
	r->n_defer = r->n_park = 0;
	r->db_retry_at = retry_at(r, &r->db_fails);
}

void relay_mq_lost(struct relay *r, const char *what)
{
	if (r->mq_up)
		svc_error(COMP, "broker: %s: %s", what, svc_amqp_error(r->mq));
	svc_amqp_close(r->mq);
	if (r->mq_up) /* the next connect starts with the next node */
		svc_amqp_nodes_lost(&r->nodes);
	r->mq_up = false;
	svc_flight_clear(&r->fl);
	relay_drop_ahead(r);
	relay_ex_forget_known(r);
	r->mq_retry_at = retry_at(r, &r->mq_fails);
}

/* Sends a NOTIFY to our own channel and waits up to LISTEN_CHECK_MS for it to come back: it
 * does not behind a pooler in transaction mode, and polling is then the only way. */
static bool listen_check(struct relay *r)
{
	double deadline = svc_clock_mono() + LISTEN_CHECK_MS / 1000.0;
	bool got = false;

	if (svc_relay_notify(&r->pg, &r->q, "svccomm-listen-check") != 0)
		return false;
	while (!got) {
		PGnotify *n;
		struct pollfd pfd = {.fd = PQsocket(r->pg.conn), .events = POLLIN};
		double left = deadline - svc_clock_mono();

		if (!PQconsumeInput(r->pg.conn))
			return false;
		while ((n = PQnotifies(r->pg.conn))) {
			if (strcmp(n->extra, "svccomm-listen-check") == 0)
				got = true;
			PQfreemem(n);
		}
		if (got || left <= 0)
			break;
		poll(&pfd, 1, (int)(left * 1000) + 1);
	}
	return got;
}

/* LISTEN (unless PUBLISHER_MODE is "poll" or the start-up check failed once), checked at the
 * first connection. Returns 0, or -1 when the session failed. */
static int listen_setup(struct relay *r)
{
	bool want_listen = strcmp(r->cfg->publisher_mode, "poll") != 0;

	if (!want_listen || (!r->listen && r->listen_tested))
		return 0;
	if (svc_relay_listen(&r->pg, &r->q) != 0)
		return -1;
	if (r->listen_tested)
		return 0;
	r->listen_tested = true;
	r->listen = listen_check(r);
	if (PQstatus(r->pg.conn) != CONNECTION_OK)
		return -1;
	if (!r->listen)
		svc_warn(COMP,
		         "LISTEN \"%s\": no notification came back within %d "
		         "ms; falling back to polling every %.3g s",
		         r->q.channel, LISTEN_CHECK_MS, r->cfg->publisher_poll_interval);
	return 0;
}

void relay_db_connect(struct relay *r)
{
	if (svc_pg_connect(&r->pg, r->cfg->database_url, "svccomm-relay") != 0) {
		svc_warn(COMP, "database: cannot connect: %s", svc_pg_error(&r->pg));
		r->db_retry_at = retry_at(r, &r->db_fails);
		return;
	}
	r->db_up = true;
	/* Deletes of confirmed rows need no fsync: after a crash a lost delete only means the
	 * row is published again, which consumers already handle (at-least-once). The claim's
	 * plan does not depend on its arrays (always the id order), so the prepared statements
	 * are planned once, not at each execution (planning a long skip list costs per id). */
	if (svc_pg_exec(&r->pg,
	                "SELECT set_config('synchronous_commit', 'off', false), "
	                "set_config('plan_cache_mode', 'force_generic_plan', false)",
	                0, NULL, NULL) != 0 ||
	    svc_relay_join(&r->pg, &r->q) != 0 || listen_setup(r) != 0) {
		relay_db_lost(r, "setting up the session");
		return;
	}
	if (r->db_fails > 0)
		svc_info(COMP, "database: reconnected");
	relay_metrics_connected(r, false);
	r->db_fails = 0;
	r->db_last_ok = svc_clock_mono();
	r->work = true; /* catch up */
	r->next_rebalance = 0;
	relay_rebalance(r); /* failures are logged and handled there */
}

void relay_mq_connect(struct relay *r)
{
	int rc = svc_amqp_nodes_connect(&r->nodes, r->mq, (int)r->cfg->heartbeat, r->conn_name);

	if (rc == 0)
		rc = svc_amqp_confirm_select(r->mq);
	if (rc != 0) {
		svc_warn(COMP, "broker: cannot connect: %s", svc_amqp_error(r->mq));
		svc_amqp_close(r->mq);
		svc_amqp_nodes_lost(&r->nodes); /* a node that answered, then failed: the next */
		r->mq_retry_at = retry_at(r, &r->mq_fails);
		return;
	}
	if (r->mq_fails > 0)
		svc_info(COMP, "broker: reconnected");
	relay_metrics_connected(r, true);
	r->mq_up = true;
	r->mq_fails = 0;
	r->work = true;
	relay_ex_forget_known(r);
}
