/* internal: the relay's state and the functions its files call across each other. Not for use
 * outside src/relay/ (the public API is relay.h).
 *
 * Every file of the relay works on the one struct relay that svc_publisher_run() (loop.c)
 * allocates and owns: conn.c (both connections, their loss and reconnect), partitions.c
 * (advisory locks and rebalancing), exchanges.c (exchange cache and checks), settle.c (decided
 * rows: deletes, reschedules, parking, confirms and channel errors), claim.c (claim and
 * publish), trace.c (debug-only stage times). Single-threaded: nothing here is locked. */
#ifndef SVC_RELAY_INTERNAL_H
#define SVC_RELAY_INTERNAL_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "amqp/conn.h"
#include "metrics/metrics.h"
#include "amqp/nodes.h"
#include "outbox/relay_sql.h"
#include "pg/conn.h"
#include "relay/window.h"

#define COMP        "publisher"
#define MAX_HEADERS 64
#define N_CONFIRMS  512

struct svc_config;

enum ex_state { EX_KNOWN = 1, EX_MISSING = 2 };

/* One exchange of the cache (exchanges.c). */
struct ex_slot {
	char *name; /* NULL = free */
	uint8_t state;
	uint16_t metrics; /* relay_metrics_exchange()'s index, 0 before the first publish */
	int fails;
	double until; /* EX_MISSING: do not try before */
};

#define RELAY_EXM_MAX 60 /* exchanges with their own event series (4 each) */

/* The relay's metric series (metrics.c); every handle NULL without METRICS_ADDRESS. */
struct relay_metrics {
	bool on;
	svc_metric parked, backlog, oldest, claim_s, confirm_s, partitions;
	struct svc_metrics_conn conn;
	svc_metric exm[RELAY_EXM_MAX][4]; /* per exchange: published, confirmed, nacked, returned */
	size_t n_exm;
	bool mq_seen, db_seen; /* connected once: the next connect is a reconnect */
	double next_backlog;
};

struct relay {
	const struct svc_config *cfg;
	const char *content_type; /* of every message: WIRE_FORMAT's (outbox/envelope.h) */
	volatile sig_atomic_t *stop;

	struct svc_pg pg;
	bool db_up;
	int db_fails;
	double db_retry_at;
	double db_last_ok;

	struct svc_amqp *mq;
	struct svc_amqp_nodes nodes; /* BROKER_CONNECTION_URL */
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
	bool backlog;       /* the last claim came back full: claims may grow (claim.c) */
	double next_poll, next_due, next_rebalance, next_stats;
	double next_due_check; /* without LISTEN: when to read the next due time again */
	int64_t isolate_upto;  /* publish one at a time up to this id (0 = off) */

	/* The wake lock (sql/006_outbox_notify_auto.sql, claim.c): writers notify only while a
	 * relay holds it, so a relay holds it while it sleeps and gives it back when writers wake
	 * it; while it does not hold it, it claims often enough to find their rows. */
	enum {
		WAKE_NONE, /* not held */
		WAKE_NEW,  /* taken after a claim: the next claim sees what came before */
		WAKE_HELD, /* held; sleeping on it is safe */
	} wake;
	bool woken;             /* a notification arrived since the last claim */
	double short_poll;      /* seconds between claims while writers that did not notify
	                         * are in flight (0: not polling for them) */
	double next_short_poll; /* when the next such claim is due (0: none) */

	/* The last claim's rows, published as the window makes room (claim.c): rows
	 * [ahead_next, ahead_n) of `ahead` are claimed and not yet published. */
	PGresult *ahead;
	int ahead_next, ahead_n;
	double ahead_at;               /* svc_clock_mono() when the claim returned */
	struct timespec ahead_claimed; /* the same, wall clock (debug traces) */

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

	struct relay_metrics m;
	uint64_t published, confirmed, returned, nacked, parked, deferred;
	unsigned int seed;
};

/* ---- conn.c ---- */

/* Connects to the database and sets the session up (settings, membership, LISTEN and its
 * start-up check, first rebalance); on failure schedules the next attempt. */
void relay_db_connect(struct relay *r);
/* Connects to the broker with confirms on; on failure schedules the next attempt. */
void relay_mq_connect(struct relay *r);
/* Logs what failed, closes the session and forgets what it held (locks, window, lists). */
void relay_db_lost(struct relay *r, const char *what);
/* Logs what failed, closes the broker connection and forgets the window and known exchanges. */
void relay_mq_lost(struct relay *r, const char *what);

/* ---- partitions.c ---- */

/* Counts the relays, gives back partitions beyond this relay's share and takes free ones.
 * Returns 0 or the SVC_E* of the failure (already logged; SVC_ECONN: the session is lost). */
int relay_rebalance(struct relay *r);

/* ---- exchanges.c ---- */

/* Makes sure the exchange can be published to. Returns 1 (go), 0 (row deferred or parked), or
 * <0 when a connection was lost (SVC_ECONN) or memory ran out (SVC_ENOMEM). */
int relay_check_exchange(struct relay *r, const char *name, int64_t id);
/* Forgets which exchanges were checked (new connection or channel error); missing marks are
 * kept so their backoff goes on. */
void relay_ex_forget_known(struct relay *r);
/* Frees the cache. */
void relay_ex_free_all(struct relay *r);

/* ---- settle.c ---- */

/* Keeps row id for a later attempt (rescheduled with a backoff) with this reason. */
void relay_defer_row(struct relay *r, int64_t id, const char *reason);
/* Sets row id aside for good (parked) with this reason, logged as an error. */
void relay_park_row(struct relay *r, int64_t id, const char *reason);
/* Writes the deferred and parked rows to the table (one statement per kind). */
void relay_flush_lists(struct relay *r);
/* Deletes the confirmed rows waiting for a claim in a statement of their own. */
void relay_flush_deletes(struct relay *r);
/* Reads what the broker sent (waiting up to timeout_ms) and settles decided rows. */
void relay_handle_confirms(struct relay *r, int timeout_ms);
/* Blocks until nothing is in flight (or a connection is lost or the deadline passes). */
void relay_drain(struct relay *r, double deadline);

/* ---- claim.c ---- */

/* How many rows the next claim may take (0: not now: rows of the last claim still wait, or
 * isolation waits for the window to empty). */
long relay_claim_limit(struct relay *r);
/* True when rows of the last claim wait and the window has room for one. */
bool relay_ahead_ready(const struct relay *r);
/* When the rows of the last claim that still wait are to be forgotten and claimed afresh
 * (0: none wait). */
double relay_ahead_expiry(const struct relay *r);
/* Publishes the rows of the last claim that fit in the window; once none waits and there is
 * work, deletes the confirmed rows, claims the next batch and publishes what fits of it. */
void relay_claim_and_publish(struct relay *r);
/* Forgets the claimed rows not yet published (a lost connection, a partition given back, or
 * AHEAD_MAX_AGE passed): they stay in the table and the next claim takes them again. */
void relay_drop_ahead(struct relay *r);
/* Reads when the next scheduled row is due into r->next_due (0: none known). */
void relay_read_next_due(struct relay *r);

/* ---- trace.c (debug only: call when SVC_LOG_DEBUG >= svc_log_threshold) ---- */

/* Logs the "batch times" line of rows [from, to) of res: claimed is when the claim returned,
 * now when they were published. */
void relay_trace_batch(PGresult *res, int from, int to, struct timespec claimed);
/* Logs the "confirm times" line of the n rows whose confirms were just read. */
void relay_trace_confirmed(const int64_t *ids, size_t n);

/* ---- metrics.c ---- */

/* Makes the relay's series and hooks the window's decisions (nothing without a region). */
void relay_metrics_init(struct relay *r);
/* The event series index (tag) of a new exchange; 0 without metrics. */
uint16_t relay_metrics_exchange(struct relay *r, const char *exchange);
/* The row svc_flight_add() just added was published to the exchange of tag. */
void relay_metrics_published(struct relay *r, uint16_t tag);
/* Once per loop turn: heartbeat, connection gauges, readiness, the backlog every second. */
void relay_metrics_tick(struct relay *r, double now);
/* A connection opened (broker or database): counted as a reconnect after the first. */
void relay_metrics_connected(struct relay *r, bool broker);
/* The partitions held changed. */
void relay_metrics_partitions(struct relay *r);
/* The metrics tag of an exchange of the cache (made on first use); 0 without metrics. */
uint16_t relay_ex_metrics(struct relay *r, const char *name);

#endif
