/* dlq: stats, browse, replay and purge of <QUEUE>.dlq. See dlq.h. */
#include "consumer/dlq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"

#define READ_FRAME_MAX     (1 << 20) /* as the consumer: header frames of copies are large */
#define PUBLISH_TIMEOUT_MS 30000
#define MAX_HEADERS        64

const char *svc_dlq_outcome_text(enum svc_dlq_outcome o)
{
	switch (o) {
	case SVC_DLQ_REPLAYED:
		return "replayed";
	case SVC_DLQ_OTHER_ID:
		return "another message_id";
	case SVC_DLQ_UNTRUSTED:
		return "not signed by svccomm for this queue: its origin cannot be trusted";
	case SVC_DLQ_NO_ORIGIN:
		return "no original exchange and routing key";
	case SVC_DLQ_TRUNCATED:
		return "its body was cut when it was dead-lettered (or is too large)";
	case SVC_DLQ_UNROUTABLE:
		return "unroutable: no queue is bound for it, or the exchange does not exist";
	case SVC_DLQ_REFUSED:
		return "refused by the broker";
	}
	return "?";
}

static void set_err(struct svc_dlq *q, const char *what, const char *text)
{
	snprintf(q->err, sizeof(q->err), "%s: %s", what, text);
}

int svc_dlq_open(struct svc_dlq *q, const struct svc_config *cfg, bool publish)
{
	char conn_name[320];
	uint32_t n, c;
	int rc;

	memset(q, 0, sizeof(*q));
	q->cfg = cfg;
	if (!cfg->queue || svc_consumer_dlq_name(cfg->queue, q->name, sizeof(q->name)) != 0) {
		snprintf(q->err, sizeof(q->err), "QUEUE: %s",
		         cfg->queue ? "too long for a dead-letter queue name" : "not set");
		return SVC_EINVAL;
	}
	svc_consumer_copy_key(cfg->broker_url, q->key);
	q->in = svc_amqp_new();
	q->out = publish ? svc_amqp_new() : NULL;
	if (!q->in || (publish && !q->out)) {
		snprintf(q->err, sizeof(q->err), "out of memory");
		return SVC_ENOMEM;
	}
	svc_amqp_set_tls(q->in, &cfg->broker_tls);
	snprintf(conn_name, sizeof(conn_name), "svccomm dlq %s", q->name);
	rc = svc_amqp_connect(q->in, cfg->broker_url, (int)cfg->heartbeat, conn_name);
	if (rc == 0)
		rc = svc_amqp_read_frame_max(q->in, READ_FRAME_MAX);
	if (rc) {
		set_err(q, "RabbitMQ", svc_amqp_error(q->in));
		return rc;
	}
	if (publish) {
		svc_amqp_set_tls(q->out, &cfg->broker_tls);
		snprintf(conn_name, sizeof(conn_name), "svccomm dlq %s (replay)", q->name);
		rc = svc_amqp_connect(q->out, cfg->broker_url, (int)cfg->heartbeat, conn_name);
		if (rc == 0)
			rc = svc_amqp_confirm_select(q->out);
		if (rc) {
			set_err(q, "RabbitMQ", svc_amqp_error(q->out));
			return rc;
		}
	}
	return svc_dlq_counts(q, &n, &c);
}

void svc_dlq_close(struct svc_dlq *q)
{
	if (q->in) {
		svc_amqp_close(q->in);
		svc_amqp_free(q->in);
	}
	if (q->out) {
		svc_amqp_close(q->out);
		svc_amqp_free(q->out);
	}
	svc_delivery_release(&q->d);
	q->in = q->out = NULL;
}

int svc_dlq_counts(struct svc_dlq *q, uint32_t *messages, uint32_t *consumers)
{
	int rc = svc_amqp_queue_counts(q->in, q->name, messages, consumers);

	if (rc == SVC_EPROTO && svc_amqp_reply_code(q->in) == 404)
		snprintf(q->err, sizeof(q->err),
		         "no queue '%s': runconsumer declares it when it starts for QUEUE '%s'",
		         q->name, q->cfg->queue);
	else if (rc)
		set_err(q, "RabbitMQ", svc_amqp_error(q->in));
	return rc;
}

int svc_dlq_purge(struct svc_dlq *q, uint32_t *purged)
{
	int rc = svc_amqp_queue_purge(q->in, q->name, purged);

	if (rc)
		set_err(q, "RabbitMQ", svc_amqp_error(q->in));
	return rc;
}

/* A string header's value, or NULL. */
static const char *str_header(const struct svc_delivery *d, const char *key)
{
	const struct svc_delivery_header *h = svc_delivery_header(d, key);

	return h && h->kind == 's' ? h->str : NULL;
}

static void letter_of(struct svc_dlq *q, struct svc_dlq_letter *l)
{
	const struct svc_delivery *d = &q->d;
	const struct svc_delivery_header *h = svc_delivery_header(d, "x-svccomm-attempts");

	memset(l, 0, sizeof(*l));
	l->d = d;
	l->reason = str_header(d, "x-svccomm-reason");
	l->handler = str_header(d, "x-svccomm-handler");
	l->error = str_header(d, "x-svccomm-error");
	l->exchange = str_header(d, "x-svccomm-exchange");
	l->routing_key = str_header(d, "x-svccomm-routing-key");
	if (h && (h->kind == 'i' || h->kind == 's'))
		l->attempts = h->kind == 'i' ? (long)h->i : strtol(h->str, NULL, 10);
	l->truncated = svc_delivery_header(d, "x-svccomm-body-truncated") != NULL || d->oversize;
	l->trusted = svc_consumer_copy_trusted(d, q->cfg->queue, q->key);
}

/* Records the error of a get on q->err. */
static int get_failed(struct svc_dlq *q, int rc)
{
	set_err(q, "basic.get", q->cs.err[0] ? q->cs.err : svc_amqp_error(q->in));
	return rc;
}

/* Puts every letter up to tag (unacked, not acked since) back in the DLQ. */
static int put_back(struct svc_dlq *q, uint64_t tag)
{
	if (tag == 0 || !svc_amqp_is_open(q->in))
		return 0; /* closing the connection puts them back as well */
	if (svc_amqp_consumer_nack(&q->cs, tag, true, true) != 0) {
		set_err(q, "basic.nack", q->cs.err[0] ? q->cs.err : svc_amqp_error(q->in));
		return SVC_ECONN;
	}
	return 0;
}

int svc_dlq_browse(struct svc_dlq *q, long limit, size_t body_max,
                   void (*fn)(void *ctx, const struct svc_dlq_letter *l), void *ctx, long *seen)
{
	struct svc_dlq_letter l;
	uint64_t last = 0;
	int rc = 0;

	*seen = 0;
	while (*seen < limit) {
		rc = svc_amqp_get(&q->cs, q->in, q->name, &q->d, body_max);
		if (rc < 0)
			return get_failed(q, rc);
		if (rc == 0)
			break;
		last = q->d.tag;
		letter_of(q, &l);
		fn(ctx, &l);
		(*seen)++;
	}
	return put_back(q, last);
}

/* Publishes the letter's copy to its origin (or to_exchange) and waits for the confirm:
 * 0, SVC_ENACK, SVC_ERETURNED, SVC_EPROTO (channel closed by the broker: no such exchange),
 * SVC_EINVAL (cannot be encoded), SVC_ECONN, SVC_ETIMEOUT. */
static int publish_copy(struct svc_dlq *q, const struct svc_dlq_letter *l, const char *to_exchange)
{
	const struct svc_delivery *d = l->d;
	struct svc_amqp_header hdrs[MAX_HEADERS];
	size_t nh = 0;

	for (size_t i = 0; i < d->n_headers && nh < MAX_HEADERS; i++) {
		const struct svc_delivery_header *h = &d->headers[i];

		if (h->kind == 'n' || svc_consumer_bookkeeping_header(h->key))
			continue;
		hdrs[nh].key = h->key;
		hdrs[nh].value = h->str;
		nh++;
	}
	struct svc_amqp_props props = {
	    .content_type = d->content_type ? d->content_type : "",
	    .message_id = d->message_id,
	    .correlation_id = d->correlation_id,
	    .app_id = d->app_id,
	    .reply_to = d->reply_to,
	    .type = d->type,
	    .timestamp = d->has_timestamp ? d->timestamp : 0,
	    .headers = hdrs,
	    .n_headers = nh,
	    .persistent = true,
	};
	return svc_amqp_publish_confirmed(q->out, to_exchange ? to_exchange : l->exchange,
	                                  l->routing_key, d->body, d->body_len, &props, true,
	                                  PUBLISH_TIMEOUT_MS);
}

/* What to do with a letter before publishing: SVC_DLQ_REPLAYED means "publish it". */
static enum svc_dlq_outcome judge(const struct svc_dlq_letter *l, const char *only_id)
{
	if (only_id && (!l->d->message_id || strcmp(l->d->message_id, only_id) != 0))
		return SVC_DLQ_OTHER_ID;
	if (!l->trusted)
		return SVC_DLQ_UNTRUSTED;
	if (!l->exchange || !l->routing_key)
		return SVC_DLQ_NO_ORIGIN;
	if (l->truncated)
		return SVC_DLQ_TRUNCATED;
	return SVC_DLQ_REPLAYED;
}

int svc_dlq_replay(struct svc_dlq *q, const char *only_id, const char *to_exchange,
                   void (*fn)(void *ctx, const struct svc_dlq_letter *l, enum svc_dlq_outcome o),
                   void *ctx, long *replayed)
{
	struct svc_dlq_letter l;
	uint32_t n = 0, consumers;
	uint64_t held = 0;
	int rc;

	*replayed = 0;
	if (!q->out) {
		snprintf(q->err, sizeof(q->err), "not opened for replay");
		return SVC_EINVAL;
	}
	if ((rc = svc_dlq_counts(q, &n, &consumers)) != 0)
		return rc;
	/* only those there now: a copy that fails again comes back behind them */
	for (uint32_t i = 0; i < n; i++) {
		enum svc_dlq_outcome o;

		rc = svc_amqp_get(&q->cs, q->in, q->name, &q->d, SVC_DLQ_BODY_MAX);
		if (rc < 0)
			return get_failed(q, rc);
		if (rc == 0)
			break; /* someone else took or purged them */
		letter_of(q, &l);
		o = judge(&l, only_id);
		if (o == SVC_DLQ_REPLAYED) {
			rc = publish_copy(q, &l, to_exchange);
			if (rc == SVC_ENACK || rc == SVC_EINVAL) {
				o = SVC_DLQ_REFUSED;
			} else if (rc == SVC_ERETURNED || rc == SVC_EPROTO) {
				o = SVC_DLQ_UNROUTABLE;
			} else if (rc != 0) {
				/* unacked, this letter goes back to the DLQ with the connection */
				set_err(q, "publishing the copy", svc_amqp_error(q->out));
				return rc;
			}
		}
		if (o != SVC_DLQ_REPLAYED) {
			held = q->d.tag;
		} else {
			(*replayed)++;
			if (svc_amqp_consumer_ack(&q->cs, q->d.tag, false) != 0) {
				set_err(
				    q,
				    "the copy was confirmed but acking its dead letter failed (it "
				    "may be replayed again)",
				    q->cs.err[0] ? q->cs.err : svc_amqp_error(q->in));
				if (fn)
					fn(ctx, &l, o);
				return SVC_ECONN;
			}
		}
		if (fn)
			fn(ctx, &l, o);
		if (only_id && o == SVC_DLQ_REPLAYED)
			break;
	}
	return put_back(q, held);
}
