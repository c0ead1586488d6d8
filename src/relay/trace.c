/* trace: the relay's debug-only stage times (relay/trace.h) and the id ranges they name. */
#include "relay/trace.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "relay/internal.h"
#include "util/clock.h"
#include "util/log.h"

#define CUT_MARK "..."

void svc_id_ranges_init(struct svc_id_ranges *ir, char *buf, size_t cap)
{
	memset(ir, 0, sizeof(*ir));
	ir->buf = buf;
	ir->cap = cap;
	if (cap)
		buf[0] = '\0';
}

/* Writes first..last after a comma (when not the first range), or marks the text cut. */
static void flush(struct svc_id_ranges *ir)
{
	size_t room;
	int n;

	if (!ir->open || ir->cut)
		return;
	ir->open = false;
	/* keep room for the cut mark and its NUL */
	room = ir->cap > ir->len + sizeof(CUT_MARK) ? ir->cap - ir->len - sizeof(CUT_MARK) : 0;
	if (ir->first == ir->last)
		n = snprintf(ir->buf + ir->len, room, "%s%" PRId64, ir->len ? "," : "", ir->first);
	else
		n = snprintf(ir->buf + ir->len, room, "%s%" PRId64 "-%" PRId64, ir->len ? "," : "",
		             ir->first, ir->last);
	if (n < 0 || (size_t)n >= room) {
		ir->cut = true;
		if (ir->cap >= ir->len + sizeof(CUT_MARK))
			memcpy(ir->buf + ir->len, CUT_MARK, sizeof(CUT_MARK));
		return;
	}
	ir->len += (size_t)n;
}

void svc_id_ranges_add(struct svc_id_ranges *ir, int64_t id)
{
	if (ir->open && ir->last < INT64_MAX && id == ir->last + 1) {
		ir->last = id;
		return;
	}
	flush(ir);
	ir->first = ir->last = id;
	ir->open = true;
}

const char *svc_id_ranges_end(struct svc_id_ranges *ir)
{
	flush(ir);
	return ir->buf;
}

static void fmt_time(struct timespec t, char *out, size_t outsz)
{
	snprintf(out, outsz, "%lld.%06ld", (long long)t.tv_sec, t.tv_nsec / 1000L);
}

void relay_trace_batch(PGresult *res, int from, int to, struct timespec claimed)
{
	struct timespec published = svc_clock_wall();
	struct svc_id_ranges ir;
	char ids[4096], tc[32], tp[32];

	svc_id_ranges_init(&ir, ids, sizeof(ids));
	for (int i = from; i < to; i++)
		svc_id_ranges_add(&ir, strtoll(PQgetvalue(res, i, SVC_RELAY_COL_ID), NULL, 10));
	fmt_time(claimed, tc, sizeof(tc));
	fmt_time(published, tp, sizeof(tp));
	const struct svc_log_field fields[] = {SVC_LOG_STR("ids", svc_id_ranges_end(&ir)),
	                                       SVC_LOG_NUM("claimed", tc),
	                                       SVC_LOG_NUM("published", tp)};
	svc_log_write_fields(SVC_LOG_DEBUG, COMP, "batch times", fields, 3);
}

void relay_trace_confirmed(const int64_t *ids, size_t n)
{
	struct svc_id_ranges ir;
	char text[4096], tc[32];

	fmt_time(svc_clock_wall(), tc, sizeof(tc));
	svc_id_ranges_init(&ir, text, sizeof(text));
	for (size_t i = 0; i < n; i++)
		svc_id_ranges_add(&ir, ids[i]);
	const struct svc_log_field fields[] = {SVC_LOG_STR("ids", svc_id_ranges_end(&ir)),
	                                       SVC_LOG_NUM("confirmed", tc)};
	svc_log_write_fields(SVC_LOG_DEBUG, COMP, "confirm times", fields, 2);
}
