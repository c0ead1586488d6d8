/* window: the relay's confirm window, the rows published but not yet confirmed, in publish
 * order (a ring of capacity = PUBLISHER_WINDOW). Pure bookkeeping: no I/O, so the unit tests
 * drive it directly.
 *
 * Each entry maps a publish sequence number of the channel to its outbox row id and partition.
 * basic.ack / basic.nack (possibly `multiple`) and basic.return decide entries; the decided
 * ones leave from the head, in publish order, sorted into acked / returned / nacked lists the
 * relay then deletes or reschedules. The struct owns its arrays; nothing else points into them
 * across calls. */
#ifndef SVC_RELAY_WINDOW_H
#define SVC_RELAY_WINDOW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "outbox/relay_sql.h"

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
	uint16_t tag; /* the caller's (the relay's exchange metrics), 0 when none */
	double sent;  /* the caller's: when it was published */
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
	uint64_t resolved_upto;                    /* every seq <= this is decided */
	uint32_t part_count[SVC_RELAY_PARTITIONS]; /* rows in flight per partition */
	struct svc_flight_out out;
	/* when set, svc_flight_harvest() shows it every entry it pops (metrics) */
	void (*on_decided)(void *arg, const struct svc_flight_entry *e);
	void *on_decided_arg;
};

/* Allocates for window entries (0 counts as 1). Returns 0 or SVC_ENOMEM. */
int svc_flight_init(struct svc_flight *f, size_t window);

/* Frees the arrays and zeroes the struct. */
void svc_flight_release(struct svc_flight *f);

/* Forgets everything (connection lost: the rows stay in the table and are claimed again). */
void svc_flight_clear(struct svc_flight *f);

/* Room left in the window. */
static inline size_t svc_flight_free(const struct svc_flight *f)
{
	return f->cap - f->count;
}

/* Adds a published row. seq must follow the previous one (first: any). SVC_EINVAL when full
 * or out of sequence. */
int svc_flight_add(struct svc_flight *f, uint64_t seq, int64_t id, int part);

/* The entry svc_flight_add() added last (NULL when empty): the caller may set tag and sent. */
struct svc_flight_entry *svc_flight_last(struct svc_flight *f);

/* Applies a basic.ack / basic.nack. Unknown sequence numbers are ignored. */
void svc_flight_confirm(struct svc_flight *f, uint64_t tag, bool multiple, bool ack);

/* Applies a basic.return for seq. Returns the outbox row id of seq, or 0 when unknown. */
int64_t svc_flight_return(struct svc_flight *f, uint64_t seq);
/* The same for the message of outbox row id, found by its id (a return told by its
 * message_id, which carries the row id: a scan of the window, returns are rare). */
int64_t svc_flight_return_id(struct svc_flight *f, int64_t id);

/* Pops every decided row from the head into f->out (reset first). Returns the number of rows
 * popped. */
size_t svc_flight_harvest(struct svc_flight *f);

/* Copies the ids of every row in flight (decided or not) to out (room for the window);
 * returns their number. Claims skip exactly these. */
size_t svc_flight_ids(const struct svc_flight *f, int64_t *out);

/* Highest row id still undecided (0 when none). */
int64_t svc_flight_max_pending_id(const struct svc_flight *f);

/* Number of undecided rows; *last (may be NULL) receives the id of the last of them. */
size_t svc_flight_pending(const struct svc_flight *f, int64_t *last);

#endif
