/* render: the text exposition format 0.0.4 of the sum of one or more regions, and the probe
 * answers (see metrics.h). Runs on the HTTP thread: reads the regions without a lock. */
#include "metrics/metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "util/clock.h"
#include "util/numfmt.h"

#define SNAP_SERIES (SVC_METRICS_SERIES_MAX * 4)
#define SNAP_VALUES (SVC_METRICS_VALUES_MAX * 4)

/* The merged view: gauges as doubles, counts as doubles too (exact up to 2^53). */
struct snap {
	size_t n, nv;
	struct {
		uint16_t metric;
		const char *labels; /* points into a region: fixed once published */
		size_t off;
	} s[SNAP_SERIES];
	double v[SNAP_VALUES];
};

struct out {
	char *buf;
	size_t len, cap;
	bool oom;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct out *o, const char *fmt, ...)
{
	va_list ap;
	for (;;) {
		if (o->oom)
			return;
		va_start(ap, fmt);
		int w = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
		va_end(ap);
		if (w < 0) {
			o->oom = true;
			return;
		}
		if ((size_t)w < o->cap - o->len) {
			o->len += (size_t)w;
			return;
		}
		size_t cap = (o->cap + (size_t)w + 1) * 2 + 4096;
		char *nb = realloc(o->buf, cap);
		if (!nb) {
			o->oom = true;
			return;
		}
		o->buf = nb;
		o->cap = cap;
	}
}

static double gauge_value(uint64_t bits)
{
	double d;
	memcpy(&d, &bits, sizeof(d));
	return d;
}

static size_t values_of(uint16_t metric)
{
	const struct svc_metric_def *d = &svc_metrics_defs[metric];
	return d->type == SVC_METRIC_HISTOGRAM ? d->n_bounds + 2 : 1;
}

static void merge(struct snap *sn, const struct svc_metrics_region *r)
{
	uint32_t n = atomic_load_explicit(&r->n_series, memory_order_acquire);
	for (uint32_t i = 0; i < n && i < SVC_METRICS_SERIES_MAX; i++) {
		const struct svc_metrics_series *s = &r->series[i];
		if (s->metric >= SVC_M_COUNT)
			continue;
		size_t nv = values_of(s->metric), j;
		for (j = 0; j < sn->n; j++)
			if (sn->s[j].metric == s->metric && strcmp(sn->s[j].labels, s->labels) == 0)
				break;
		if (j == sn->n) {
			if (sn->n == SNAP_SERIES || sn->nv + nv > SNAP_VALUES)
				continue;
			sn->s[j].metric = s->metric;
			sn->s[j].labels = s->labels;
			sn->s[j].off = sn->nv;
			memset(&sn->v[sn->nv], 0, nv * sizeof(double));
			sn->nv += nv;
			sn->n++;
		}
		for (size_t k = 0; k < nv; k++) {
			uint64_t raw =
			    atomic_load_explicit(&r->v[s->off + k], memory_order_relaxed);
			if (svc_metrics_defs[s->metric].type == SVC_METRIC_GAUGE)
				sn->v[sn->s[j].off + k] += gauge_value(raw);
			else
				sn->v[sn->s[j].off + k] += (double)raw;
		}
	}
}

/* A sample value: integers without a fraction, else the shortest round-trip text. */
static const char *num(double d, char *buf, size_t sz)
{
	if (d != d)
		return "NaN";
	if (d == (double)(long long)d && d < 9e15 && d > -9e15)
		snprintf(buf, sz, "%lld", (long long)d);
	else if (svc_numfmt_double(buf, sz, d) < 0)
		snprintf(buf, sz, "%s", d > 0 ? "+Inf" : "-Inf");
	return buf;
}

static void histogram(struct out *o, const struct svc_metric_def *d, const char *labels,
                      const double *v)
{
	char nb[SVC_NUMFMT_MAX], le[SVC_NUMFMT_MAX];
	const char *sep = labels[0] ? "," : "";
	double cum = 0;
	for (size_t b = 0; b <= d->n_bounds; b++) {
		cum += v[b];
		put(o, "%s_bucket{%s%sle=\"%s\"} %s\n", d->name, labels, sep,
		    b < d->n_bounds ? num(d->bounds[b], le, sizeof(le)) : "+Inf",
		    num(cum, nb, sizeof(nb)));
	}
	const char *open = labels[0] ? "{" : "", *close = labels[0] ? "}" : "";
	put(o, "%s_sum%s%s%s %s\n", d->name, open, labels, close,
	    num(v[d->n_bounds + 1] / 1e9, nb, sizeof(nb)));
	put(o, "%s_count%s%s%s %s\n", d->name, open, labels, close, num(cum, nb, sizeof(nb)));
}

char *svc_metrics_render(struct svc_metrics_region *const *regions, size_t n, size_t *len)
{
	struct snap *sn = calloc(1, sizeof(*sn));
	struct out o = {0};
	char nb[SVC_NUMFMT_MAX];

	if (!sn)
		return NULL;
	for (size_t i = 0; i < n; i++)
		if (regions[i])
			merge(sn, regions[i]);
	put(&o, "%s", ""); /* a buffer even when no series exists */
	for (int m = 0; m < SVC_M_COUNT; m++) {
		const struct svc_metric_def *d = &svc_metrics_defs[m];
		bool head = false;
		for (size_t j = 0; j < sn->n; j++) {
			if (sn->s[j].metric != m)
				continue;
			if (!head) {
				static const char *const types[] = {"counter", "gauge",
				                                    "histogram"};
				put(&o, "# HELP %s %s\n# TYPE %s %s\n", d->name, d->help, d->name,
				    types[d->type]);
				head = true;
			}
			const char *labels = sn->s[j].labels;
			const double *v = &sn->v[sn->s[j].off];
			if (d->type == SVC_METRIC_HISTOGRAM)
				histogram(&o, d, labels, v);
			else if (labels[0])
				put(&o, "%s{%s} %s\n", d->name, labels, num(v[0], nb, sizeof(nb)));
			else
				put(&o, "%s %s\n", d->name, num(v[0], nb, sizeof(nb)));
		}
	}
	free(sn);
	if (o.oom) {
		free(o.buf);
		return NULL;
	}
	*len = o.len;
	return o.buf;
}

bool svc_metrics_healthy(struct svc_metrics_region *const *regions, size_t n, double bound_s,
                         char *why, size_t whysz)
{
	double now_ms = svc_clock_mono() * 1000.0;
	for (size_t i = 0; i < n; i++) {
		const struct svc_metrics_region *r = regions[i];
		if (!r || !atomic_load(&r->in_use))
			continue;
		uint64_t hb = atomic_load_explicit(&r->heartbeat_ms, memory_order_relaxed);
		if (hb && now_ms - (double)hb > bound_s * 1000.0) {
			snprintf(why, whysz, "%s%zu: main loop stuck for %.0f s (bound %.0f s)\n",
			         n > 1 ? "worker " : "process ", n > 1 ? i : 0,
			         (now_ms - (double)hb) / 1000.0, bound_s);
			return false;
		}
	}
	snprintf(why, whysz, "ok\n");
	return true;
}

bool svc_metrics_ready(struct svc_metrics_region *const *regions, size_t n, char *why, size_t whysz)
{
	size_t live = 0;
	for (size_t i = 0; i < n; i++) {
		const struct svc_metrics_region *r = regions[i];
		if (!r || !atomic_load(&r->in_use))
			continue;
		live++;
		uint32_t bits = atomic_load_explicit(&r->ready, memory_order_relaxed);
		if ((bits & SVC_READY_ALL) != SVC_READY_ALL) {
			snprintf(why, whysz, "not ready%s%s%s%s\n", n > 1 ? " (a worker)" : "",
			         bits & SVC_READY_AMQP ? "" : ": RabbitMQ not connected",
			         bits & SVC_READY_PG ? "" : ": PostgreSQL not connected",
			         bits & SVC_READY_CONSUMING ? "" : ": not consuming");
			return false;
		}
	}
	if (!live) {
		snprintf(why, whysz, "not ready: no worker running\n");
		return false;
	}
	snprintf(why, whysz, "ok\n");
	return true;
}
