/* exchanges: the relay's cache of exchanges, and the check each row's exchange goes through
 * before its first publish on a connection. A publish to a missing exchange closes the channel
 * and loses every confirm in flight, so each exchange is checked once per connection (a passive
 * or idempotent declare) and a missing one keeps its rows with a growing delay (capped by
 * RECONNECT_MAX_DELAY) until it exists. The cache is an open-addressing table keyed by name,
 * owned by struct relay. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "relay/internal.h"
#include "util/backoff.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/hash.h"
#include "util/log.h"

/* Grows the table to twice its size (64 at first). False when out of memory. */
static bool ex_grow(struct relay *r)
{
	size_t ncap = r->ex_cap ? r->ex_cap * 2 : 64;
	struct ex_slot *n = calloc(ncap, sizeof(*n));

	if (!n)
		return false;
	for (size_t k = 0; k < r->ex_cap; k++) {
		size_t i;

		if (!r->ex[k].name)
			continue;
		i = svc_hash_str(SVC_HASH_INIT, r->ex[k].name) & (ncap - 1);
		while (n[i].name)
			i = (i + 1) & (ncap - 1);
		n[i] = r->ex[k];
	}
	free(r->ex);
	r->ex = n;
	r->ex_cap = ncap;
	return true;
}

/* The slot of name; a new one when create (NULL when out of memory), else NULL if unknown. */
static struct ex_slot *ex_find(struct relay *r, const char *name, bool create)
{
	size_t i;

	if (r->ex_cap == 0 || (create && (r->ex_used + 1) * 2 > r->ex_cap))
		if (!ex_grow(r))
			return NULL;
	i = svc_hash_str(SVC_HASH_INIT, name) & (r->ex_cap - 1);
	while (r->ex[i].name) {
		if (strcmp(r->ex[i].name, name) == 0)
			return &r->ex[i];
		i = (i + 1) & (r->ex_cap - 1);
	}
	if (!create)
		return NULL;
	r->ex[i].name = strdup(name);
	if (!r->ex[i].name)
		return NULL;
	r->ex[i].state = 0;
	r->ex[i].metrics = 0;
	r->ex[i].fails = 0;
	r->ex[i].until = 0;
	r->ex_used++;
	return &r->ex[i];
}

void relay_ex_forget_known(struct relay *r)
{
	for (size_t i = 0; i < r->ex_cap; i++)
		if (r->ex[i].name && r->ex[i].state == EX_KNOWN)
			r->ex[i].state = 0;
}

uint16_t relay_ex_metrics(struct relay *r, const char *name)
{
	struct ex_slot *s;
	if (!r->m.on || !(s = ex_find(r, name, true)))
		return 0;
	if (!s->metrics)
		s->metrics = relay_metrics_exchange(r, name);
	return s->metrics;
}

void relay_ex_free_all(struct relay *r)
{
	for (size_t i = 0; i < r->ex_cap; i++)
		free(r->ex[i].name);
	free(r->ex);
	r->ex = NULL;
	r->ex_cap = r->ex_used = 0;
}

/* A declare is an RPC; a channel error would lose the confirms in flight, so they are settled
 * first. This happens once per exchange per connection. Returns 0 or SVC_ECONN. */
static int settle_before_declare(struct relay *r)
{
	relay_drain(r, svc_clock_mono() + 30);
	if (!r->mq_up || !r->db_up)
		return SVC_ECONN;
	if (r->fl.count > 0) {
		relay_mq_lost(r, "no confirms within 30 s");
		return SVC_ECONN;
	}
	return 0;
}

/* Declares the exchange (passively under DO_NOT_DECLARE). Returns 0 or the SVC_E* of
 * svc_amqp_declare_exchange(). */
static int declare(struct relay *r, const char *name)
{
	struct svc_amqp_exchange ex = {.name = name, .type = "topic"};
	int rc = svc_amqp_declare_exchange(r->mq, &ex, r->cfg->do_not_declare);

	if (rc == SVC_EPROTO && !r->cfg->do_not_declare) {
		int code = svc_amqp_reply_code(r->mq);

		/* 406: it exists with other properties; 403: reserved (amq.*) or not ours to
		 * configure. Publishing works whenever it exists. */
		if (code == 406 || code == 403)
			rc = svc_amqp_declare_exchange(r->mq, &ex, true);
	}
	return rc;
}

/* The exchange of slot s is missing: its row waits, and so will the next ones until a delay
 * that grows with each failed check. */
static void mark_missing(struct relay *r, struct ex_slot *s, int64_t id)
{
	char reason[400];

	snprintf(reason, sizeof(reason), "%s", svc_amqp_error(r->mq));
	s->state = EX_MISSING;
	s->until =
	    svc_clock_mono() + svc_backoff(s->fails++, 0.5, r->cfg->reconnect_max_delay, 1.0);
	svc_error(COMP, "exchange \"%s\": %s; its rows are kept and retried", s->name, reason);
	relay_defer_row(r, id, reason);
}

int relay_check_exchange(struct relay *r, const char *name, int64_t id)
{
	struct ex_slot *s;
	double t = svc_clock_mono();
	char reason[400];
	int rc;

	if (name[0] == '\0')
		return 1; /* the default exchange always exists and cannot be declared */
	if (strlen(name) > 255) {
		relay_park_row(r, id, "exchange name longer than 255 bytes (AMQP limit)");
		return 0;
	}
	if (!(s = ex_find(r, name, true)))
		return SVC_ENOMEM;
	if (s->state == EX_KNOWN)
		return 1;
	if (s->state == EX_MISSING && t < s->until) {
		snprintf(reason, sizeof(reason), "exchange \"%s\" does not exist", name);
		relay_defer_row(r, id, reason);
		return 0;
	}
	if (r->fl.count > 0) {
		if ((rc = settle_before_declare(r)) != 0)
			return rc;
		if (!(s = ex_find(r, name, true))) /* the table may have moved */
			return SVC_ENOMEM;
	}
	rc = declare(r, name);
	if (rc == 0) {
		if (s->state == EX_MISSING)
			svc_info(COMP, "exchange \"%s\" exists now", name);
		s->state = EX_KNOWN;
		s->fails = 0;
		return 1;
	}
	if (rc == SVC_EPROTO) {
		mark_missing(r, s, id);
		return 0;
	}
	relay_mq_lost(r, "declaring an exchange");
	return SVC_ECONN;
}
