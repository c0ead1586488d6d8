/* Unit tests for metrics/: series, updates, label escaping, the text exposition of one and of
 * several regions, folding a dead worker's counts, and the probe answers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics/metrics.h"
#include "util/clock.h"

static struct svc_metrics_region *fresh(void)
{
	struct svc_metrics_region *r = calloc(1, sizeof(*r));
	assert_non_null(r);
	svc_metrics_use(r);
	return r;
}

static char *render1(struct svc_metrics_region *r)
{
	size_t len = 0;
	char *text = svc_metrics_render(&r, 1, &len);
	assert_non_null(text);
	assert_int_equal(strlen(text), len);
	return text;
}

static void counters_and_gauges_render_with_help_and_type(void **state)
{
	(void)state;
	struct svc_metrics_region *r = fresh();
	char labels[SVC_METRICS_LABELS_MAX];

	svc_metrics_labels(labels, sizeof(labels), "queue", "orders", "outcome", "ok",
	                   (const char *)NULL);
	svc_metric ok = svc_metrics_series(SVC_M_CONSUMER_MESSAGES, labels);
	assert_ptr_equal(ok, svc_metrics_series(SVC_M_CONSUMER_MESSAGES, labels)); /* found again */
	for (int i = 0; i < 100; i++)
		svc_metric_inc(ok);
	svc_metric_add(ok, 5);
	svc_metric_set(svc_metrics_series(SVC_M_RELAY_OLDEST_DUE, ""), 2.5);
	char *text = render1(r);
	assert_non_null(strstr(text, "# TYPE svccomm_consumer_messages_total counter\n"));
	assert_non_null(strstr(text, "# HELP svccomm_consumer_messages_total "));
	assert_non_null(
	    strstr(text, "svccomm_consumer_messages_total{queue=\"orders\",outcome=\"ok\"} 105\n"));
	assert_non_null(strstr(text, "# TYPE svccomm_relay_oldest_due_age_seconds gauge\n"));
	assert_non_null(strstr(text, "\nsvccomm_relay_oldest_due_age_seconds 2.5\n"));
	/* metrics without a series are not shown */
	assert_null(strstr(text, "svccomm_relay_backlog_rows"));
	free(text);
	svc_metrics_use(NULL);
	free(r);
}

static void histogram_buckets_are_cumulative_with_sum_and_count(void **state)
{
	(void)state;
	struct svc_metrics_region *r = fresh();
	svc_metric h = svc_metrics_series(SVC_M_CONSUMER_BATCH_SIZE, "queue=\"q\"");
	svc_metric_observe(h, SVC_M_CONSUMER_BATCH_SIZE, 1);    /* le 1 */
	svc_metric_observe(h, SVC_M_CONSUMER_BATCH_SIZE, 3);    /* le 5 */
	svc_metric_observe(h, SVC_M_CONSUMER_BATCH_SIZE, 5000); /* +Inf only */
	char *text = render1(r);
	assert_non_null(strstr(text, "# TYPE svccomm_consumer_batch_size_messages histogram\n"));
	assert_non_null(
	    strstr(text, "svccomm_consumer_batch_size_messages_bucket{queue=\"q\",le=\"1\"} 1\n"));
	assert_non_null(
	    strstr(text, "svccomm_consumer_batch_size_messages_bucket{queue=\"q\",le=\"2\"} 1\n"));
	assert_non_null(
	    strstr(text, "svccomm_consumer_batch_size_messages_bucket{queue=\"q\",le=\"5\"} 2\n"));
	assert_non_null(strstr(
	    text, "svccomm_consumer_batch_size_messages_bucket{queue=\"q\",le=\"1000\"} 2\n"));
	assert_non_null(strstr(
	    text, "svccomm_consumer_batch_size_messages_bucket{queue=\"q\",le=\"+Inf\"} 3\n"));
	assert_non_null(
	    strstr(text, "svccomm_consumer_batch_size_messages_sum{queue=\"q\"} 5004\n"));
	assert_non_null(
	    strstr(text, "svccomm_consumer_batch_size_messages_count{queue=\"q\"} 3\n"));
	free(text);

	/* seconds: fractions, and a histogram without labels */
	svc_metric c = svc_metrics_series(SVC_M_RELAY_CLAIM_SECONDS, "");
	svc_metric_observe(c, SVC_M_RELAY_CLAIM_SECONDS, 0.002);
	svc_metric_observe(c, SVC_M_RELAY_CLAIM_SECONDS, -1); /* clock step: counts as 0 */
	text = render1(r);
	assert_non_null(
	    strstr(text, "svccomm_relay_claim_duration_seconds_bucket{le=\"0.0005\"} 1\n"));
	assert_non_null(
	    strstr(text, "svccomm_relay_claim_duration_seconds_bucket{le=\"0.0025\"} 2\n"));
	assert_non_null(strstr(text, "svccomm_relay_claim_duration_seconds_sum 0.002\n"));
	assert_non_null(strstr(text, "svccomm_relay_claim_duration_seconds_count 2\n"));
	free(text);
	svc_metrics_use(NULL);
	free(r);
}

static void label_values_are_escaped_and_cut_whole(void **state)
{
	(void)state;
	char labels[SVC_METRICS_LABELS_MAX], small[24];
	svc_metrics_labels(labels, sizeof(labels), "exchange", "a\"b\\c\nd", (const char *)NULL);
	assert_string_equal(labels, "exchange=\"a\\\"b\\\\c\\nd\"");
	/* too long for the buffer: the set stays parseable */
	svc_metrics_labels(small, sizeof(small), "queue", "q", "reason", "a-very-long-reason-token",
	                   (const char *)NULL);
	assert_string_equal(small, "queue=\"q\"");
}

static void without_a_region_updates_are_no_ops(void **state)
{
	(void)state;
	svc_metrics_use(NULL);
	svc_metric m = svc_metrics_series(SVC_M_CONSUMER_RECEIVED, "");
	assert_null(m);
	svc_metric_inc(m);
	svc_metric_set(m, 1);
	svc_metric_observe(m, SVC_M_CONSUMER_HANDLER_SECONDS, 1);
	svc_metrics_heartbeat();
}

static void a_full_region_counts_under_overflow(void **state)
{
	(void)state;
	struct svc_metrics_region *r = fresh();
	char labels[SVC_METRICS_LABELS_MAX], name[32];
	svc_metric last = NULL;
	for (int i = 0; i < SVC_METRICS_SERIES_MAX; i++) {
		snprintf(name, sizeof(name), "ex%d", i);
		svc_metrics_labels(labels, sizeof(labels), "exchange", name, (const char *)NULL);
		last = svc_metrics_series(SVC_M_RELAY_PARKED, labels);
		assert_non_null(last);
		svc_metric_inc(last);
	}
	char *text = render1(r);
	assert_non_null(strstr(text, "svccomm_relay_parked_total{overflow=\"true\"} 16\n"));
	free(text);
	svc_metrics_use(NULL);
	free(r);
}

static void several_regions_are_summed_and_a_dead_one_folded(void **state)
{
	(void)state;
	struct svc_metrics_region *w[3];
	for (int i = 0; i < 3; i++)
		w[i] = calloc(1, sizeof(*w[i]));
	/* worker 1 and 2 count into their own regions */
	for (int i = 1; i < 3; i++) {
		svc_metrics_use(w[i]);
		svc_metric_add(svc_metrics_series(SVC_M_CONSUMER_RECEIVED, "queue=\"q\""),
		               (uint64_t)(10 * i));
		svc_metric_set(svc_metrics_series(SVC_M_CONSUMER_IN_FLIGHT, "queue=\"q\""), 2);
		svc_metric_observe(svc_metrics_series(SVC_M_CONSUMER_BATCH_SIZE, "queue=\"q\""),
		                   SVC_M_CONSUMER_BATCH_SIZE, 4);
	}
	/* worker 2 only: a reason worker 1 never saw */
	svc_metric_inc(svc_metrics_series(SVC_M_CONSUMER_DEAD_LETTERS, "reason=\"x\""));
	size_t len;
	char *text = svc_metrics_render(w, 3, &len);
	assert_non_null(strstr(text, "svccomm_consumer_received_total{queue=\"q\"} 30\n"));
	assert_non_null(strstr(text, "svccomm_consumer_in_flight_messages{queue=\"q\"} 4\n"));
	assert_non_null(
	    strstr(text, "svccomm_consumer_batch_size_messages_count{queue=\"q\"} 2\n"));
	assert_non_null(strstr(text, "svccomm_consumer_dead_letters_total{reason=\"x\"} 1\n"));
	free(text);

	/* worker 2 dies: its counts go to the retired region w[0], its slot starts from zero */
	svc_metrics_fold(w[0], w[2]);
	memset(w[2], 0, sizeof(*w[2]));
	text = svc_metrics_render(w, 3, &len);
	assert_non_null(strstr(text, "svccomm_consumer_received_total{queue=\"q\"} 30\n"));
	assert_non_null(strstr(text, "svccomm_consumer_dead_letters_total{reason=\"x\"} 1\n"));
	/* gauges are the live processes' only */
	assert_non_null(strstr(text, "svccomm_consumer_in_flight_messages{queue=\"q\"} 2\n"));
	free(text);
	svc_metrics_use(NULL);
	for (int i = 0; i < 3; i++)
		free(w[i]);
}

static void probes_follow_heartbeat_and_ready_bits(void **state)
{
	(void)state;
	char why[256];
	struct svc_metrics_region *r = fresh();
	assert_false(svc_metrics_ready(&r, 1, why, sizeof(why)));
	svc_metrics_set_ready(SVC_READY_AMQP | SVC_READY_CONSUMING);
	assert_false(svc_metrics_ready(&r, 1, why, sizeof(why)));
	assert_non_null(strstr(why, "PostgreSQL not connected"));
	svc_metrics_set_ready(SVC_READY_ALL);
	assert_true(svc_metrics_ready(&r, 1, why, sizeof(why)));

	svc_metrics_heartbeat();
	assert_true(svc_metrics_healthy(&r, 1, 60, why, sizeof(why)));
	/* a loop that last turned 100 s ago */
	atomic_store(&r->heartbeat_ms, (uint64_t)((svc_clock_mono() - 100) * 1000.0));
	assert_false(svc_metrics_healthy(&r, 1, 60, why, sizeof(why)));
	assert_non_null(strstr(why, "stuck"));
	svc_metrics_use(NULL);
	free(r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(counters_and_gauges_render_with_help_and_type),
	    cmocka_unit_test(histogram_buckets_are_cumulative_with_sum_and_count),
	    cmocka_unit_test(label_values_are_escaped_and_cut_whole),
	    cmocka_unit_test(without_a_region_updates_are_no_ops),
	    cmocka_unit_test(a_full_region_counts_under_overflow),
	    cmocka_unit_test(several_regions_are_summed_and_a_dead_one_folded),
	    cmocka_unit_test(probes_follow_heartbeat_and_ready_bits),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
