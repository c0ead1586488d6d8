/* publisher: the outbox relay (`svccomm runpublisher`).
 *
 * How it works
 * ------------
 * One process, one thread, two connections: a PostgreSQL session (claims, deletes, advisory
 * locks, LISTEN) and a RabbitMQ channel in confirm mode. The loop waits with poll() on both
 * sockets, so confirms and notifications are handled as they arrive.
 *
 * Claim -> publish -> confirm -> delete. Due rows (send_after <= now(), parked_at IS NULL) are
 * read in id order, PUBLISHER_BATCH_SIZE at a time, and published at once (mandatory, persistent,
 * content type application/json, app_id = APP_ID, message_id = coalesce(message_id, id),
 * correlation_id and headers from the row, timestamp = created_at). Up to PUBLISHER_WINDOW
 * messages may be unconfirmed; confirms (basic.ack/nack with `multiple`) are matched to rows
 * through the channel's publish sequence numbers. Decided rows are handled in one statement per
 * kind: nacked -> kept, retried after a backoff; returned as unroutable (basic.return, matched by
 * the "x-svccomm-seq" header amqp_conn adds) -> deleted and counted with PUBLISHER_UNROUTABLE =
 * "drop", kept with a backoff with "keep"; confirmed -> deleted by the next claim: the claim is
 * one statement, WITH d AS (DELETE ... WHERE id = ANY($3)) SELECT ..., so a steady relay costs
 * one database round trip per batch, not two. The SELECT reads the snapshot from before that
 * DELETE and therefore skips the ids of $3 as well as those in flight. Confirmed rows wait for a
 * claim only while one is sure to follow (more work, confirms outstanding) and at most
 * DELETE_MAX_WAIT; otherwise (caught up, no partitions, shutdown, a partition to hand over, the
 * list full) they are deleted by a DELETE of their own. The list survives reconnects: those rows
 * were confirmed, deleting them late is correct and spares a second publish. A row is deleted
 * only after a positive confirm, so a lost connection, a nack or a crash can only cause a second
 * publish of the same row (same message_id), never a loss.
 *
 * Before each claim the relay reads the confirms that already arrived, so the rows they settle
 * leave the skip list and their deletes ride on this claim. Claim, delete and next-due are
 * prepared statements with a generic plan (plan_cache_mode = force_generic_plan on the relay's
 * session): no parse or plan per batch, and no planning cost that grows with the skip list.
 *
 * Rows in flight are not claimed twice: every claim passes the ids still unconfirmed and
 * skips exactly those (id NOT IN (SELECT unnest($1) ...), a hashed subplan: NOT (id = ANY($1))
 * would be hashed only in a custom plan and scan the list per row in a generic one). There
 * is no cursor: every claim starts from the lowest due id, so a row whose transaction commits
 * late (with an id below rows already sent) is picked up by the next claim and never skipped.
 * Rows of one aggregate written one transaction after the other therefore go out in id order,
 * which is their commit order. (An earlier design excluded the id ranges of unconfirmed batches;
 * a late row inside such a range then waited while newer rows of its aggregate went out.)
 *
 * Rows that cannot be sent. A missing exchange (404 on the passive check under DO_NOT_DECLARE,
 * or on publish) keeps its rows with a growing delay (capped by RECONNECT_MAX_DELAY) and logs an
 * error; they go out once the exchange exists. A row that can never be sent (a name longer than
 * 255 bytes, headers that are not an object of scalars, a message the broker refuses by closing
 * the channel, e.g. larger than its max message size) is parked: parked_at = now(),
 * last_error = the reason, logged as an error; the others carry on. When the broker closes the
 * channel while many messages are in flight, the culprit is unknown: the relay then publishes
 * the rows up to the highest id that was in flight one at a time ("isolation"), so the next
 * failure names exactly one row, which is parked.
 *
 * Several relays. Rows are split into 64 partitions by hash of their exchange
 * ((hashtext(exchange) & 63)), so one aggregate lives in one partition. A relay publishes only
 * the partitions whose session-level advisory lock it holds on its database connection. Each
 * relay also holds a membership lock; every few seconds it counts the relays (membership locks
 * in pg_locks), keeps at most ceil(64 / relays) partitions, stops claiming from the extra ones
 * and unlocks each once none of its rows is in flight or waits for its delete, and tries to lock
 * free ones. Within a
 * partition only one relay publishes, in id order, so per-aggregate order holds and nothing is
 * published twice in normal operation. A relay that dies loses its locks with its session; the
 * others take its partitions at their next rebalance (REBALANCE_PERIOD seconds). Rows it had in
 * flight are then published again (duplicates with the original message_id).
 *
 * Waking up. LISTEN on the channel named after the table (the insert trigger's NOTIFY) is a hint
 * only: the relay also claims at start, after every reconnect, every PUBLISHER_POLL_INTERVAL, and
 * at the earliest future send_after. PUBLISHER_MODE = "poll" skips LISTEN; in "listen" mode the
 * relay first checks that its own NOTIFY comes back and falls back to polling with a warning when
 * it does not (e.g. PgBouncer in transaction pooling). An idle database connection is probed
 * with SELECT 1 (and libpq keepalives are on) so a half-open session is noticed.
 *
 * Both connections reconnect forever with jittered exponential backoff capped at
 * RECONNECT_MAX_DELAY. On SIGTERM/SIGINT the relay stops claiming, waits up to SHUTDOWN_TIMEOUT
 * for outstanding confirms, deletes what was confirmed and returns. Every STATS_INTERVAL it logs
 * published, confirmed, returned, nacked, parked, backlog and the age of the oldest due row.
 */
#include "relay/relay.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "util/log.h"
#include "util/error.h"

#define COMP             "publisher"
#define REBALANCE_PERIOD 2.0  /* seconds between partition rebalances */
#define PROBE_IDLE       10.0 /* probe the database after this many idle seconds */
#define MAX_HEADERS      64
#define N_CONFIRMS       512
#define LISTEN_CHECK_MS  2000
#define DELETE_MAX_WAIT  0.1 /* seconds a confirmed row may wait for a claim to delete it */

/* ---- in-flight bookkeeping ---------------------------------------------------------------- */

int svc_flight_init(struct svc_flight *f, size_t window)
{
	memset(f, 0, sizeof(*f));
	if (window == 0)
		window = 1;
	f->cap = window;
	f->bcap = window; /* a batch holds at least one row */
	f->ring = calloc(window, sizeof(*f->ring));
	f->batches = calloc(window, sizeof(*f->batches));
	f->out.acked = calloc(window, sizeof(int64_t));
	f->out.returned = calloc(window, sizeof(int64_t));
	f->out.nacked = calloc(window, sizeof(int64_t));
	if (!f->ring || !f->batches || !f->out.acked || !f->out.returned || !f->out.nacked) {
		svc_flight_release(f);
		return SVC_ENOMEM;
	}
	return 0;
}

void svc_flight_release(struct svc_flight *f)
{
	free(f->ring);
	free(f->batches);
	free(f->out.acked);
	free(f->out.returned);
	free(f->out.nacked);
	memset(f, 0, sizeof(*f));
}

void svc_flight_clear(struct svc_flight *f)
{
	f->head = f->count = 0;
	f->bhead = f->bcount = 0;
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
	f->part_count[e->part]++;
	f->count++;
	return 0;
}

int svc_flight_add_batch(struct svc_flight *f, int64_t lo, int64_t hi, uint64_t last_seq)
{
	struct svc_flight_batch *b;

	if (f->bcount == f->bcap)
		return SVC_EINVAL;
	b = &f->batches[(f->bhead + f->bcount) % f->bcap];
	b->lo = lo;
	b->hi = hi;
	b->last_seq = last_seq;
	f->bcount++;
	return 0;
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

void svc_flight_return(struct svc_flight *f, uint64_t seq)
{
	struct svc_flight_entry *e = find_seq(f, seq);

	if (e && e->state == SVC_FLIGHT_PENDING)
		e->state = SVC_FLIGHT_RETURNED;
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
		if (f->part_count[e->part] > 0)
			f->part_count[e->part]--;
		f->head = (f->head + 1) % f->cap;
		f->count--;
		popped++;
	}
	/* A batch is done once every one of its sequence numbers left the ring. */
	while (f->bcount > 0) {
		struct svc_flight_batch *b = &f->batches[f->bhead];

		if (f->count > 0 && entry_at(f, 0)->seq <= b->last_seq)
			break;
		f->bhead = (f->bhead + 1) % f->bcap;
		f->bcount--;
	}
	return popped;
}

size_t svc_flight_ids(const struct svc_flight *f, int64_t *out)
{
	for (size_t i = 0; i < f->count; i++)
		out[i] = entry_at(f, i)->id;
	return f->count;
}

bool svc_flight_exclusion(const struct svc_flight *f, int64_t *lo, int64_t *hi)
{
	if (f->bcount == 0)
		return false;
	*lo = INT64_MAX;
	*hi = INT64_MIN;
	for (size_t i = 0; i < f->bcount; i++) {
		const struct svc_flight_batch *b = &f->batches[(f->bhead + i) % f->bcap];

		if (b->lo < *lo)
			*lo = b->lo;
		if (b->hi > *hi)
			*hi = b->hi;
	}
	return true;
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

/* ---- helpers ------------------------------------------------------------------------------ */

double svc_backoff(int attempt, double base, double cap, double rnd)
{
	double d = base;

	if (attempt < 0)
		attempt = 0;
	for (int i = 0; i < attempt && d < cap; i++)
		d *= 2;
	if (d > cap)
		d = cap;
	if (rnd < 0)
		rnd = 0;
	if (rnd > 1)
		rnd = 1;
	return d * (0.5 + 0.5 * rnd);
}

static char *skip_ws(char *p)
{
	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	return p;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static long hex4(const char *p)
{
	long v = 0;

	for (int i = 0; i < 4; i++) {
		int h = hexval(p[i]);

		if (h < 0)
			return -1;
		v = v * 16 + h;
	}
	return v;
}

static char *put_utf8(char *w, unsigned long cp)
{
	if (cp < 0x80) {
		*w++ = (char)cp;
	} else if (cp < 0x800) {
		*w++ = (char)(0xC0 | (cp >> 6));
		*w++ = (char)(0x80 | (cp & 0x3F));
	} else if (cp < 0x10000) {
		*w++ = (char)(0xE0 | (cp >> 12));
		*w++ = (char)(0x80 | ((cp >> 6) & 0x3F));
		*w++ = (char)(0x80 | (cp & 0x3F));
	} else {
		*w++ = (char)(0xF0 | (cp >> 18));
		*w++ = (char)(0x80 | ((cp >> 12) & 0x3F));
		*w++ = (char)(0x80 | ((cp >> 6) & 0x3F));
		*w++ = (char)(0x80 | (cp & 0x3F));
	}
	return w;
}

/* p points at an opening quote. The string is unescaped in place starting at p (the decoded
 * form is never longer than the escaped one) and NUL-terminated; returns the position after
 * the closing quote or NULL. */
static char *parse_string(char *p, char **str)
{
	char *w = p, *r = p + 1;

	*str = p;
	while (*r != '"') {
		unsigned char c = (unsigned char)*r;

		if (c == '\0' || c < 0x20)
			return NULL;
		if (c != '\\') {
			*w++ = *r++;
			continue;
		}
		r++;
		switch (*r) {
		case '"':
		case '\\':
		case '/':
			*w++ = *r++;
			break;
		case 'b':
			*w++ = '\b', r++;
			break;
		case 'f':
			*w++ = '\f', r++;
			break;
		case 'n':
			*w++ = '\n', r++;
			break;
		case 'r':
			*w++ = '\r', r++;
			break;
		case 't':
			*w++ = '\t', r++;
			break;
		case 'u': {
			long cp = hex4(r + 1);

			if (cp < 0)
				return NULL;
			r += 5;
			if (cp >= 0xD800 && cp <= 0xDBFF && r[0] == '\\' && r[1] == 'u') {
				long lo = hex4(r + 2);

				if (lo >= 0xDC00 && lo <= 0xDFFF) {
					cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
					r += 6;
				}
			}
			if (cp == 0)
				return NULL; /* a NUL cannot travel in a C string */
			w = put_utf8(w, (unsigned long)cp);
			break;
		}
		default:
			return NULL;
		}
	}
	*w = '\0';
	return r + 1;
}

int svc_relay_parse_headers(char *json, struct svc_amqp_header *out, size_t max, size_t *n)
{
	char *p = skip_ws(json);

	*n = 0;
	if (*p != '{')
		return SVC_EINVAL;
	p = skip_ws(p + 1);
	if (*p == '}')
		return *skip_ws(p + 1) == '\0' ? 0 : SVC_EINVAL;
	for (;;) {
		char *key, *val, c;

		if (*p != '"' || !(p = parse_string(p, &key)))
			return SVC_EINVAL;
		p = skip_ws(p);
		if (*p != ':')
			return SVC_EINVAL;
		p = skip_ws(p + 1);
		if (*p == '"') {
			if (!(p = parse_string(p, &val)))
				return SVC_EINVAL;
			c = *p;
		} else if (*p == '-' || (*p >= '0' && *p <= '9') || *p == 't' || *p == 'f' ||
		           *p == 'n') {
			val = p;
			while ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || *p == '-' ||
			       *p == '+' || *p == '.' || *p == 'E')
				p++;
			c = *p;
			*p = '\0'; /* terminates the scalar; c keeps the delimiter */
		} else {
			return SVC_EINVAL; /* nested objects and arrays are not AMQP string headers
			                    */
		}
		if (*n == max)
			return SVC_EINVAL;
		out[*n].key = key;
		out[*n].value = val;
		(*n)++;
		if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
			p = skip_ws(p + 1);
			c = *p;
		}
		if (c == '}')
			return *skip_ws(p + 1) == '\0' ? 0 : SVC_EINVAL;
		if (c != ',')
			return SVC_EINVAL;
		p = skip_ws(p + 1);
	}
}

/* ---- the relay ---------------------------------------------------------------------------- */

enum ex_state { EX_KNOWN = 1, EX_MISSING = 2 };

struct ex_slot {
	char *name; /* NULL = free */
	uint8_t state;
	int fails;
	double until; /* EX_MISSING: do not try before */
};

struct relay {
	const struct svc_config *cfg;
	volatile sig_atomic_t *stop;

	struct svc_pg pg;
	bool db_up;
	int db_fails;
	double db_retry_at;
	double db_last_ok;

	struct svc_amqp *mq;
	bool mq_up;
	int mq_fails;
	double mq_retry_at;
	char conn_name[160];

	struct svc_relay_sql q;
	struct svc_flight fl;
	struct svc_amqp_confirm conf[N_CONFIRMS];

	struct ex_slot *ex; /* open addressing, power-of-two size */
	size_t ex_cap, ex_used;

	bool held[SVC_RELAY_PARTITIONS];
	bool releasing[SVC_RELAY_PARTITIONS];
	bool claimable[SVC_RELAY_PARTITIONS];
	int n_claimable;
	long members;

	bool listen;        /* LISTEN active and verified */
	bool listen_tested; /* the start-up check ran */
	bool work;          /* claim as soon as possible */
	double next_poll, next_due, next_rebalance, next_stats;
	int64_t isolate_upto; /* publish one at a time up to this id (0 = off) */

	int64_t *defer_ids; /* rows kept for later within the current batch */
	size_t n_defer;
	char defer_reason[300];
	int64_t *park_ids;
	size_t n_park;
	int64_t *skip_ids; /* the ids in flight, for the claim */
	char park_reason[300];
	int64_t *del_ids; /* confirmed rows not deleted yet: the next claim deletes them */
	size_t n_del, del_cap;
	double del_since; /* when the oldest of them was confirmed */

	struct svc_amqp_header hdrs[MAX_HEADERS];
	char *hdrbuf;
	size_t hdrcap;

	uint64_t published, confirmed, returned, nacked, parked, deferred;
	unsigned int seed;
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double rnd(struct relay *r)
{
	return (double)rand_r(&r->seed) / RAND_MAX;
}

/* -- exchange cache -- */

static uint32_t str_hash(const char *s)
{
	uint32_t h = 2166136261u;

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

static struct ex_slot *ex_find(struct relay *r, const char *name, bool create)
{
	size_t i;

	if (r->ex_cap == 0 || (create && (r->ex_used + 1) * 2 > r->ex_cap)) {
		size_t ncap = r->ex_cap ? r->ex_cap * 2 : 64;
		struct ex_slot *n = calloc(ncap, sizeof(*n));

		if (!n)
			return NULL;
		for (size_t k = 0; k < r->ex_cap; k++) {
			if (!r->ex[k].name)
				continue;
			i = str_hash(r->ex[k].name) & (ncap - 1);
			while (n[i].name)
				i = (i + 1) & (ncap - 1);
			n[i] = r->ex[k];
		}
		free(r->ex);
		r->ex = n;
		r->ex_cap = ncap;
	}
	i = str_hash(name) & (r->ex_cap - 1);
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
	r->ex[i].fails = 0;
	r->ex[i].until = 0;
	r->ex_used++;
	return &r->ex[i];
}

/* Forgets which exchanges were checked (new connection or channel error). Missing marks are
 * kept so their backoff goes on. */
static void ex_forget_known(struct relay *r)
{
	for (size_t i = 0; i < r->ex_cap; i++)
		if (r->ex[i].name && r->ex[i].state == EX_KNOWN)
			r->ex[i].state = 0;
}

static void ex_free_all(struct relay *r)
{
	for (size_t i = 0; i < r->ex_cap; i++)
		free(r->ex[i].name);
	free(r->ex);
	r->ex = NULL;
	r->ex_cap = r->ex_used = 0;
}

/* -- connections -- */

static void db_lost(struct relay *r, const char *what)
{
	if (r->db_up)
		svc_error(COMP, "database: %s: %s", what, svc_pg_error(&r->pg));
	svc_pg_close(&r->pg);
	r->db_up = false;
	/* The session's advisory locks are gone: another relay may own these partitions now. */
	memset(r->held, 0, sizeof(r->held));
	memset(r->releasing, 0, sizeof(r->releasing));
	memset(r->claimable, 0, sizeof(r->claimable));
	r->n_claimable = 0;
	/* Confirms still to come cannot be recorded: forget them (the rows are sent again). */
	svc_flight_clear(&r->fl);
	r->n_defer = r->n_park = 0;
	r->db_retry_at =
	    now_s() + svc_backoff(r->db_fails++, 0.5, r->cfg->reconnect_max_delay, rnd(r));
}

static void mq_lost(struct relay *r, const char *what)
{
	if (r->mq_up)
		svc_error(COMP, "broker: %s: %s", what, svc_amqp_error(r->mq));
	svc_amqp_close(r->mq);
	r->mq_up = false;
	svc_flight_clear(&r->fl);
	ex_forget_known(r);
	r->mq_retry_at =
	    now_s() + svc_backoff(r->mq_fails++, 0.5, r->cfg->reconnect_max_delay, rnd(r));
}

static int rebalance(struct relay *r);
static void flush_deletes(struct relay *r);

static bool listen_check(struct relay *r)
{
	double deadline = now_s() + LISTEN_CHECK_MS / 1000.0;
	bool got = false;

	if (svc_relay_notify(&r->pg, &r->q, "svccomm-listen-check") != 0)
		return false;
	while (!got) {
		PGnotify *n;
		struct pollfd pfd = {.fd = PQsocket(r->pg.conn), .events = POLLIN};
		double left = deadline - now_s();

		if (!PQconsumeInput(r->pg.conn))
			return false;
		while ((n = PQnotifies(r->pg.conn))) {
			if (strcmp(n->extra, "svccomm-listen-check") == 0)
				got = true;
			PQfreemem(n);
		}
		if (got || left <= 0)
			break;
		poll(&pfd, 1, (int)(left * 1000) + 1);
	}
	return got;
}

static void db_connect(struct relay *r)
{
	bool want_listen = strcmp(r->cfg->publisher_mode, "poll") != 0;

	if (svc_pg_connect(&r->pg, r->cfg->database_url, "svccomm-relay") != 0) {
		svc_warn(COMP, "database: cannot connect: %s", svc_pg_error(&r->pg));
		r->db_retry_at =
		    now_s() + svc_backoff(r->db_fails++, 0.5, r->cfg->reconnect_max_delay, rnd(r));
		return;
	}
	r->db_up = true;
	/* Deletes of confirmed rows need no fsync: after a crash a lost delete only means the
	 * row is published again, which consumers already handle (at-least-once). The claim's
	 * plan does not depend on its arrays (always the id order), so the prepared statements
	 * are planned once, not at each execution (planning a long skip list costs per id). */
	if (svc_pg_exec(&r->pg,
	                "SELECT set_config('synchronous_commit', 'off', false), "
	                "set_config('plan_cache_mode', 'force_generic_plan', false)",
	                0, NULL, NULL) != 0 ||
	    svc_relay_join(&r->pg, &r->q) != 0)
		goto fail;
	if (want_listen && (r->listen || !r->listen_tested)) {
		if (svc_relay_listen(&r->pg, &r->q) != 0)
			goto fail;
		if (!r->listen_tested) {
			r->listen_tested = true;
			r->listen = listen_check(r);
			if (PQstatus(r->pg.conn) != CONNECTION_OK)
				goto fail;
			if (!r->listen)
				svc_warn(COMP,
				         "LISTEN \"%s\": no notification came back within %d "
				         "ms; falling back to polling every %.3g s",
				         r->q.channel, LISTEN_CHECK_MS,
				         r->cfg->publisher_poll_interval);
		}
	}
	if (r->db_fails > 0)
		svc_info(COMP, "database: reconnected");
	r->db_fails = 0;
	r->db_last_ok = now_s();
	r->work = true; /* catch up */
	r->next_rebalance = 0;
	if (rebalance(r) != 0 && !r->db_up)
		return;
	return;
fail:
	db_lost(r, "setting up the session");
}

static void mq_connect(struct relay *r)
{
	int rc = svc_amqp_connect(r->mq, r->cfg->broker_url, (int)r->cfg->heartbeat, r->conn_name);

	if (rc == 0)
		rc = svc_amqp_confirm_select(r->mq);
	if (rc != 0) {
		svc_warn(COMP, "broker: cannot connect: %s", svc_amqp_error(r->mq));
		svc_amqp_close(r->mq);
		r->mq_retry_at =
		    now_s() + svc_backoff(r->mq_fails++, 0.5, r->cfg->reconnect_max_delay, rnd(r));
		return;
	}
	if (r->mq_fails > 0)
		svc_info(COMP, "broker: reconnected");
	r->mq_up = true;
	r->mq_fails = 0;
	r->work = true;
	ex_forget_known(r);
}

/* -- partitions -- */

static void update_claimable(struct relay *r)
{
	r->n_claimable = 0;
	for (int p = 0; p < SVC_RELAY_PARTITIONS; p++) {
		r->claimable[p] = r->held[p] && !r->releasing[p];
		r->n_claimable += r->claimable[p];
	}
}

static int rebalance(struct relay *r)
{
	int cand[SVC_RELAY_PARTITIONS], got[SVC_RELAY_PARTITIONS];
	size_t ncand = 0, ngot = 0;
	long target, nheld = 0, nkeep = 0;
	int rc, start;

	r->next_rebalance = now_s() + REBALANCE_PERIOD;
	if ((rc = svc_relay_members(&r->pg, &r->q, &r->members)) != 0)
		goto fail;
	if (r->members < 1)
		r->members = 1;
	target = (SVC_RELAY_PARTITIONS + r->members - 1) / r->members;
	for (int p = 0; p < SVC_RELAY_PARTITIONS; p++) {
		nheld += r->held[p];
		nkeep += r->held[p] && !r->releasing[p];
	}
	/* Give back the highest partitions beyond the target; no new claims from them. */
	for (int p = SVC_RELAY_PARTITIONS - 1; p >= 0 && nkeep > target; p--) {
		if (r->held[p] && !r->releasing[p]) {
			r->releasing[p] = true;
			nkeep--;
		}
	}
	/* Unlock the ones given back once none of their rows is in flight, and none waits for
	 * its delete either: the next owner would publish it again. */
	for (int p = 0; p < SVC_RELAY_PARTITIONS; p++) {
		if (!r->releasing[p] || r->fl.part_count[p] > 0)
			continue;
		if (r->n_del > 0)
			flush_deletes(r);
		if (!r->db_up)
			return SVC_ECONN;
		if (r->n_del > 0)
			break;
		if ((rc = svc_relay_unlock_part(&r->pg, &r->q, p)) != 0)
			goto fail;
		r->held[p] = r->releasing[p] = false;
		nheld--;
		svc_debug(COMP, "released partition %d", p);
	}
	/* Take free partitions up to the target; each relay starts looking at its own offset. */
	if (nheld < target) {
		start = (int)(getpid() % SVC_RELAY_PARTITIONS);
		for (int i = 0; i < SVC_RELAY_PARTITIONS; i++) {
			int p = (start + i) % SVC_RELAY_PARTITIONS;

			if (!r->held[p])
				cand[ncand++] = p;
		}
		if ((rc = svc_relay_lock_parts(&r->pg, &r->q, cand, ncand, target - nheld, got,
		                               &ngot)) != 0)
			goto fail;
		for (size_t i = 0; i < ngot; i++)
			r->held[got[i]] = true;
		if (ngot > 0) {
			r->work = true;
			svc_info(COMP, "%ld relay(s); took %zu partition(s), holding %ld of %d",
			         r->members, ngot, nheld + (long)ngot, SVC_RELAY_PARTITIONS);
		}
	}
	update_claimable(r);
	r->db_last_ok = now_s();
	return 0;
fail:
	if (rc == SVC_ECONN)
		db_lost(r, "rebalancing partitions");
	else
		svc_error(COMP, "rebalancing partitions: %s", svc_pg_error(&r->pg));
	return rc;
}

/* -- SQL for decided rows -- */

static void flush_lists(struct relay *r)
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
		if (rc == 0)
			r->parked += r->n_park;
		r->n_park = 0;
	}
	if (rc == SVC_ECONN)
		db_lost(r, "updating rows");
	else if (rc)
		svc_error(COMP, "updating rows: %s", svc_pg_error(&r->pg));
	else
		r->db_last_ok = now_s();
}

static void defer_row(struct relay *r, int64_t id, const char *reason)
{
	if (r->n_defer && strcmp(r->defer_reason, reason) != 0)
		flush_lists(r);
	snprintf(r->defer_reason, sizeof(r->defer_reason), "%.*s", (int)sizeof(r->defer_reason) - 1,
	         reason);
	r->defer_ids[r->n_defer++] = id;
	if (r->n_defer == r->fl.cap)
		flush_lists(r);
}

static void park_row(struct relay *r, int64_t id, const char *reason)
{
	svc_error(COMP, "outbox row %" PRId64 " can never be sent and is parked: %s", id, reason);
	if (r->n_park && strcmp(r->park_reason, reason) != 0)
		flush_lists(r);
	snprintf(r->park_reason, sizeof(r->park_reason), "%s", reason);
	r->park_ids[r->n_park++] = id;
	if (r->n_park == r->fl.cap)
		flush_lists(r);
}

/* Deletes the confirmed rows in one statement of their own: used when no claim is coming soon
 * to carry them (caught up, no partitions, shutdown, a partition to hand over, a full list). A
 * failure keeps them for a later attempt: they are confirmed, deleting them late is correct. */
static void flush_deletes(struct relay *r)
{
	int rc;

	if (r->n_del == 0 || !r->db_up)
		return;
	rc = svc_relay_delete(&r->pg, &r->q, r->del_ids, r->n_del);
	if (rc == SVC_ECONN) {
		db_lost(r, "deleting confirmed rows");
	} else if (rc) {
		svc_error(COMP, "deleting confirmed rows: %s", svc_pg_error(&r->pg));
	} else {
		r->n_del = 0;
		r->db_last_ok = now_s();
	}
}

/* Reschedules the rows the broker refused or returned (with "keep") at once, and queues the
 * confirmed ones for deletion. */
static void settle(struct relay *r)
{
	struct svc_flight_out *o = &r->fl.out;
	bool drop = strcmp(r->cfg->publisher_unroutable, "keep") != 0;
	int rc = 0;

	if (svc_flight_harvest(&r->fl) == 0)
		return;
	svc_debug(COMP, "settled %zu acked, %zu returned, %zu nacked; in flight %zu", o->n_acked,
	          o->n_returned, o->n_nacked, r->fl.count);
	r->confirmed += o->n_acked;
	r->returned += o->n_returned;
	r->nacked += o->n_nacked;
	if (!r->db_up)
		return;
	if (o->n_returned) {
		if (drop) {
			svc_info(COMP,
			         "%zu unroutable message(s) dropped (no queue bound), first row "
			         "%" PRId64,
			         o->n_returned, o->returned[0]);
			/* deleted with the acked rows below */
			memcpy(o->acked + o->n_acked, o->returned, o->n_returned * sizeof(int64_t));
			o->n_acked += o->n_returned;
		} else {
			svc_warn(COMP,
			         "%zu unroutable message(s) kept for a retry, first row "
			         "%" PRId64,
			         o->n_returned, o->returned[0]);
			rc = svc_relay_reschedule(&r->pg, &r->q, o->returned, o->n_returned,
			                          r->cfg->reconnect_max_delay,
			                          "unroutable: returned by the broker (NO_ROUTE)");
		}
	}
	if (rc == 0 && o->n_nacked) {
		svc_warn(COMP, "%zu message(s) refused by the broker (nack), first row %" PRId64,
		         o->n_nacked, o->nacked[0]);
		rc = svc_relay_reschedule(&r->pg, &r->q, o->nacked, o->n_nacked,
		                          r->cfg->reconnect_max_delay,
		                          "refused by the broker (nack)");
	}
	if (rc == SVC_ECONN) {
		db_lost(r, "rescheduling rows");
		return;
	}
	if (rc)
		svc_error(COMP, "rescheduling rows: %s", svc_pg_error(&r->pg));
	else if (o->n_returned || o->n_nacked)
		r->db_last_ok = now_s();
	/* Confirmed rows are deleted by the next claim (same statement); make room if needed. */
	if (r->n_del + o->n_acked > r->del_cap)
		flush_deletes(r);
	if (r->n_del + o->n_acked > r->del_cap)
		return; /* could not delete: these rows are published again later */
	if (r->n_del == 0 && o->n_acked)
		r->del_since = now_s();
	memcpy(r->del_ids + r->n_del, o->acked, o->n_acked * sizeof(int64_t));
	r->n_del += o->n_acked;
}

static void on_return(void *ctx, uint64_t seq, const char *text)
{
	struct relay *r = ctx;

	svc_debug(COMP, "message %" PRIu64 " returned: %s", seq, text);
	svc_flight_return(&r->fl, seq);
}

/* The broker closed the channel (amqp_conn reopened it, sequence numbers restart). */
static void channel_error(struct relay *r)
{
	int code = svc_amqp_reply_code(r->mq);
	int64_t last = 0;
	size_t pending = svc_flight_pending(&r->fl, &last);
	char reason[300];

	snprintf(reason, sizeof(reason), "%s", svc_amqp_error(r->mq));
	if (pending == 1 && r->isolate_upto > 0) {
		if (code == 404)
			defer_row(r, last, reason); /* the exchange may appear */
		else
			park_row(r, last, reason);
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
	ex_forget_known(r);
	flush_lists(r);
	if (!svc_amqp_is_open(r->mq))
		mq_lost(r, "reopening the channel");
}

/* Reads what the broker sent (waiting up to timeout_ms) and settles decided rows. */
static void handle_confirms(struct relay *r, int timeout_ms)
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
			mq_lost(r, "reading confirms");
			return;
		}
		if (rc == SVC_ETIMEOUT || n < N_CONFIRMS)
			return;
	}
}

/* Blocks until nothing is in flight (or a connection is lost or the deadline passes). */
static void drain(struct relay *r, double deadline)
{
	while (r->fl.count > 0 && r->mq_up && r->db_up) {
		double left = deadline - now_s();

		if (left <= 0)
			break;
		handle_confirms(r, left > 0.2 ? 200 : (int)(left * 1000) + 1);
	}
}

/* -- claim and publish -- */

/* Makes sure the exchange can be published to. Returns 1 (go), 0 (row deferred), or <0 when a
 * connection was lost. */
static int check_exchange(struct relay *r, const char *name, int64_t id)
{
	struct ex_slot *s;
	struct svc_amqp_exchange ex = {.name = name, .type = "topic"};
	double t = now_s();
	char reason[400];
	int rc;

	if (name[0] == '\0')
		return 1; /* the default exchange always exists and cannot be declared */
	if (strlen(name) > 255) {
		park_row(r, id, "exchange name longer than 255 bytes (AMQP limit)");
		return 0;
	}
	s = ex_find(r, name, true);
	if (!s)
		return SVC_ENOMEM;
	if (s->state == EX_KNOWN)
		return 1;
	if (s->state == EX_MISSING && t < s->until) {
		snprintf(reason, sizeof(reason), "exchange \"%s\" does not exist", name);
		defer_row(r, id, reason);
		return 0;
	}
	/* A declare is an RPC; a channel error would lose the confirms in flight, so settle them
	 * first. This happens once per exchange per connection. */
	if (r->fl.count > 0) {
		drain(r, now_s() + 30);
		if (!r->mq_up || !r->db_up)
			return SVC_ECONN;
		if (r->fl.count > 0) {
			mq_lost(r, "no confirms within 30 s");
			return SVC_ECONN;
		}
		s = ex_find(r, name, true); /* the table may have moved */
		if (!s)
			return SVC_ENOMEM;
	}
	rc = svc_amqp_declare_exchange(r->mq, &ex, r->cfg->do_not_declare);
	if (rc == SVC_EPROTO && !r->cfg->do_not_declare) {
		int code = svc_amqp_reply_code(r->mq);

		/* 406: it exists with other properties; 403: reserved (amq.*) or not ours to
		 * configure. Publishing works whenever it exists. */
		if (code == 406 || code == 403)
			rc = svc_amqp_declare_exchange(r->mq, &ex, true);
	}
	if (rc == 0) {
		if (s->state == EX_MISSING)
			svc_info(COMP, "exchange \"%s\" exists now", name);
		s->state = EX_KNOWN;
		s->fails = 0;
		return 1;
	}
	if (rc == SVC_EPROTO) {
		snprintf(reason, sizeof(reason), "%s", svc_amqp_error(r->mq));
		s->state = EX_MISSING;
		s->until = now_s() + svc_backoff(s->fails++, 0.5, r->cfg->reconnect_max_delay, 1.0);
		svc_error(COMP, "exchange \"%s\": %s; its rows are kept and retried", name, reason);
		defer_row(r, id, reason);
		return 0;
	}
	mq_lost(r, "declaring an exchange");
	return SVC_ECONN;
}

static int publish_row(struct relay *r, PGresult *res, int i, uint64_t *seq)
{
	const char *exchange = PQgetvalue(res, i, SVC_RELAY_COL_EXCHANGE);
	const char *rk = PQgetvalue(res, i, SVC_RELAY_COL_ROUTING_KEY);
	int64_t id = strtoll(PQgetvalue(res, i, SVC_RELAY_COL_ID), NULL, 10);
	struct svc_amqp_props props = {
	    .content_type = "application/json",
	    .message_id = PQgetvalue(res, i, SVC_RELAY_COL_MESSAGE_ID),
	    .correlation_id = PQgetisnull(res, i, SVC_RELAY_COL_CORRELATION_ID)
	                          ? NULL
	                          : PQgetvalue(res, i, SVC_RELAY_COL_CORRELATION_ID),
	    .app_id = r->cfg->app_id,
	    .timestamp = strtoll(PQgetvalue(res, i, SVC_RELAY_COL_CREATED), NULL, 10),
	    .persistent = true,
	};
	char reason[600];
	int rc;

	if (!PQgetisnull(res, i, SVC_RELAY_COL_HEADERS)) {
		const char *h = PQgetvalue(res, i, SVC_RELAY_COL_HEADERS);
		size_t len = (size_t)PQgetlength(res, i, SVC_RELAY_COL_HEADERS);

		if (len + 1 > r->hdrcap) {
			char *b = realloc(r->hdrbuf, len + 1);

			if (!b)
				return SVC_ENOMEM;
			r->hdrbuf = b;
			r->hdrcap = len + 1;
		}
		memcpy(r->hdrbuf, h, len + 1);
		if (svc_relay_parse_headers(r->hdrbuf, r->hdrs, MAX_HEADERS, &props.n_headers) !=
		    0) {
			park_row(r, id,
			         "headers must be a JSON object of at most 64 scalar values");
			return 0;
		}
		props.headers = r->hdrs;
	}
	rc = svc_amqp_publish(r->mq, exchange, rk, PQgetvalue(res, i, SVC_RELAY_COL_BODY),
	                      (size_t)PQgetlength(res, i, SVC_RELAY_COL_BODY), &props, true, seq);
	if (rc == 0) {
		r->published++;
		return 1;
	}
	if (rc == SVC_EINVAL || rc == SVC_EPROTO) {
		snprintf(reason, sizeof(reason), "%s", svc_amqp_error(r->mq));
		park_row(r, id, reason);
		if (rc == SVC_EINVAL)
			return 0;
	}
	mq_lost(r, "publishing");
	return SVC_ECONN;
}

static long claim_limit(struct relay *r)
{
	long batch = r->cfg->publisher_batch_size > 0 ? r->cfg->publisher_batch_size : 1;
	long space = (long)svc_flight_free(&r->fl);

	if (r->isolate_upto > 0)
		return r->fl.count == 0 ? 1 : 0;
	if (space < batch) {
		/* Wait for a useful amount of room unless nothing is in flight. */
		long want = batch < (long)r->fl.cap / 4 ? batch : (long)r->fl.cap / 4;

		if (want < 1)
			want = 1;
		if (space < want && r->fl.count > 0)
			return 0;
		return space;
	}
	return batch;
}

/* Deletes the confirmed rows, claims one batch and publishes it. */
static void claim_and_publish(struct relay *r)
{
	long limit;
	int64_t blo = INT64_MAX, bhi = INT64_MIN;
	size_t n_skip;
	uint64_t last_seq = 0;
	PGresult *res = NULL;
	int rc, n, published = 0;

	/* Confirms that already arrived first: rows they settle leave the skip list and are
	 * deleted by this claim, and the window gets their room. */
	handle_confirms(r, 0);
	limit = claim_limit(r);
	if (limit <= 0 || r->n_claimable == 0 || !r->mq_up || !r->db_up)
		return;
	n_skip = svc_flight_ids(&r->fl, r->skip_ids);
	rc = svc_relay_claim(&r->pg, &r->q, limit, r->skip_ids, n_skip, r->del_ids, r->n_del,
	                     r->n_claimable == SVC_RELAY_PARTITIONS ? NULL : r->claimable, &res);
	if (rc == 0)
		r->n_del = 0; /* deleted in the same transaction */
	if (rc) {
		if (rc == SVC_ECONN)
			db_lost(r, "claiming rows");
		else
			svc_error(COMP, "claiming rows: %s", svc_pg_error(&r->pg));
		r->work = false;
		return;
	}
	r->db_last_ok = now_s();
	n = PQntuples(res);
	if (r->isolate_upto > 0 &&
	    (n == 0 || strtoll(PQgetvalue(res, 0, SVC_RELAY_COL_ID), NULL, 10) > r->isolate_upto)) {
		svc_info(COMP, "isolation done: back to pipelined publishing");
		r->isolate_upto = 0;
	}
	for (int i = 0; i < n && r->mq_up && r->db_up; i++) {
		int64_t id = strtoll(PQgetvalue(res, i, SVC_RELAY_COL_ID), NULL, 10);
		int part = (int)strtol(PQgetvalue(res, i, SVC_RELAY_COL_PART), NULL, 10);
		uint64_t seq = 0;

		rc = check_exchange(r, PQgetvalue(res, i, SVC_RELAY_COL_EXCHANGE), id);
		if (rc == 1)
			rc = publish_row(r, res, i, &seq);
		if (rc < 0)
			break;
		if (rc == 0)
			continue;
		if (svc_flight_add(&r->fl, seq, id, part) != 0) {
			/* cannot happen: the limit keeps the window */
			svc_error(COMP, "in-flight window out of sync; reconnecting");
			mq_lost(r, "bookkeeping");
			break;
		}
		last_seq = seq;
		published++;
		if (id < blo)
			blo = id;
		if (id > bhi)
			bhi = id;
	}
	if (published && r->mq_up && r->db_up)
		svc_flight_add_batch(&r->fl, blo, bhi, last_seq);
	svc_debug(COMP, "claimed %d of %ld, published %d, in flight %zu", n, limit, published,
	          r->fl.count);
	flush_lists(r);
	/* A full batch means more may be waiting; a short one means we caught up. */
	if (n < limit || !r->db_up || !r->mq_up) {
		r->work = r->isolate_upto > 0 && n > 0;
		if (r->db_up) {
			double secs;

			rc = svc_relay_next_due(&r->pg, &r->q, &secs);
			if (rc == SVC_ECONN)
				db_lost(r, "reading the next due time");
			else if (rc == 0)
				r->next_due = secs >= 0 ? now_s() + secs + 0.001 : 0;
		}
	}
	PQclear(res);
}

/* -- the loop -- */

static void stats(struct relay *r)
{
	long backlog = -1;
	double oldest = 0;

	if (r->db_up) {
		int rc = svc_relay_backlog(&r->pg, &r->q, &backlog, &oldest);

		if (rc == SVC_ECONN)
			db_lost(r, "reading the backlog");
	}
	svc_info(COMP,
	         "stats: published %" PRIu64 ", confirmed %" PRIu64 ", returned %" PRIu64
	         ", nacked %" PRIu64 ", parked %" PRIu64 ", deferred %" PRIu64
	         ", in flight %zu, backlog %ld, oldest due %.1f s, partitions %d, relays %ld",
	         r->published, r->confirmed, r->returned, r->nacked, r->parked, r->deferred,
	         r->fl.count, backlog, oldest, r->n_claimable, r->members);
}

static void read_notifications(struct relay *r)
{
	PGnotify *n;

	if (!PQconsumeInput(r->pg.conn)) {
		snprintf(r->pg.error, sizeof(r->pg.error), "%s", PQerrorMessage(r->pg.conn));
		db_lost(r, "reading notifications");
		return;
	}
	while ((n = PQnotifies(r->pg.conn))) {
		r->work = true;
		PQfreemem(n);
	}
}

static double min_d(double a, double b)
{
	return a < b ? a : b;
}

static void wait_events(struct relay *r)
{
	struct pollfd pfd[2];
	int nfd = 0, mq_i = -1, pg_i = -1, timeout_ms;
	double t = now_s(), until = t + 1.0; /* wake at least every second */
	PGnotify *note;

	/* libpq reads notifications that arrive during any query (claim, delete, rebalance) into
	 * its own queue; the socket then has nothing new to poll for, so take them from there. */
	while (r->db_up && r->listen && (note = PQnotifies(r->pg.conn))) {
		r->work = true;
		PQfreemem(note);
	}
	if (r->work && r->mq_up && r->db_up && claim_limit(r) > 0 && r->n_claimable > 0)
		return;
	if (r->mq_up && svc_amqp_buffered(r->mq)) {
		handle_confirms(r, 0);
		return;
	}
	/* About to sleep. Confirmed rows wait for the next claim only while one is sure to come
	 * soon: more work, room expected from outstanding confirms, and not for too long. */
	if (r->n_del > 0 && (!r->work || !r->mq_up || r->n_claimable == 0 || r->fl.count == 0 ||
	                     t - r->del_since >= DELETE_MAX_WAIT))
		flush_deletes(r);
	if (r->n_del > 0)
		until = min_d(until, r->del_since + DELETE_MAX_WAIT);
	until = min_d(until, r->next_poll);
	until = min_d(until, r->next_rebalance);
	until = min_d(until, r->next_stats);
	if (r->next_due > 0)
		until = min_d(until, r->next_due);
	if (!r->db_up)
		until = min_d(until, r->db_retry_at);
	if (!r->mq_up)
		until = min_d(until, r->mq_retry_at);
	if (r->mq_up) {
		pfd[nfd].fd = svc_amqp_fd(r->mq);
		pfd[nfd].events = POLLIN;
		mq_i = nfd++;
	}
	if (r->db_up && r->listen) {
		pfd[nfd].fd = PQsocket(r->pg.conn);
		pfd[nfd].events = POLLIN;
		pg_i = nfd++;
	}
	timeout_ms = until > t ? (int)((until - t) * 1000) + 1 : 0;
	if (poll(pfd, (nfds_t)nfd, timeout_ms) < 0) {
		if (errno != EINTR)
			svc_error(COMP, "poll: %s", strerror(errno));
		return;
	}
	if (mq_i >= 0 && pfd[mq_i].revents)
		handle_confirms(r, 0);
	else if (r->mq_up)
		handle_confirms(r, 0); /* lets rabbitmq-c send and check heartbeats */
	if (pg_i >= 0 && r->db_up && pfd[pg_i].revents)
		read_notifications(r);
}

static void timers(struct relay *r)
{
	double t = now_s();

	if (!r->db_up && t >= r->db_retry_at)
		db_connect(r);
	if (!r->mq_up && t >= r->mq_retry_at)
		mq_connect(r);
	if (t >= r->next_poll) {
		r->work = true;
		r->next_poll =
		    t +
		    (r->cfg->publisher_poll_interval > 0 ? r->cfg->publisher_poll_interval : 1.0);
	}
	if (r->next_due > 0 && t >= r->next_due) {
		r->work = true;
		r->next_due = 0;
	}
	if (r->db_up && t >= r->next_rebalance)
		rebalance(r);
	if (r->db_up && t - r->db_last_ok > PROBE_IDLE) {
		int rc = svc_relay_probe(&r->pg);

		if (rc == SVC_ECONN)
			db_lost(r, "probe");
		else
			r->db_last_ok = t;
	}
	if (t >= r->next_stats) {
		if (r->cfg->stats_interval > 0)
			stats(r);
		r->next_stats = t + (r->cfg->stats_interval > 0 ? r->cfg->stats_interval : 3600);
	}
}

int svc_publisher_run(const struct svc_config *cfg, volatile sig_atomic_t *stop)
{
	struct relay *r;
	size_t window;
	int rc;

	if (!cfg->database_url || !*cfg->database_url) {
		svc_error(COMP, "DATABASE_URL is not set: the relay reads the outbox from it");
		return SVC_ECONFIG;
	}
	r = calloc(1, sizeof(*r));
	if (!r)
		return SVC_ENOMEM;
	r->cfg = cfg;
	r->stop = stop;
	r->seed = (unsigned int)getpid() ^ (unsigned int)time(NULL);
	svc_pg_init(&r->pg);
	window = cfg->publisher_window > 0 ? (size_t)cfg->publisher_window : 1;
	if ((rc = svc_relay_sql_init(&r->q, cfg->outbox_table)) != 0) {
		svc_error(COMP, "OUTBOX_TABLE \"%s\" is not a valid table name", cfg->outbox_table);
		rc = SVC_ECONFIG;
		goto out;
	}
	r->mq = svc_amqp_new();
	r->defer_ids = calloc(window, sizeof(int64_t));
	r->park_ids = calloc(window, sizeof(int64_t));
	r->skip_ids = calloc(window, sizeof(int64_t));
	r->del_cap = window;
	r->del_ids = calloc(window, sizeof(int64_t));
	if (!r->mq || !r->defer_ids || !r->park_ids || !r->skip_ids || !r->del_ids ||
	    svc_flight_init(&r->fl, window) != 0) {
		rc = SVC_ENOMEM;
		goto out;
	}
	snprintf(r->conn_name, sizeof(r->conn_name), "svccomm runpublisher %s pid %d", cfg->app_id,
	         (int)getpid());
	svc_info(COMP, "relay for table %s starting (mode %s, batch %ld, window %zu)", r->q.table,
	         cfg->publisher_mode, cfg->publisher_batch_size, window);
	r->next_stats = now_s() + (cfg->stats_interval > 0 ? cfg->stats_interval : 3600);
	while (!*stop) {
		timers(r);
		if (*stop)
			break;
		if (r->work && r->mq_up && r->db_up)
			claim_and_publish(r);
		if (*stop)
			break;
		wait_events(r);
	}
	svc_info(COMP, "stopping: waiting up to %.3g s for %zu outstanding confirm(s)",
	         cfg->shutdown_timeout, r->fl.count);
	drain(r, now_s() + cfg->shutdown_timeout);
	if (r->fl.count > 0)
		svc_warn(COMP,
		         "%zu message(s) still unconfirmed: their rows stay and are sent again",
		         r->fl.count);
	flush_lists(r);
	flush_deletes(r);
	if (r->cfg->stats_interval > 0)
		stats(r);
	rc = 0;
out:
	if (r->mq)
		svc_amqp_free(r->mq);
	svc_pg_release(&r->pg);
	svc_relay_sql_release(&r->q);
	svc_flight_release(&r->fl);
	ex_free_all(r);
	free(r->defer_ids);
	free(r->park_ids);
	free(r->skip_ids);
	free(r->del_ids);
	free(r->hdrbuf);
	free(r);
	return rc;
}
