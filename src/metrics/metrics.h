/* metrics: the Prometheus metrics of runconsumer and runpublisher, their text exposition
 * (format 0.0.4) and the process state /healthz and /readyz report (http.c serves them).
 *
 * Storage: a struct svc_metrics_region holds the series (metric + label set, created by the
 * one thread that owns the region) and their values as relaxed C11 atomics, so the hot path is
 * one atomic add and the HTTP thread reads without a lock. A region has no pointers: with
 * --workers the supervisor maps one region per worker slot (MAP_SHARED, before fork) and
 * serves the sum of them all (svc_metrics_render over several regions).
 *
 * Values: a counter is a uint64 count; a gauge the bits of a double (set, not added); a
 * histogram one count per bucket (not cumulative, +Inf last) then the sum of the observed
 * values in units of 1e-9. The metric catalogue (names, help, buckets) is svc_metrics_defs[]. */
#ifndef SVC_METRICS_H
#define SVC_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum svc_metric_type { SVC_METRIC_COUNTER, SVC_METRIC_GAUGE, SVC_METRIC_HISTOGRAM };

/* Every metric svccomm exposes (README "Metrics" lists them with the same help text). */
enum svc_metric_id {
	SVC_M_PROCESS_START,
	SVC_M_BUILD_INFO,
	SVC_M_LUA_MEMORY,
	SVC_M_AMQP_CONNECTED,
	SVC_M_AMQP_RECONNECTS,
	SVC_M_PG_CONNECTED,
	SVC_M_PG_RECONNECTS,
	SVC_M_CONSUMER_RECEIVED,
	SVC_M_CONSUMER_MESSAGES,
	SVC_M_CONSUMER_FAILURES,
	SVC_M_CONSUMER_DEAD_LETTERS,
	SVC_M_CONSUMER_HANDLER_SECONDS,
	SVC_M_CONSUMER_BATCH_SIZE,
	SVC_M_CONSUMER_COMMIT_SECONDS,
	SVC_M_CONSUMER_IN_FLIGHT,
	SVC_M_CONSUMER_CONSUMING,
	SVC_M_RELAY_EVENTS,
	SVC_M_RELAY_PARKED,
	SVC_M_RELAY_BACKLOG,
	SVC_M_RELAY_OLDEST_DUE,
	SVC_M_RELAY_CLAIM_SECONDS,
	SVC_M_RELAY_CONFIRM_SECONDS,
	SVC_M_RELAY_PARTITIONS,
	SVC_M_COUNT
};

#define SVC_METRICS_MAX_BOUNDS 16

struct svc_metric_def {
	const char *name;
	enum svc_metric_type type;
	const char *help;
	size_t n_bounds; /* histogram: upper bounds of the finite buckets, ascending */
	double bounds[SVC_METRICS_MAX_BOUNDS];
};

extern const struct svc_metric_def svc_metrics_defs[SVC_M_COUNT];

#define SVC_METRICS_SERIES_MAX 256 /* label sets per region (per process or worker) */
#define SVC_METRICS_SPARE      16  /* of them kept for the "_overflow" sets */
#define SVC_METRICS_VALUES_MAX 4096
#define SVC_METRICS_LABELS_MAX 200 /* bytes of a rendered label set: a="x",b="y" */

/* Ready bits (svc_metrics_region.ready). */
#define SVC_READY_AMQP      1u /* connected to RabbitMQ */
#define SVC_READY_PG        2u /* connected to PostgreSQL (or none configured) */
#define SVC_READY_CONSUMING 4u /* consumer: basic.consume active (the relay sets it too) */
#define SVC_READY_ALL       (SVC_READY_AMQP | SVC_READY_PG | SVC_READY_CONSUMING)

struct svc_metrics_series {
	uint16_t metric;
	uint16_t off; /* first value in region.v */
	char labels[SVC_METRICS_LABELS_MAX];
};

struct svc_metrics_region {
	_Atomic uint32_t n_series; /* published series: the owner stores with release */
	_Atomic uint32_t n_values;
	_Atomic uint64_t heartbeat_ms; /* svc_clock_mono() of the last loop turn, in ms; 0: none */
	_Atomic uint32_t ready;        /* SVC_READY_* bits */
	_Atomic uint32_t in_use;       /* a live process writes this region */
	struct svc_metrics_series series[SVC_METRICS_SERIES_MAX];
	_Atomic uint64_t v[SVC_METRICS_VALUES_MAX];
};

/* A series' first value (NULL: none, every update is a no-op). */
typedef _Atomic uint64_t *svc_metric;

/* The region this process writes (NULL until svc_metrics_use): the loops' metrics go here. */
extern struct svc_metrics_region *svc_metrics_self;

/* Makes r (zeroed) the region this process writes. */
void svc_metrics_use(struct svc_metrics_region *r);

/* Renders label pairs (name, value, ..., NULL) as a label set into out: values escaped as the
 * format says (\\, \", \n), cut to fit. */
void svc_metrics_labels(char *out, size_t outsz, ...);

/* The series of metric with labels (a rendered set, "" for none) in svc_metrics_self, created
 * on first use with zero values; a full region gives the metric's "_overflow" set. NULL without
 * a region. Call from the region's owner thread only; keep the handle. */
svc_metric svc_metrics_series(enum svc_metric_id metric, const char *labels);

static inline void svc_metric_add(svc_metric m, uint64_t n)
{
	if (m)
		atomic_fetch_add_explicit(m, n, memory_order_relaxed);
}

static inline void svc_metric_inc(svc_metric m)
{
	svc_metric_add(m, 1);
}

static inline void svc_metric_set(svc_metric m, double d)
{
	uint64_t bits;
	memcpy(&bits, &d, sizeof(bits));
	if (m)
		atomic_store_explicit(m, bits, memory_order_relaxed);
}

/* The connection gauges and counters every process has: connected to RabbitMQ (labelled with
 * the node in use) and to PostgreSQL, and the reconnects of each. */
struct svc_metrics_conn {
	svc_metric amqp_up, amqp_reconnects, pg_up, pg_reconnects;
	char amqp_node[300]; /* the node label of amqp_up */
};

/* Makes the series of mc: amqp_up labelled with first_node (the node tried first, until a
 * connection says which one is in use), the PostgreSQL ones only when pg. */
void svc_metrics_conn_init(struct svc_metrics_conn *mc, const char *first_node, bool pg);
/* The broker connection is up (on node "host:port") or down. */
void svc_metrics_conn_amqp(struct svc_metrics_conn *mc, bool up, const char *node);

/* Adds an observation to histogram series m of metric (negative values count as 0). */
void svc_metric_observe(svc_metric m, enum svc_metric_id metric, double value);

/* Records that the owner's loop turned now (for /healthz). */
void svc_metrics_heartbeat(void);
/* Sets the ready bits of svc_metrics_self (for /readyz). */
void svc_metrics_set_ready(uint32_t bits);

/* Sets process_start_time_seconds and svccomm_build_info in svc_metrics_self: once, by the
 * process that serves the metrics. */
void svc_metrics_process_info(void);

/* Adds the values of src (a dead worker's) to those of dst (the retired counts), counters and
 * histograms only: gauges belong to live processes. The caller keeps both regions still. */
void svc_metrics_fold(struct svc_metrics_region *dst, const struct svc_metrics_region *src);

/* Renders the sum of regions[0..n) in the text format into a malloc'd, NUL-terminated buffer
 * (*len bytes); NULL when out of memory. */
char *svc_metrics_render(struct svc_metrics_region *const *regions, size_t n, size_t *len);

/* Probe answers over regions in use: healthy when each turned its loop in the last bound_s
 * seconds; ready when each has all SVC_READY_ALL bits. why says which is not. */
bool svc_metrics_healthy(struct svc_metrics_region *const *regions, size_t n, double bound_s,
                         char *why, size_t whysz);
bool svc_metrics_ready(struct svc_metrics_region *const *regions, size_t n, char *why,
                       size_t whysz);

#endif
