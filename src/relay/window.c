/* window: the confirm window. See window.h. */
#include "relay/window.h"

#include <stdlib.h>
#include <string.h>

#include "util/error.h"

int svc_flight_init(struct svc_flight *f, size_t window)
{
	memset(f, 0, sizeof(*f));
	if (window == 0)
		window = 1;
	f->cap = window;
	f->ring = calloc(window, sizeof(*f->ring));
	f->out.acked = calloc(window, sizeof(int64_t));
	f->out.returned = calloc(window, sizeof(int64_t));
	f->out.nacked = calloc(window, sizeof(int64_t));
	if (!f->ring || !f->out.acked || !f->out.returned || !f->out.nacked) {
		svc_flight_release(f);
		return SVC_ENOMEM;
	}
	return 0;
}

void svc_flight_release(struct svc_flight *f)
{
	free(f->ring);
	free(f->out.acked);
	free(f->out.returned);
	free(f->out.nacked);
	memset(f, 0, sizeof(*f));
}

void svc_flight_clear(struct svc_flight *f)
{
	f->head = f->count = 0;
	f->resolved_upto = 0;
	memset(f->part_count, 0, sizeof(f->part_count));
}

static struct svc_flight_entry *entry_at(const struct svc_flight *f, size_t i)
{
	return &f->ring[(f->head + i) % f->cap];
}

/* The entry of sequence number seq, or NULL when it is not in flight. */
static struct svc_flight_entry *find_seq(const struct svc_flight *f, uint64_t seq)
{
	uint64_t first;

	if (f->count == 0)
		return NULL;
	first = entry_at(f, 0)->seq;
	if (seq < first || seq - first >= f->count)
		return NULL;
	return entry_at(f, (size_t)(seq - first));
}

int svc_flight_add(struct svc_flight *f, uint64_t seq, int64_t id, int part)
{
	struct svc_flight_entry *e;

	if (f->count == f->cap)
		return SVC_EINVAL;
	if (f->count > 0 && entry_at(f, f->count - 1)->seq + 1 != seq)
		return SVC_EINVAL;
	if (f->count == 0)
		f->resolved_upto = seq - 1;
	e = entry_at(f, f->count);
	e->seq = seq;
	e->id = id;
	e->part = (int16_t)(part >= 0 && part < SVC_RELAY_PARTITIONS ? part : 0);
	e->state = SVC_FLIGHT_PENDING;
	e->tag = 0;
	e->sent = 0;
	f->part_count[e->part]++;
	f->count++;
	return 0;
}

struct svc_flight_entry *svc_flight_last(struct svc_flight *f)
{
	return f->count ? entry_at(f, f->count - 1) : NULL;
}

static void decide(struct svc_flight_entry *e, bool ack)
{
	if (e->state == SVC_FLIGHT_PENDING)
		e->state = ack ? SVC_FLIGHT_ACKED : SVC_FLIGHT_NACKED;
	else if (e->state == SVC_FLIGHT_RETURNED)
		e->state = ack ? SVC_FLIGHT_RETURNED_ACKED : SVC_FLIGHT_NACKED;
}

static bool decided(const struct svc_flight_entry *e)
{
	return e->state >= SVC_FLIGHT_ACKED;
}

static void advance_resolved(struct svc_flight *f)
{
	struct svc_flight_entry *e;

	while ((e = find_seq(f, f->resolved_upto + 1)) && decided(e))
		f->resolved_upto++;
}

void svc_flight_confirm(struct svc_flight *f, uint64_t tag, bool multiple, bool ack)
{
	struct svc_flight_entry *e;

	if (f->count == 0)
		return;
	if (!multiple) {
		if ((e = find_seq(f, tag)))
			decide(e, ack);
	} else {
		uint64_t first = entry_at(f, 0)->seq;
		uint64_t last = entry_at(f, f->count - 1)->seq;
		uint64_t s = f->resolved_upto + 1 > first ? f->resolved_upto + 1 : first;

		if (tag > last)
			tag = last;
		for (; s <= tag; s++)
			decide(find_seq(f, s), ack);
	}
	advance_resolved(f);
}

int64_t svc_flight_return(struct svc_flight *f, uint64_t seq)
{
	struct svc_flight_entry *e = find_seq(f, seq);

	if (e && e->state == SVC_FLIGHT_PENDING)
		e->state = SVC_FLIGHT_RETURNED;
	return e ? e->id : 0;
}

int64_t svc_flight_return_id(struct svc_flight *f, int64_t id)
{
	for (size_t i = 0; i < f->count; i++) {
		struct svc_flight_entry *e = entry_at(f, i);

		if (e->id == id && e->state == SVC_FLIGHT_PENDING) {
			e->state = SVC_FLIGHT_RETURNED;
			return id;
		}
	}
	return 0;
}

size_t svc_flight_harvest(struct svc_flight *f)
{
	size_t popped = 0;

	f->out.n_acked = f->out.n_returned = f->out.n_nacked = 0;
	while (f->count > 0) {
		struct svc_flight_entry *e = entry_at(f, 0);

		if (!decided(e))
			break;
		if (e->state == SVC_FLIGHT_ACKED)
			f->out.acked[f->out.n_acked++] = e->id;
		else if (e->state == SVC_FLIGHT_RETURNED_ACKED)
			f->out.returned[f->out.n_returned++] = e->id;
		else
			f->out.nacked[f->out.n_nacked++] = e->id;
		if (f->on_decided)
			f->on_decided(f->on_decided_arg, e);
		if (f->part_count[e->part] > 0)
			f->part_count[e->part]--;
		f->head = (f->head + 1) % f->cap;
		f->count--;
		popped++;
	}
	return popped;
}

size_t svc_flight_ids(const struct svc_flight *f, int64_t *out)
{
	for (size_t i = 0; i < f->count; i++)
		out[i] = entry_at(f, i)->id;
	return f->count;
}

int64_t svc_flight_max_pending_id(const struct svc_flight *f)
{
	int64_t m = 0;

	for (size_t i = 0; i < f->count; i++) {
		const struct svc_flight_entry *e = entry_at(f, i);

		if (!decided(e) && e->id > m)
			m = e->id;
	}
	return m;
}

size_t svc_flight_pending(const struct svc_flight *f, int64_t *last)
{
	size_t n = 0;

	for (size_t i = 0; i < f->count; i++) {
		const struct svc_flight_entry *e = entry_at(f, i);

		if (!decided(e)) {
			n++;
			if (last)
				*last = e->id;
		}
	}
	return n;
}
