/* metrics: the consumer's series (metrics/metrics.h): made once at start, then updated where
 * the outcome is known (message.c, batch.c) with one relaxed atomic each. Labels: queue (one
 * per process), outcome, reason. The handler (app) is not a label: naming it costs a call
 * into Lua per message (dispatch.last_handler), which the hot path does not pay. */
#include "consumer/internal.h"

#include <lua.h>
#include <stdio.h>
#include <string.h>

#include "config/config.h"

static svc_metric outcome(struct svc_consumer *c, const char *name)
{
	char labels[SVC_METRICS_LABELS_MAX];
	svc_metrics_labels(labels, sizeof(labels), "queue", c->cfg->queue, "outcome", name,
	                   (const char *)NULL);
	return svc_metrics_series(SVC_M_CONSUMER_MESSAGES, labels);
}

void svc_consumer_metrics_init(struct svc_consumer *c)
{
	struct svc_consumer_metrics *m = &c->m;
	char node[300];

	svc_metrics_labels(m->queue, sizeof(m->queue), "queue", c->cfg->queue, (const char *)NULL);
	m->received = svc_metrics_series(SVC_M_CONSUMER_RECEIVED, m->queue);
	m->ok = outcome(c, "ok");
	m->skipped = outcome(c, "skipped");
	m->expired = outcome(c, "expired");
	m->unrouted = outcome(c, "unrouted");
	m->retried = outcome(c, "retried");
	m->dead = outcome(c, "dead_lettered");
	m->dup = outcome(c, "duplicate");
	m->refused = outcome(c, "dlq_refused");
	m->failures = svc_metrics_series(SVC_M_CONSUMER_FAILURES, m->queue);
	m->handler_s = svc_metrics_series(SVC_M_CONSUMER_HANDLER_SECONDS, m->queue);
	m->batch_size = svc_metrics_series(SVC_M_CONSUMER_BATCH_SIZE, m->queue);
	m->commit_s = svc_metrics_series(SVC_M_CONSUMER_COMMIT_SECONDS, m->queue);
	m->in_flight = svc_metrics_series(SVC_M_CONSUMER_IN_FLIGHT, m->queue);
	m->consuming = svc_metrics_series(SVC_M_CONSUMER_CONSUMING, m->queue);
	m->lua_mem = svc_metrics_series(SVC_M_LUA_MEMORY, "");
	/* the first node until a connection says which one is in use */
	if (!svc_amqp_url_node(c->cfg->broker_url, node, sizeof(node), NULL))
		node[0] = '\0';
	svc_metrics_conn_init(&m->conn, node, c->cfg->database_url != NULL);
	svc_consumer_metrics_lua(c);
	svc_metrics_heartbeat();
}

void svc_consumer_metrics_session(struct svc_consumer *c, bool up)
{
	struct svc_consumer_metrics *m = &c->m;
	bool pg = c->cfg->database_url != NULL;

	if (up && c->connected_once) {
		svc_metric_inc(m->conn.amqp_reconnects);
		if (pg)
			svc_metric_inc(m->conn.pg_reconnects);
	}
	svc_metrics_conn_amqp(&m->conn, up, svc_amqp_node(c->in));
	svc_metric_set(m->consuming, up);
	if (pg)
		svc_metric_set(m->conn.pg_up, up);
	svc_metric_set(m->in_flight, 0);
	svc_metrics_set_ready(up ? SVC_READY_ALL : 0);
}

void svc_consumer_metrics_dead_letter(struct svc_consumer *c, const char *reason)
{
	char labels[SVC_METRICS_LABELS_MAX];
	svc_metric_inc(c->m.dead);
	if (!svc_metrics_self)
		return;
	svc_metrics_labels(labels, sizeof(labels), "queue", c->cfg->queue, "reason", reason,
	                   (const char *)NULL);
	svc_metric_inc(svc_metrics_series(SVC_M_CONSUMER_DEAD_LETTERS, labels));
}

void svc_consumer_metrics_lua(struct svc_consumer *c)
{
	if (c->m.lua_mem && c->L)
		svc_metric_set(c->m.lua_mem, (double)lua_gc(c->L, LUA_GCCOUNT, 0) * 1024.0 +
		                                 (double)lua_gc(c->L, LUA_GCCOUNTB, 0));
}
