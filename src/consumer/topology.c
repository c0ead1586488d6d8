/* topology: what the consumer needs on the broker. The application's exchanges, QUEUE and its
 * bindings are declared, or only checked with DO_NOT_DECLARE (all missing ones are named in one
 * error); svccomm's own <QUEUE>.dlq and <QUEUE>.retry.<ms> queues are always declared. The
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

/* QUEUE_ARGUMENTS as an AMQP table (entries freed by the caller); 0 or SVC_ENOMEM. */
static int queue_arguments(const struct svc_config *cfg, amqp_table_t *args)
{
	amqp_table_entry_t *entries = NULL;
	if (cfg->n_queue_args) {
		entries = calloc(cfg->n_queue_args, sizeof(*entries));
		if (!entries)
			return SVC_ENOMEM;
	}
	for (size_t i = 0; i < cfg->n_queue_args; i++) {
		const struct svc_queue_arg *a = &cfg->queue_args[i];
		entries[i].key = amqp_cstring_bytes(a->key);
		if (a->kind == 's') {
			entries[i].value.kind = AMQP_FIELD_KIND_UTF8;
			entries[i].value.value.bytes = amqp_cstring_bytes(a->str);
		} else if (a->kind == 'b') {
			entries[i].value.kind = AMQP_FIELD_KIND_BOOLEAN;
			entries[i].value.value.boolean = a->num != 0;
		} else {
			entries[i].value.kind = AMQP_FIELD_KIND_I64;
			entries[i].value.value.i64 = a->num;
		}
	}
	args->num_entries = (int)cfg->n_queue_args;
	args->entries = entries;
	return 0;
}

static int declare_queue(struct svc_consumer *c, bool passive, struct missing *missing)
{
	const struct svc_config *cfg = c->cfg;
	amqp_table_t args;
	int rc = queue_arguments(cfg, &args);
	if (rc)
		return rc;
	rc = svc_amqp_declare_queue(c->in, cfg->queue, args, passive);
	free(args.entries);
	if (rc == SVC_EPROTO && passive) {
		note_missing(missing, "queue", cfg->queue);
		return 0;
	}
	if (rc)
		svc_error(LOG, "declaring queue '%s': %s", cfg->queue, svc_amqp_error(c->in));
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
	char name[300];
	svc_consumer_retry_queue(c->cfg->queue, delay_ms, name, sizeof(name));
	amqp_table_entry_t e[3];
	e[0].key = amqp_cstring_bytes("x-message-ttl");
	e[0].value.kind = AMQP_FIELD_KIND_I64;
	e[0].value.value.i64 = delay_ms;
	e[1].key = amqp_cstring_bytes("x-dead-letter-exchange");
	e[1].value.kind = AMQP_FIELD_KIND_UTF8;
	e[1].value.value.bytes = amqp_cstring_bytes("");
	e[2].key = amqp_cstring_bytes("x-dead-letter-routing-key");
	e[2].value.kind = AMQP_FIELD_KIND_UTF8;
	e[2].value.value.bytes = amqp_cstring_bytes(c->cfg->queue);
	amqp_table_t t = {.num_entries = 3, .entries = e};
	int rc = svc_amqp_declare_queue(c->in, name, t, false);
	if (rc)
		svc_error(LOG, "declaring queue '%s': %s", name, svc_amqp_error(c->in));
	return rc;
}

/* svccomm's own queues: the DLQ and one retry queue per distinct delay. */
static int declare_own_queues(struct svc_consumer *c)
{
	int rc = svc_amqp_declare_queue(c->in, c->dlq, amqp_empty_table, false);
	if (rc) {
		svc_error(LOG, "declaring queue '%s': %s", c->dlq, svc_amqp_error(c->in));
		return rc;
	}
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
