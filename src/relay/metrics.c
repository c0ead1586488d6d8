/* metrics: the relay's series (metrics/metrics.h). Events are counted by exchange: each exchange
 * of the cache gets its four series once (relay_ex_metrics), and a published row carries that
 * index in its window entry so its confirm, nack or return is counted under the same exchange
 * without a lookup. The backlog is sampled at most once a second (a bounded query). */
#include <stdio.h>
#include <string.h>

#include "config/config.h"
#include "relay/internal.h"
#include "util/clock.h"
#include "util/error.h"

enum { EV_PUBLISHED, EV_CONFIRMED, EV_NACKED, EV_RETURNED };

static void on_decided(void *arg, const struct svc_flight_entry *e)
{
	struct relay *r = arg;
	struct relay_metrics *m = &r->m;
	if (e->tag == 0 || e->tag > m->n_exm)
		return;
	svc_metric *ev = m->exm[e->tag - 1];
	if (e->state == SVC_FLIGHT_ACKED)
		svc_metric_inc(ev[EV_CONFIRMED]);
	else if (e->state == SVC_FLIGHT_RETURNED_ACKED)
		svc_metric_inc(ev[EV_RETURNED]);
	else
		svc_metric_inc(ev[EV_NACKED]);
	if (e->sent > 0)
		svc_metric_observe(m->confirm_s, SVC_M_RELAY_CONFIRM_SECONDS,
		                   svc_clock_mono() - e->sent);
}

void relay_metrics_init(struct relay *r)
{
	struct relay_metrics *m = &r->m;
	char node[300];

	m->on = svc_metrics_self != NULL;
	if (!m->on)
		return;
	m->parked = svc_metrics_series(SVC_M_RELAY_PARKED, "");
	m->backlog = svc_metrics_series(SVC_M_RELAY_BACKLOG, "");
	m->oldest = svc_metrics_series(SVC_M_RELAY_OLDEST_DUE, "");
	m->claim_s = svc_metrics_series(SVC_M_RELAY_CLAIM_SECONDS, "");
	m->confirm_s = svc_metrics_series(SVC_M_RELAY_CONFIRM_SECONDS, "");
	m->partitions = svc_metrics_series(SVC_M_RELAY_PARTITIONS, "");
	/* the first node until a connection says which one is in use */
	if (!svc_amqp_url_node(r->cfg->broker_url, node, sizeof(node), NULL))
		node[0] = '\0';
	svc_metrics_conn_init(&m->conn, node, true);
	r->fl.on_decided = on_decided;
	r->fl.on_decided_arg = r;
	svc_metrics_heartbeat();
}

uint16_t relay_metrics_exchange(struct relay *r, const char *exchange)
{
	static const char *const outcomes[] = {"published", "confirmed", "nacked", "returned"};
	struct relay_metrics *m = &r->m;
	char labels[SVC_METRICS_LABELS_MAX];

	if (!m->on)
		return 0;
	if (m->n_exm == RELAY_EXM_MAX) /* the series would overflow anyway: share the last set */
		return RELAY_EXM_MAX;
	for (int k = 0; k < 4; k++) {
		svc_metrics_labels(labels, sizeof(labels), "exchange", exchange, "outcome",
		                   outcomes[k], (const char *)NULL);
		m->exm[m->n_exm][k] = svc_metrics_series(SVC_M_RELAY_EVENTS, labels);
	}
	return (uint16_t)++m->n_exm;
}

void relay_metrics_published(struct relay *r, uint16_t tag)
{
	struct svc_flight_entry *e = svc_flight_last(&r->fl);
	if (!r->m.on || !e || tag == 0)
		return;
	e->tag = tag;
	e->sent = svc_clock_mono();
	svc_metric_inc(r->m.exm[tag - 1][EV_PUBLISHED]);
}

void relay_metrics_tick(struct relay *r, double now)
{
	struct relay_metrics *m = &r->m;
	if (!m->on)
		return;
	svc_metrics_heartbeat();
	svc_metrics_conn_amqp(&m->conn, r->mq_up, svc_amqp_node(r->mq));
	svc_metric_set(m->conn.pg_up, r->db_up);
	svc_metrics_set_ready((r->mq_up ? SVC_READY_AMQP | SVC_READY_CONSUMING : 0) |
	                      (r->db_up ? SVC_READY_PG : 0));
	if (r->db_up && now >= m->next_backlog) {
		long rows = 0;
		double oldest = 0;
		m->next_backlog = now + 1.0;
		int rc = svc_relay_backlog(&r->pg, &r->q, &rows, &oldest);
		if (rc == SVC_ECONN) {
			relay_db_lost(r, "reading the backlog");
		} else if (rc == 0) {
			svc_metric_set(m->backlog, (double)rows);
			svc_metric_set(m->oldest, oldest > 0 ? oldest : 0);
		}
	}
}

void relay_metrics_connected(struct relay *r, bool broker)
{
	struct relay_metrics *m = &r->m;
	bool *seen = broker ? &m->mq_seen : &m->db_seen;
	if (*seen)
		svc_metric_inc(broker ? m->conn.amqp_reconnects : m->conn.pg_reconnects);
	*seen = true;
}

void relay_metrics_partitions(struct relay *r)
{
	int held = 0;
	if (!r->m.on)
		return;
	for (int p = 0; p < SVC_RELAY_PARTITIONS; p++)
		held += r->held[p];
	svc_metric_set(r->m.partitions, held);
}
