/* settle: what happens to rows once the broker decided their fate, and to rows that could not
 * be published at all. Confirmed rows are deleted in batches (just before the next claim, or
 * at once when no claim is coming soon); nacked rows, and returned ones under PUBLISHER_UNROUTABLE
 * = "keep", are rescheduled with a backoff; rows that can never be sent are parked. A channel
 * closed by the broker with several messages in flight starts the isolation mode that finds
 * the culprit (claim.c publishes one row at a time up to r->isolate_upto). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "relay/internal.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/log.h"

void relay_flush_lists(struct relay *r)
{
	int rc = 0;

	if (!r->db_up) {
		r->n_defer = r->n_park = 0;
		return;
	}
	if (r->n_defer) {
		rc = svc_relay_reschedule(&r->pg, &r->q, r->defer_ids, r->n_defer,
		                          r->cfg->reconnect_max_delay, r->defer_reason);
		if (rc == 0)
			r->deferred += r->n_defer;
		r->n_defer = 0;
	}
	if (rc == 0 && r->n_park) {
		rc = svc_relay_park(&r->pg, &r->q, r->park_ids, r->n_park, r->park_reason);
		if (rc == 0) {
			r->parked += r->n_park;
			svc_metric_add(r->m.parked, r->n_park);
		}
		r->n_park = 0;
	}
	if (rc == SVC_ECONN)
		relay_db_lost(r, "updating rows");
	else if (rc)
		svc_error(COMP, "updating rows: %s", svc_pg_error(&r->pg));
	else
		r->db_last_ok = svc_clock_mono();
}

void relay_defer_row(struct relay *r, int64_t id, const char *reason)
{
	if (r->n_defer && strcmp(r->defer_reason, reason) != 0)
		relay_flush_lists(r);
	snprintf(r->defer_reason, sizeof(r->defer_reason), "%.*s", (int)sizeof(r->defer_reason) - 1,
	         reason);
	r->defer_ids[r->n_defer++] = id;
	if (r->n_defer == r->fl.cap)
		relay_flush_lists(r);
}

void relay_park_row(struct relay *r, int64_t id, const char *reason)
{
	char event_id[24];

	snprintf(event_id, sizeof(event_id), "%" PRId64, id);
	const struct svc_log_field fields[] = {SVC_LOG_NUM("event_id", event_id),
	                                       SVC_LOG_STR("error", reason)};
	svc_log_kv(SVC_LOG_ERROR, COMP, fields, 2,
	           "outbox row %" PRId64 " can never be sent and is parked: %s", id, reason);
	if (r->n_park && strcmp(r->park_reason, reason) != 0)
		relay_flush_lists(r);
	snprintf(r->park_reason, sizeof(r->park_reason), "%s", reason);
	r->park_ids[r->n_park++] = id;
	if (r->n_park == r->fl.cap)
		relay_flush_lists(r);
}

/* Runs before every claim, and when no claim is coming soon (caught up, no partitions,
 * shutdown, a partition to hand over, a full list). A failure keeps them for a later attempt: they
 * are confirmed, deleting them late is correct. */
void relay_flush_deletes(struct relay *r)
{
	int rc;

	if (r->n_del == 0 || !r->db_up)
		return;
	rc = svc_relay_delete(&r->pg, &r->q, r->del_ids, r->n_del);
	if (rc == SVC_ECONN) {
		relay_db_lost(r, "deleting confirmed rows");
	} else if (rc) {
		svc_error(COMP, "deleting confirmed rows: %s", svc_pg_error(&r->pg));
	} else {
		r->n_del = 0;
		r->db_last_ok = svc_clock_mono();
	}
}

/* Returned (unroutable) rows: with "drop" they join the acked ones and are deleted; with "keep"
 * they are rescheduled. Returns 0 or the SVC_E* of the reschedule. */
static int settle_returned(struct relay *r, struct svc_flight_out *o)
{
	if (o->n_returned == 0)
		return 0;
	if (strcmp(r->cfg->publisher_unroutable, "keep") != 0) {
		svc_debug(COMP,
		          "%zu unroutable message(s) dropped (no queue bound), first row "
		          "%" PRId64,
		          o->n_returned, o->returned[0]);
		memcpy(o->acked + o->n_acked, o->returned, o->n_returned * sizeof(int64_t));
		o->n_acked += o->n_returned;
		return 0;
	}
	svc_warn(COMP,
	         "%zu unroutable message(s) kept for a retry, first row "
	         "%" PRId64,
	         o->n_returned, o->returned[0]);
	return svc_relay_reschedule(&r->pg, &r->q, o->returned, o->n_returned,
	                            r->cfg->reconnect_max_delay,
	                            "unroutable: returned by the broker (NO_ROUTE)");
}

/* Refused (nacked) rows are rescheduled. Returns 0 or the SVC_E* of the reschedule. */
static int settle_nacked(struct relay *r, struct svc_flight_out *o)
{
	if (o->n_nacked == 0)
		return 0;
	svc_warn(COMP, "%zu message(s) refused by the broker (nack), first row %" PRId64,
	         o->n_nacked, o->nacked[0]);
	return svc_relay_reschedule(&r->pg, &r->q, o->nacked, o->n_nacked,
	                            r->cfg->reconnect_max_delay, "refused by the broker (nack)");
}

/* Confirmed rows are deleted just before the next claim; makes room if needed. */
static void queue_deletes(struct relay *r, const struct svc_flight_out *o)
{
	if (r->n_del + o->n_acked > r->del_cap)
		relay_flush_deletes(r);
	if (r->n_del + o->n_acked > r->del_cap)
		return; /* could not delete: these rows are published again later */
	if (r->n_del == 0 && o->n_acked)
		r->del_since = svc_clock_mono();
	memcpy(r->del_ids + r->n_del, o->acked, o->n_acked * sizeof(int64_t));
	r->n_del += o->n_acked;
}

/* Reschedules the rows the broker refused or returned (with "keep") at once, and queues the
 * confirmed ones for deletion. */
static void settle(struct relay *r)
{
	struct svc_flight_out *o = &r->fl.out;
	int rc;

	if (svc_flight_harvest(&r->fl) == 0)
		return;
	svc_debug(COMP, "settled %zu acked, %zu returned, %zu nacked; in flight %zu", o->n_acked,
	          o->n_returned, o->n_nacked, r->fl.count);
	if (SVC_LOG_DEBUG >= svc_log_threshold && o->n_acked)
		relay_trace_confirmed(o->acked, o->n_acked);
	r->confirmed += o->n_acked;
	r->returned += o->n_returned;
	r->nacked += o->n_nacked;
	if (!r->db_up)
		return;
	rc = settle_returned(r, o);
	if (rc == 0)
		rc = settle_nacked(r, o);
	if (rc == SVC_ECONN) {
		relay_db_lost(r, "rescheduling rows");
		return;
	}
	if (rc)
		svc_error(COMP, "rescheduling rows: %s", svc_pg_error(&r->pg));
	else if (o->n_returned || o->n_nacked)
		r->db_last_ok = svc_clock_mono();
	queue_deletes(r, o);
}

/* The row id in a message_id the relay made ("<APP_ID>:<row id>"), or 0. */
static int64_t own_message_row(const struct relay *r, const char *mid)
{
	size_t n = strlen(r->cfg->app_id);
	char *end;
	long long id;

	if (!mid || strncmp(mid, r->cfg->app_id, n) != 0 || mid[n] != ':' || mid[n + 1] < '1' ||
	    mid[n + 1] > '9')
		return 0;
	errno = 0;
	id = strtoll(mid + n + 1, &end, 10);
	return *end || errno ? 0 : (int64_t)id;
}

/* A message is told by its x-svccomm-seq header, or, when it was published without one (the
 * row had no message_id of its own), by the row id in its message_id. */
static void on_return(void *ctx, const struct svc_amqp_return *ret)
{
	struct relay *r = ctx;
	bool drop = strcmp(r->cfg->publisher_unroutable, "keep") != 0;
	int64_t own = ret->seq ? 0 : own_message_row(r, ret->message_id);
	int64_t id = own ? svc_flight_return_id(&r->fl, own) : svc_flight_return(&r->fl, ret->seq);
	enum svc_log_level level = drop ? SVC_LOG_WARNING : SVC_LOG_DEBUG;
	char event_id[24];

	if (level < svc_log_threshold)
		return;
	snprintf(event_id, sizeof(event_id), "%" PRId64, id);
	/* every event the relay drops is named: the application committed it */
	const struct svc_log_field fields[] = {
	    SVC_LOG_NUM("event_id", event_id),
	    SVC_LOG_STR("exchange", ret->exchange),
	    SVC_LOG_STR("routing_key", ret->routing_key),
	    SVC_LOG_STR("error", ret->text),
	};
	if (drop)
		svc_log_kv(level, COMP, fields, 4,
		           "unroutable event dropped (PUBLISHER_UNROUTABLE = \"drop\"): %s, outbox "
		           "row %" PRId64,
		           ret->text, id);
	else
		svc_log_kv(level, COMP, fields, 4,
		           "event %" PRId64 " returned, kept for a retry: %s", id, ret->text);
}

/* The broker closed the channel (amqp/conn reopened it, sequence numbers restart). */
static void channel_error(struct relay *r)
{
	int code = svc_amqp_reply_code(r->mq);
	int64_t last = 0;
	size_t pending = svc_flight_pending(&r->fl, &last);
	char reason[300];

	snprintf(reason, sizeof(reason), "%s", svc_amqp_error(r->mq));
	if (pending == 1 && r->isolate_upto > 0) {
		if (code == 404)
			relay_defer_row(r, last, reason); /* the exchange may appear */
		else
			relay_park_row(r, last, reason);
		svc_error(COMP, "outbox row %" PRId64 ": %s", last, reason);
	} else if (pending > 0) {
		int64_t upto = svc_flight_max_pending_id(&r->fl);

		if (upto > r->isolate_upto)
			r->isolate_upto = upto;
		svc_warn(COMP,
		         "%s; %zu message(s) unconfirmed: publishing rows up to %" PRId64
		         " one at a time to find the culprit",
		         reason, pending, r->isolate_upto);
	} else {
		svc_warn(COMP, "%s", reason);
	}
	svc_flight_clear(&r->fl);
	relay_ex_forget_known(r);
	relay_flush_lists(r);
	if (!svc_amqp_is_open(r->mq))
		relay_mq_lost(r, "reopening the channel");
}

void relay_handle_confirms(struct relay *r, int timeout_ms)
{
	for (int round = 0; r->mq_up; round++) {
		size_t n = 0;
		int rc = svc_amqp_poll_confirms(r->mq, round == 0 ? timeout_ms : 0, r->conf,
		                                N_CONFIRMS, &n, on_return, r);

		for (size_t i = 0; i < n; i++)
			svc_flight_confirm(&r->fl, r->conf[i].delivery_tag, r->conf[i].multiple,
			                   r->conf[i].ack);
		if (n)
			settle(r);
		if (rc == SVC_EPROTO) {
			channel_error(r);
			return;
		}
		if (rc == SVC_ECONN) {
			relay_mq_lost(r, "reading confirms");
			return;
		}
		if (rc == SVC_ETIMEOUT || n < N_CONFIRMS)
			return;
	}
}

void relay_drain(struct relay *r, double deadline)
{
	while (r->fl.count > 0 && r->mq_up && r->db_up) {
		double left = deadline - svc_clock_mono();

		if (left <= 0)
			break;
		relay_handle_confirms(r, left > 0.2 ? 200 : (int)(left * 1000) + 1);
	}
}
