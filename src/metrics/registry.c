/* registry: the metric catalogue, series creation and updates, folding (see metrics.h). */
#include "metrics/metrics.h"

#include <libpq-fe.h>
#include <lua.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <amqp.h>

#include "util/clock.h"

#define SECONDS_BUCKETS                                                                            \
	11,                                                                                        \
	{                                                                                          \
		0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5, 10                 \
	}

const struct svc_metric_def svc_metrics_defs[SVC_M_COUNT] = {
    [SVC_M_PROCESS_START] = {"process_start_time_seconds", SVC_METRIC_GAUGE,
                             "Start time of the process since the Unix epoch, in seconds."},
    [SVC_M_BUILD_INFO] = {"svccomm_build_info", SVC_METRIC_GAUGE,
                          "Always 1; the labels name the versions of svccomm, Lua, rabbitmq-c and "
                          "libpq."},
    [SVC_M_LUA_MEMORY] = {"svccomm_lua_memory_bytes", SVC_METRIC_GAUGE,
                          "Memory used by the Lua state(s), in bytes."},
    [SVC_M_AMQP_CONNECTED] =
        {"svccomm_amqp_connected", SVC_METRIC_GAUGE,
         "1 while connected to the RabbitMQ node named by the label (the "
         "consuming connection of a consumer, the publishing one of a relay)."},
    [SVC_M_AMQP_RECONNECTS] = {"svccomm_amqp_reconnects_total", SVC_METRIC_COUNTER,
                               "Connections to RabbitMQ opened after the first."},
    [SVC_M_PG_CONNECTED] = {"svccomm_postgres_connected", SVC_METRIC_GAUGE,
                            "1 while connected to PostgreSQL (absent without DATABASE_URL)."},
    [SVC_M_PG_RECONNECTS] = {"svccomm_postgres_reconnects_total", SVC_METRIC_COUNTER,
                             "Connections to PostgreSQL opened after the first."},
    [SVC_M_CONSUMER_RECEIVED] = {"svccomm_consumer_received_total", SVC_METRIC_COUNTER,
                                 "Deliveries read from QUEUE (redeliveries included)."},
    [SVC_M_CONSUMER_MESSAGES] = {"svccomm_consumer_messages_total", SVC_METRIC_COUNTER,
                                 "Messages by outcome: ok, skipped (the handler said so), "
                                 "expired (same), unrouted (acked, no handler), retried, "
                                 "dead_lettered, duplicate (inbox or a lost ack), dlq_refused."},
    [SVC_M_CONSUMER_FAILURES] = {"svccomm_consumer_handler_failures_total", SVC_METRIC_COUNTER,
                                 "Handler calls that failed (raised, timed out, out of memory); "
                                 "each is then retried or dead-lettered."},
    [SVC_M_CONSUMER_DEAD_LETTERS] = {"svccomm_consumer_dead_letters_total", SVC_METRIC_COUNTER,
                                     "Messages published to <QUEUE>.dlq, by reason."},
    [SVC_M_CONSUMER_HANDLER_SECONDS] = {"svccomm_consumer_handler_duration_seconds",
                                        SVC_METRIC_HISTOGRAM,
                                        "Time in the Lua handler call, per message.",
                                        SECONDS_BUCKETS},
    [SVC_M_CONSUMER_BATCH_SIZE] = {"svccomm_consumer_batch_size_messages",
                                   SVC_METRIC_HISTOGRAM,
                                   "Messages per committed (and acked) batch.",
                                   10,
                                   {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000}},
    [SVC_M_CONSUMER_COMMIT_SECONDS] = {"svccomm_consumer_commit_duration_seconds",
                                       SVC_METRIC_HISTOGRAM, "Time of a batch's COMMIT and acks.",
                                       SECONDS_BUCKETS},
    [SVC_M_CONSUMER_IN_FLIGHT] = {"svccomm_consumer_in_flight_messages", SVC_METRIC_GAUGE,
                                  "Messages received and not yet acked (the open batch)."},
    [SVC_M_CONSUMER_CONSUMING] = {"svccomm_consumer_consuming", SVC_METRIC_GAUGE,
                                  "1 while basic.consume on QUEUE is active."},
    [SVC_M_RELAY_EVENTS] = {"svccomm_relay_events_total", SVC_METRIC_COUNTER,
                            "Outbox events by exchange and outcome: published, confirmed (by the "
                            "broker, then deleted), nacked, returned (unroutable)."},
    [SVC_M_RELAY_PARKED] = {"svccomm_relay_parked_total", SVC_METRIC_COUNTER,
                            "Outbox rows parked (set aside for good)."},
    [SVC_M_RELAY_BACKLOG] = {"svccomm_relay_backlog_rows", SVC_METRIC_GAUGE,
                             "Outbox rows due now, not parked (counted up to 100000, sampled at "
                             "most once a second)."},
    [SVC_M_RELAY_OLDEST_DUE] = {"svccomm_relay_oldest_due_age_seconds", SVC_METRIC_GAUGE,
                                "Age of the oldest due outbox row, 0 when none is due."},
    [SVC_M_RELAY_CLAIM_SECONDS] = {"svccomm_relay_claim_duration_seconds", SVC_METRIC_HISTOGRAM,
                                   "Time of a claim, with the delete of the confirmed rows "
                                   "just before it.",
                                   SECONDS_BUCKETS},
    [SVC_M_RELAY_CONFIRM_SECONDS] = {"svccomm_relay_confirm_latency_seconds", SVC_METRIC_HISTOGRAM,
                                     "Time from a claim's publish until the broker's confirm of "
                                     "its rows.",
                                     SECONDS_BUCKETS},
    [SVC_M_RELAY_PARTITIONS] = {"svccomm_relay_partitions_held", SVC_METRIC_GAUGE,
                                "Outbox partitions this relay holds."},
};

struct svc_metrics_region *svc_metrics_self;

void svc_metrics_use(struct svc_metrics_region *r)
{
	svc_metrics_self = r;
	if (r)
		atomic_store(&r->in_use, 1);
}

void svc_metrics_labels(char *out, size_t outsz, ...)
{
	va_list ap;
	size_t n = 0;
	const char *name;

	if (!outsz)
		return;
	out[0] = '\0';
	va_start(ap, outsz);
	while ((name = va_arg(ap, const char *)) != NULL) {
		const char *val = va_arg(ap, const char *), *p;
		size_t start = n; /* a pair that does not fit whole is left out, and the rest */
		int w = snprintf(out + n, outsz - n, "%s%s=\"", n ? "," : "", name);
		if (w < 0 || (size_t)w >= outsz - n)
			goto cut;
		n += (size_t)w;
		for (p = val ? val : ""; *p && n + 3 < outsz; p++) {
			if (*p == '\\' || *p == '"')
				out[n++] = '\\', out[n++] = *p;
			else if (*p == '\n')
				out[n++] = '\\', out[n++] = 'n';
			else
				out[n++] = *p;
		}
		if (*p || n + 2 > outsz) {
			n = start;
			goto cut;
		}
		out[n++] = '"';
		out[n] = '\0';
		continue;
	cut:
		out[start] = '\0';
		break;
	}
	va_end(ap);
}

static size_t n_values(enum svc_metric_id metric)
{
	const struct svc_metric_def *d = &svc_metrics_defs[metric];
	return d->type == SVC_METRIC_HISTOGRAM ? d->n_bounds + 2 : 1;
}

static svc_metric find(struct svc_metrics_region *r, uint32_t n, enum svc_metric_id metric,
                       const char *labels)
{
	for (uint32_t i = 0; i < n; i++)
		if (r->series[i].metric == metric && strcmp(r->series[i].labels, labels) == 0)
			return &r->v[r->series[i].off];
	return NULL;
}

static svc_metric create(struct svc_metrics_region *r, enum svc_metric_id metric,
                         const char *labels, uint32_t max_series)
{
	uint32_t n = atomic_load_explicit(&r->n_series, memory_order_relaxed);
	uint32_t nv = atomic_load_explicit(&r->n_values, memory_order_relaxed);
	size_t need = n_values(metric);
	if (n >= max_series || nv + need > SVC_METRICS_VALUES_MAX)
		return NULL;
	struct svc_metrics_series *s = &r->series[n];
	s->metric = (uint16_t)metric;
	s->off = (uint16_t)nv;
	snprintf(s->labels, sizeof(s->labels), "%s", labels);
	for (size_t i = 0; i < need; i++)
		atomic_store_explicit(&r->v[nv + i], 0, memory_order_relaxed);
	atomic_store_explicit(&r->n_values, nv + (uint32_t)need, memory_order_relaxed);
	atomic_store_explicit(&r->n_series, n + 1, memory_order_release);
	return &r->v[nv];
}

svc_metric svc_metrics_series(enum svc_metric_id metric, const char *labels)
{
	struct svc_metrics_region *r = svc_metrics_self;
	if (!r || metric >= SVC_M_COUNT)
		return NULL;
	uint32_t n = atomic_load_explicit(&r->n_series, memory_order_relaxed);
	svc_metric m = find(r, n, metric, labels);
	if (!m)
		m = create(r, metric, labels, SVC_METRICS_SERIES_MAX - SVC_METRICS_SPARE);
	if (!m) {
		n = atomic_load_explicit(&r->n_series, memory_order_relaxed);
		m = find(r, n, metric, "overflow=\"true\"");
		if (!m)
			m = create(r, metric, "overflow=\"true\"", SVC_METRICS_SERIES_MAX);
	}
	return m;
}

void svc_metric_observe(svc_metric m, enum svc_metric_id metric, double value)
{
	const struct svc_metric_def *d = &svc_metrics_defs[metric];
	size_t b = 0;
	if (!m)
		return;
	if (!(value > 0))
		value = 0;
	while (b < d->n_bounds && value > d->bounds[b])
		b++;
	atomic_fetch_add_explicit(&m[b], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&m[d->n_bounds + 1], (uint64_t)llround(value * 1e9),
	                          memory_order_relaxed);
}

void svc_metrics_heartbeat(void)
{
	if (svc_metrics_self)
		atomic_store_explicit(&svc_metrics_self->heartbeat_ms,
		                      (uint64_t)(svc_clock_mono() * 1000.0) + 1,
		                      memory_order_relaxed);
}

void svc_metrics_set_ready(uint32_t bits)
{
	if (svc_metrics_self)
		atomic_store_explicit(&svc_metrics_self->ready, bits, memory_order_relaxed);
}

void svc_metrics_process_info(void)
{
	char labels[SVC_METRICS_LABELS_MAX], pq[32];
	struct timespec ts;
	int v = PQlibVersion();

	clock_gettime(CLOCK_REALTIME, &ts);
	svc_metric_set(svc_metrics_series(SVC_M_PROCESS_START, ""),
	               (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
	/* PQlibVersion: 150004 = 15.4 (10 and later) */
	snprintf(pq, sizeof(pq), "%d.%d", v / 10000, v % 10000);
	svc_metrics_labels(labels, sizeof(labels), "version", SVCCOMM_VERSION, "lua",
	                   LUA_VERSION_MAJOR "." LUA_VERSION_MINOR "." LUA_VERSION_RELEASE,
	                   "rabbitmq_c", amqp_version(), "libpq", pq, (const char *)NULL);
	svc_metric_set(svc_metrics_series(SVC_M_BUILD_INFO, labels), 1.0);
}

/* The index of (metric, labels) in dst, created when missing; -1 when dst is full. */
static long dst_series(struct svc_metrics_region *dst, uint16_t metric, const char *labels)
{
	uint32_t n = atomic_load_explicit(&dst->n_series, memory_order_relaxed);
	for (uint32_t i = 0; i < n; i++)
		if (dst->series[i].metric == metric && strcmp(dst->series[i].labels, labels) == 0)
			return dst->series[i].off;
	svc_metric m = create(dst, (enum svc_metric_id)metric, labels, SVC_METRICS_SERIES_MAX);
	return m ? (long)(m - dst->v) : -1;
}

void svc_metrics_fold(struct svc_metrics_region *dst, const struct svc_metrics_region *src)
{
	uint32_t n = atomic_load_explicit(&src->n_series, memory_order_acquire);
	for (uint32_t i = 0; i < n && i < SVC_METRICS_SERIES_MAX; i++) {
		const struct svc_metrics_series *s = &src->series[i];
		if (s->metric >= SVC_M_COUNT ||
		    svc_metrics_defs[s->metric].type == SVC_METRIC_GAUGE)
			continue;
		long off = dst_series(dst, s->metric, s->labels);
		if (off < 0)
			continue;
		size_t nv = n_values((enum svc_metric_id)s->metric);
		for (size_t k = 0; k < nv; k++)
			atomic_fetch_add_explicit(
			    &dst->v[off + (long)k],
			    atomic_load_explicit(&src->v[s->off + k], memory_order_relaxed),
			    memory_order_relaxed);
	}
}

/* The series of metric labelled node=<node>, kept in *cur (its node in cur_node): when node
 * differs from cur_node, the old series is set to 0 and the new one taken. */
static void node_gauge(svc_metric *cur, char *cur_node, size_t cur_node_sz,
                       enum svc_metric_id metric, const char *node)
{
	char labels[SVC_METRICS_LABELS_MAX];

	if (!svc_metrics_self || !node || !node[0] || (*cur && strcmp(cur_node, node) == 0))
		return;
	svc_metric_set(*cur, 0);
	svc_metrics_labels(labels, sizeof(labels), "node", node, (const char *)NULL);
	*cur = svc_metrics_series(metric, labels);
	snprintf(cur_node, cur_node_sz, "%s", node);
}

void svc_metrics_conn_init(struct svc_metrics_conn *mc, const char *first_node, bool pg)
{
	node_gauge(&mc->amqp_up, mc->amqp_node, sizeof(mc->amqp_node), SVC_M_AMQP_CONNECTED,
	           first_node);
	mc->amqp_reconnects = svc_metrics_series(SVC_M_AMQP_RECONNECTS, "");
	if (pg) {
		mc->pg_up = svc_metrics_series(SVC_M_PG_CONNECTED, "");
		mc->pg_reconnects = svc_metrics_series(SVC_M_PG_RECONNECTS, "");
	}
}

void svc_metrics_conn_amqp(struct svc_metrics_conn *mc, bool up, const char *node)
{
	if (up)
		node_gauge(&mc->amqp_up, mc->amqp_node, sizeof(mc->amqp_node), SVC_M_AMQP_CONNECTED,
		           node);
	svc_metric_set(mc->amqp_up, up);
}
