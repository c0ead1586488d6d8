/* committed: the message ids of the latest committed batches, kept so that a redelivery of one
 * of them is acked without running its handler again. After a COMMIT the ack can be lost (the
 * broker connection died before it was sent, or before the broker read it): the broker then
 * redelivers the message, marked redelivered, in a later session, and its work must not be
 * applied twice. Only messages with an AMQP message_id are recognised, only within this
 * process and for the last COMMITTED_BATCHES batches: across a crash only INBOX protects. */
#include "consumer/internal.h"

#include <stdlib.h>
#include <string.h>

#include "util/log.h"

#define COMMITTED_BATCHES 2 /* a lost ack concerns the last batch; one more for safety */

/* Copies id into the reusable buffer *buf of capacity *cap; false when out of memory. */
static bool keep(char **buf, size_t *cap, const char *id)
{
	size_t len = strlen(id);
	if (len + 1 > *cap) {
		char *p = realloc(*buf, len + 1);
		if (!p)
			return false;
		*buf = p;
		*cap = len + 1;
	}
	memcpy(*buf, id, len + 1);
	return true;
}

int svc_consumer_committed_init(struct svc_consumer *c)
{
	c->ring_n = COMMITTED_BATCHES * (c->limit + 1);
	c->ids = calloc(c->limit + 1, sizeof(*c->ids));
	c->idcap = calloc(c->limit + 1, sizeof(*c->idcap));
	c->ring = calloc(c->ring_n, sizeof(*c->ring));
	c->ringcap = calloc(c->ring_n, sizeof(*c->ringcap));
	return c->ids && c->idcap && c->ring && c->ringcap ? 0 : -1;
}

void svc_consumer_batch_id(struct svc_consumer *c, size_t slot, const char *message_id)
{
	if (!keep(&c->ids[slot], &c->idcap[slot], message_id ? message_id : "") && c->ids[slot])
		c->ids[slot][0] = '\0'; /* not recognisable then: only INBOX protects it */
}

void svc_consumer_committed_record(struct svc_consumer *c)
{
	for (size_t i = 0; i < c->batch_n; i++) {
		if (c->settled[i] || !c->ids[i] || !c->ids[i][0])
			continue;
		size_t at = c->ring_next;
		if (!keep(&c->ring[at], &c->ringcap[at], c->ids[i]) && c->ring[at])
			c->ring[at][0] = '\0';
		c->ring_next = (at + 1) % c->ring_n;
	}
}

bool svc_consumer_committed_seen(struct svc_consumer *c, const char *message_id)
{
	if (!message_id || !*message_id)
		return false;
	for (size_t i = 0; i < c->ring_n; i++)
		if (c->ring[i] && strcmp(c->ring[i], message_id) == 0)
			return true;
	return false;
}

void svc_consumer_committed_free(struct svc_consumer *c)
{
	for (size_t i = 0; c->ids && i <= c->limit; i++)
		free(c->ids[i]);
	for (size_t i = 0; c->ring && i < c->ring_n; i++)
		free(c->ring[i]);
	free(c->ids);
	free(c->idcap);
	free(c->ring);
	free(c->ringcap);
	c->ids = c->ring = NULL;
	c->idcap = c->ringcap = NULL;
}
