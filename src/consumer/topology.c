/* topology: what the consumer needs on the broker. The application's exchanges, QUEUE and its
 * bindings are declared, or only checked with DO_NOT_DECLARE (all missing ones are named in one
 * error); svccomm's own <QUEUE>.dlq and <QUEUE>.retry.<ms> queues are always declared, with
 * DEAD_LETTER_QUEUE_ARGUMENTS and RETRY_QUEUE_ARGUMENTS (which follow QUEUE_ARGUMENTS unless
 * set: lua/svccomm/settings_checks.lua); a queue that exists with other arguments is a
 * settings error naming the key. The
 * exchanges and bindings are declared again every few seconds: deleting an exchange deletes
 * its bindings, and events would be unroutable until the next session. Copies
 * (retries, dead letters) go out on a second connection in confirm mode, so confirm frames
 * never mix with deliveries. */
#include "consumer/internal.h"

#include <stdio.h>
#include <stdlib.h>

#include "config/config.h"
#include "util/error.h"
#include "util/log.h"

#define PUBLISH_TIMEOUT_MS    15000
#define MAX_REPUBLISH_HEADERS 64

/* What DO_NOT_DECLARE found missing, as "exchange 'a', queue 'b'". */
struct missing {
	char text[1024];
	size_t len;
};

static void note_missing(struct missing *m, const char *kind, const char *name)
{
	m->len += (size_t)snprintf(m->text + m->len, sizeof(m->text) - m->len, "%s%s '%s'",
	                           m->len ? ", " : "", kind, name);
	if (m->len >= sizeof(m->text))
		m->len = sizeof(m->text) - 1;
}

static int declare_exchanges(struct svc_consumer *c, bool passive, struct missing *missing)
{
	const struct svc_config *cfg = c->cfg;
	for (size_t i = 0; i < cfg->n_exchanges; i++) {
		struct svc_amqp_exchange ex = {cfg->exchanges[i].name, cfg->exchanges[i].type};
		int rc = svc_amqp_declare_exchange(c->in, &ex, passive);
		if (rc == SVC_EPROTO && passive) {
			note_missing(missing, "exchange", ex.name);
			continue;
		}
		if (rc) {
			svc_error(LOG, "declaring exchange '%s': %s", ex.name,
			          svc_amqp_error(c->in));
			return rc;
		}
	}
	return 0;
}

/* Queue arguments as an AMQP table of extra + n entries: the first extra are left for the
 * caller, entries freed by the caller; 0 or SVC_ENOMEM. */
static int queue_arguments(const struct svc_queue_arg *qargs, size_t n, size_t extra,
                           amqp_table_t *args)
{
	amqp_table_entry_t *entries = calloc(n + extra ? n + extra : 1, sizeof(*entries));
	if (!entries)
		return SVC_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		const struct svc_queue_arg *a = &qargs[i];
		amqp_table_entry_t *e = &entries[extra + i];
		e->key = amqp_cstring_bytes(a->key);
		if (a->kind == 's') {
			e->value.kind = AMQP_FIELD_KIND_UTF8;
			e->value.value.bytes = amqp_cstring_bytes(a->str);
		} else if (a->kind == 'b') {
			e->value.kind = AMQP_FIELD_KIND_BOOLEAN;
			e->value.value.boolean = a->num != 0;
		} else {
			e->value.kind = AMQP_FIELD_KIND_I64;
			e->value.value.i64 = a->num;
		}
	}
	args->num_entries = (int)(n + extra);
	args->entries = entries;
	return 0;
}

/* Declares queue with args; a queue that exists with other arguments (406
 * PRECONDITION_FAILED: another type, another TTL...) is a settings error naming setting,
 * unless derived: the arguments were not set but derived from QUEUE_ARGUMENTS (a retry queue
 * or DLQ declared classic before they followed a quorum QUEUE), then the queue is used as it
 * is, with a warning. */
static int declare_with(struct svc_consumer *c, const char *queue, amqp_table_t args,
                        const char *setting, bool derived)
{
	int rc = svc_amqp_declare_queue(c->in, queue, args, false);
	if (rc == SVC_EPROTO && svc_amqp_reply_code(c->in) == 406 && derived) {
		/* the broker closed the channel and svc_amqp reopened it */
		svc_warn(LOG,
		         "queue '%s' exists with other arguments than QUEUE_ARGUMENTS implies for "
		         "it (%s): used as it is; set %s to what it has to silence this, or "
		         "migrate it (see README, Quorum queues)",
		         queue, svc_amqp_error(c->in), setting);
		rc = svc_amqp_declare_queue(c->in, queue, amqp_empty_table, true);
		if (rc)
			svc_error(LOG, "declaring queue '%s': %s", queue, svc_amqp_error(c->in));
		return rc;
	}
	if (rc == SVC_EPROTO && svc_amqp_reply_code(c->in) == 406) {
		svc_error(
		    LOG,
		    "declaring queue '%s': %s: it exists with other arguments than %s asks "
		    "for; a queue's type and arguments cannot change in place: set %s to what "
		    "the queue has, or move its messages and delete it (see README, Quorum "
		    "queues)",
		    queue, svc_amqp_error(c->in), setting, setting);
		return SVC_ECONFIG;
	}
	if (rc)
		svc_error(LOG, "declaring queue '%s': %s", queue, svc_amqp_error(c->in));
	return rc;
}

static int declare_queue(struct svc_consumer *c, bool passive, struct missing *missing)
{
	const struct svc_config *cfg = c->cfg;
	amqp_table_t args;
	int rc;
	if (passive) {
		rc = svc_amqp_declare_queue(c->in, cfg->queue, amqp_empty_table, true);
		if (rc == SVC_EPROTO) {
			note_missing(missing, "queue", cfg->queue);
			return 0;
		}
		if (rc)
			svc_error(LOG, "declaring queue '%s': %s", cfg->queue,
			          svc_amqp_error(c->in));
		return rc;
	}
	rc = queue_arguments(cfg->queue_args, cfg->n_queue_args, 0, &args);
	if (rc)
		return rc;
	rc = declare_with(c, cfg->queue, args, "QUEUE_ARGUMENTS", false);
	free(args.entries);
	return rc;
}

static int bind_queue(struct svc_consumer *c)
{
	const struct svc_config *cfg = c->cfg;
	for (size_t i = 0; i < cfg->n_binds; i++) {
		int rc = svc_amqp_bind(c->in, cfg->queue, cfg->binds[i].exchange,
		                       cfg->binds[i].routing_key);
		if (rc) {
			svc_error(LOG, "binding '%s' to '%s' with '%s': %s", cfg->queue,
			          cfg->binds[i].exchange, cfg->binds[i].routing_key,
			          svc_amqp_error(c->in));
			return rc;
		}
	}
	return 0;
}

/* <QUEUE>.retry.<ms>: holds a copy for ms, then dead-letters it back to QUEUE. */
static int declare_retry_queue(struct svc_consumer *c, long delay_ms)
{
	const struct svc_config *cfg = c->cfg;
	char name[300];
	amqp_table_t t;
	svc_consumer_retry_queue(cfg->queue, delay_ms, name, sizeof(name));
	int rc = queue_arguments(cfg->retry_queue_args, cfg->n_retry_queue_args, 3, &t);
	if (rc)
		return rc;
	amqp_table_entry_t *e = t.entries;
	e[0].key = amqp_cstring_bytes("x-message-ttl");
	e[0].value.kind = AMQP_FIELD_KIND_I64;
	e[0].value.value.i64 = delay_ms;
	e[1].key = amqp_cstring_bytes("x-dead-letter-exchange");
	e[1].value.kind = AMQP_FIELD_KIND_UTF8;
	e[1].value.value.bytes = amqp_cstring_bytes("");
	e[2].key = amqp_cstring_bytes("x-dead-letter-routing-key");
	e[2].value.kind = AMQP_FIELD_KIND_UTF8;
	e[2].value.value.bytes = amqp_cstring_bytes(cfg->queue);
	rc = declare_with(c, name, t, "RETRY_QUEUE_ARGUMENTS", cfg->retry_queue_args_default);
	free(t.entries);
	return rc;
}

/* svccomm's own queues: the DLQ and one retry queue per distinct delay. */
static int declare_own_queues(struct svc_consumer *c)
{
	amqp_table_t t;
	int rc = queue_arguments(c->cfg->dlq_args, c->cfg->n_dlq_args, 0, &t);
	if (rc)
		return rc;
	rc = declare_with(c, c->dlq, t, "DEAD_LETTER_QUEUE_ARGUMENTS", c->cfg->dlq_args_default);
	free(t.entries);
	if (rc)
		return rc;
	for (size_t i = 0; i < c->cfg->n_retry_delays; i++) {
		bool seen = false;
		for (size_t j = 0; j < i; j++)
			seen = seen || c->delay_ms[j] == c->delay_ms[i];
		if (seen)
			continue;
		rc = declare_retry_queue(c, c->delay_ms[i]);
		if (rc)
			return rc;
	}
	return 0;
}

int svc_consumer_declare_topology(struct svc_consumer *c)
{
	bool passive = c->cfg->do_not_declare;
	struct missing missing = {.len = 0};
	int rc = declare_exchanges(c, passive, &missing);
	if (rc == 0)
		rc = declare_queue(c, passive, &missing);
	if (rc)
		return rc;
	if (missing.len) {
		svc_error(LOG, "DO_NOT_DECLARE is set and the broker lacks: %s", missing.text);
		return SVC_ECONFIG;
	}
	if (!passive) {
		rc = bind_queue(c);
		if (rc)
			return rc;
	}
	return declare_own_queues(c);
}

int svc_consumer_restore_bindings(struct svc_consumer *c)
{
	struct missing unused = {.len = 0};
	if (c->cfg->do_not_declare)
		return 0; /* the bindings are the operator's */
	/* both idempotent: a deleted exchange comes back, and so does the binding that went
	 * with it (also when the relay re-declared the exchange first) */
	int rc = declare_exchanges(c, false, &unused);
	return rc ? rc : bind_queue(c);
}

int svc_consumer_connect_out(struct svc_consumer *c)
{
	char name[128];
	snprintf(name, sizeof(name), "svccomm consumer %s (retries)", c->cfg->queue);
	int rc = svc_amqp_nodes_connect(&c->nodes, c->out, (int)c->cfg->heartbeat, name);
	if (rc == 0)
		rc = svc_amqp_confirm_select(c->out);
	if (rc) {
		svc_warn(LOG, "publisher connection: %s", svc_amqp_error(c->out));
		svc_amqp_close(c->out);
		svc_amqp_nodes_lost(&c->nodes); /* a node that answered, then failed: the next */
	}
	return rc;
}

int svc_consumer_publish_copy(struct svc_consumer *c, const struct svc_delivery *d,
                              const char *queue, const struct svc_failure_info *info)
{
	struct svc_amqp_header hdrs[MAX_REPUBLISH_HEADERS];
	char numbuf[48];
	size_t nh = svc_consumer_build_headers(d, info, hdrs, MAX_REPUBLISH_HEADERS, numbuf);
	struct svc_amqp_props props = {
	    /* "" publishes none: a copy of a message without one is not labelled JSON */
	    .content_type = d->content_type ? d->content_type : "",
	    .message_id = d->message_id,
	    .correlation_id = d->correlation_id,
	    .app_id = d->app_id,
	    .timestamp = d->has_timestamp ? d->timestamp : 0,
	    .headers = hdrs,
	    .n_headers = nh,
	    .persistent = true,
	};
	int rc = SVC_ECONN;
	for (int tries = 0; tries < 2; tries++) {
		if (!svc_amqp_is_open(c->out) && svc_consumer_connect_out(c) != 0)
			continue;
		rc = svc_amqp_publish_confirmed(c->out, "", queue, d->body, d->body_len, &props,
		                                true, PUBLISH_TIMEOUT_MS);
		/* a nack is the queue's answer, not the connection's: the caller decides */
		if (rc == 0 || rc == SVC_ENACK)
			return rc;
		svc_warn(LOG, "publishing to '%s': %s (%s)", queue, svc_strerror(rc),
		         svc_amqp_error(c->out));
		svc_amqp_close(c->out);
		if (rc != SVC_ECONN)
			break;
	}
	return rc ? rc : SVC_ECONN;
}
