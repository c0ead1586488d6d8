/* publisher: the outbox relay loop (`svccomm runpublisher`), and the pure bookkeeping it is made
 * of (exposed for the unit tests): the in-flight window of published-but-unconfirmed rows, the
 * backoff and the parser for the headers column. The mechanism is described at the top of
 * publisher.c. */
#ifndef SVC_PUBLISHER_H
#define SVC_PUBLISHER_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "amqp/conn.h"
#include "outbox/relay_sql.h"

struct svc_config;

/* Runs the relay until *stop becomes nonzero, then drains outstanding confirms (up to
 * SHUTDOWN_TIMEOUT). Reconnects to both servers forever. Returns 0 after a clean stop or a
 * negative SVC_E* for errors that retrying cannot fix (bad settings, out of memory). */
int svc_publisher_run(const struct svc_config *cfg, volatile sig_atomic_t *stop);

/* ---- in-flight bookkeeping ---------------------------------------------------------------- */

enum svc_flight_state {
	SVC_FLIGHT_PENDING,
	SVC_FLIGHT_RETURNED, /* basic.return seen, confirm not yet */
	SVC_FLIGHT_ACKED,
	SVC_FLIGHT_RETURNED_ACKED,
	SVC_FLIGHT_NACKED,
};

struct svc_flight_entry {
	uint64_t seq; /* publish sequence number */
	int64_t id;   /* outbox row id */
	int16_t part; /* partition of the row */
	uint8_t state;
};

/* A claimed batch: the range of row ids it published and its last sequence number. */
struct svc_flight_batch {
	int64_t lo, hi;
	uint64_t last_seq;
};

/* Rows whose fate the broker decided, popped in publish order by svc_flight_harvest(). The
 * arrays are owned by struct svc_flight and reused. */
struct svc_flight_out {
	int64_t *acked; /* confirmed: delete */
	size_t n_acked;
	int64_t *returned; /* unroutable (returned, then acked) */
	size_t n_returned;
	int64_t *nacked; /* refused: keep */
	size_t n_nacked;
};

/* Published rows awaiting their confirm, in sequence order (a ring of capacity = window). */
struct svc_flight {
	struct svc_flight_entry *ring;
	size_t cap, head, count;
	uint64_t resolved_upto; /* every seq <= this is decided */
	struct svc_flight_batch *batches;
	size_t bcap, bhead, bcount;
	uint32_t part_count[SVC_RELAY_PARTITIONS]; /* rows in flight per partition */
	struct svc_flight_out out;
};

/* Allocates for window entries. Returns 0 or SVC_ENOMEM. */
int svc_flight_init(struct svc_flight *f, size_t window);
void svc_flight_release(struct svc_flight *f);
/* Forgets everything (connection lost: the rows stay in the table and are claimed again). */
void svc_flight_clear(struct svc_flight *f);
static inline size_t svc_flight_free(const struct svc_flight *f)
{
	return f->cap - f->count;
}
/* Adds a published row. seq must follow the previous one (first: any). SVC_EINVAL when full
 * or out of sequence. */
int svc_flight_add(struct svc_flight *f, uint64_t seq, int64_t id, int part);
/* Records a claimed batch (the ids it published span [lo, hi], last_seq its last message). */
int svc_flight_add_batch(struct svc_flight *f, int64_t lo, int64_t hi, uint64_t last_seq);
/* Applies a basic.ack / basic.nack. Unknown sequence numbers are ignored. */
void svc_flight_confirm(struct svc_flight *f, uint64_t tag, bool multiple, bool ack);
/* Applies a basic.return for seq. */
void svc_flight_return(struct svc_flight *f, uint64_t seq);
/* Pops every decided row from the head into f->out (reset first) and the batches whose rows
 * are all decided. Returns the number of rows popped. */
size_t svc_flight_harvest(struct svc_flight *f);
/* Copies the ids of every row in flight (decided or not) to out (room for the window);
 * returns their number. Claims skip exactly these. */
size_t svc_flight_ids(const struct svc_flight *f, int64_t *out);
/* The id range spanned by the unconfirmed batches (for diagnostics). False when none. */
bool svc_flight_exclusion(const struct svc_flight *f, int64_t *lo, int64_t *hi);
/* Highest row id still undecided (0 when none). */
int64_t svc_flight_max_pending_id(const struct svc_flight *f);
/* Number of undecided rows; *last receives the id of the last one when exactly one. */
size_t svc_flight_pending(const struct svc_flight *f, int64_t *last);

/* ---- helpers ------------------------------------------------------------------------------ */

/* Capped exponential backoff with jitter: min(cap, base * 2^attempt) scaled by a factor in
 * [0.5, 1.0] chosen by rnd (in [0, 1]). */
double svc_backoff(int attempt, double base, double cap, double rnd);

/* Parses the headers column (a JSON object) in place: string values are unescaped; numbers,
 * true, false and null keep their JSON text. json is modified; out[i] points into it.
 * Returns 0, or SVC_EINVAL (not an object, nested value, bad JSON, more than max entries). */
int svc_relay_parse_headers(char *json, struct svc_amqp_header *out, size_t max, size_t *n);

#endif
