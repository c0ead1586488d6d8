/* consumer/internal.h: the consumer's state and the functions its files share (not an API:
 * only src/consumer/ includes it). One struct svc_consumer lives on svc_consumer_run()'s stack
 * for the whole process; a session is one connection of each kind, from connect to loss. */
#ifndef SVC_CONSUMER_INTERNAL_H
#define SVC_CONSUMER_INTERNAL_H

#include <lua.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "amqp/nodes.h"
#include "consumer/consumer.h"
#include "lua/runtime.h"
#include "metrics/metrics.h"
#include "outbox/batch.h"
#include "pg/conn.h"
#include "util/log.h"

#define LOG         "consumer"
#define ERROR_LINES 6 /* lines of an error text a republished copy carries */
#define HANDLER_SZ  256
#define MSG_ID(d)   ((d)->message_id ? (d)->message_id : "-")
#define INFRA_BACKOFF_BASE_S                                                                       \
	0.5 /* first pause after a database failure that is not the message's */

/* The helper thread of watch.c (see there); its fields are under mu. */
struct svc_consumer_watch {
	pthread_t th;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool running, stop, armed, cancelled;
	double deadline; /* svc_clock_mono() time to cancel the statement at; 0: none */
	double next_hb, hb_interval;
	PGcancel *cancel;
	struct svc_amqp *in, *out;
};

/* The consumer's metric series (metrics/metrics.h), made once; NULL handles without
 * METRICS_ADDRESS (every update is then a no-op). */
struct svc_consumer_metrics {
	svc_metric received, ok, skipped, expired, unrouted, retried, dead, dup, refused;
	svc_metric failures, handler_s, batch_size, commit_s, in_flight, consuming, lua_mem;
	struct svc_metrics_conn conn;
	char queue[SVC_METRICS_LABELS_MAX]; /* queue="<QUEUE>" */
};

struct svc_consumer {
	const struct svc_config *cfg;
	struct svc_runtime *rt;
	lua_State *L;
	int worker;
	int ref_handle, ref_last_handler, ref_enter, ref_leave, ref_setctx, ref_clearctx;
	int ref_conn; /* userdata lending pg to Lua for this session */
	/* The message whose handler runs now (NULL between handlers): message.properties is
	 * built from it on first access (lua_bridge.c). */
	const struct svc_consumer_msg *cur_msg;
	bool lua_recycle;       /* replace the Lua state at the next point between batches */
	bool lua_unusable;      /* replacing it failed: no handler can run, the worker stops */
	size_t lua_fresh_bytes; /* what the state used right after its last replacement */
	struct svc_consumer_devwatch *dev; /* devconsumer's file watch, NULL otherwise */

	struct svc_amqp_nodes nodes; /* BROKER_CONNECTION_URL: both connections use one node */
	struct svc_amqp *in;         /* consumes */
	struct svc_amqp *out;        /* publishes retries and dead letters, confirm mode */
	struct svc_amqp_consumer cs;
	struct svc_pg pg; /* pg.conn NULL without DATABASE_URL or between sessions */
	char inbox_table[160];
	char inbox_sql[256];
	char cleanup_sql[512];
	bool inbox_warned_no_id; /* "inbox cannot deduplicate ..." logged (once per process) */
	unsigned generation;
	bool connected_once;

	struct svc_delivery d;

	unsigned char copy_key[SVC_COPY_KEY_LEN]; /* signs retry and dead-letter copies */

	/* retry queues: one per distinct delay, in RETRY_DELAYS order */
	long *delay_ms;
	char dlq[260];
	size_t limit; /* batch limit */
	size_t solo;  /* messages to commit one by one after a failed COMMIT */

	/* open batch */
	bool in_tx;
	bool sp_open;
	size_t batch_n;
	uint64_t *tags;
	bool *settled; /* outcome published (retry/DLQ): ack even when the COMMIT fails */
	char **ids;    /* AMQP message_id of each batch slot ("" when none), buffers reused */
	size_t *idcap;
	double batch_start;
	unsigned batch_gen;
	/* outcomes that are true only once the batch is acked ("...: acked"), NUL-separated,
	 * logged after the ack; notes_more counts those that did not fit */
	char notes[4096];
	size_t notes_len, notes_more;
	/* ids of the latest committed messages (committed.c), a ring of reused buffers */
	char **ring;
	size_t *ringcap;
	size_t ring_n, ring_next;
	struct svc_consumer_watch watch;
	PGcancel *pg_cancel;     /* for c->pg.conn; NULL between sessions */
	unsigned infra_failures; /* database failures in a row that were not the messages' */

	struct svc_consumer_metrics m;
	/* stats */
	unsigned long long received, ok, retried, dead, unrouted, dup, skipped;
	unsigned long long last_received;
	/* dead letters the DLQ refused (a nack, e.g. max-length with reject-publish) */
	unsigned long long dlq_refused, dlq_refused_unlogged;
	double dlq_refused_logged;
	double last_stats, last_cleanup, last_out_poll, last_queue_check;
	double last_bind_check; /* bindings declared again (deleted exchanges take them along) */
	char pending_error[2048];
};

/* One delivery as the consumer handles it: where it was first published, which attempt. */
struct svc_consumer_msg {
	const struct svc_delivery *d;
	const char *exchange;
	const char *routing_key;
	long attempt;
};

/* What a handler call returned. */
struct svc_handler_result {
	bool failed;    /* raised, timed out or ran out of memory */
	bool permanent; /* raised an error table with permanent = true */
	char status[16];
	char reason[512];
	char infra[6]; /* failed because a statement failed for the database's reasons: its
	                  SQLSTATE (pg/errclass.h), else "" */
	               /* the error text is in c->pending_error */
};

/* ---- signals.c ---- */

/* Set by the first SIGTERM/SIGINT after svc_consumer_signals_install(). */
extern volatile sig_atomic_t svc_consumer_stop;

/* Clears the stop flag and installs the handlers: stop on the first SIGTERM/SIGINT, exit at
 * once on the second or when shutdown_timeout seconds passed after the first. */
void svc_consumer_signals_install(double shutdown_timeout);
/* Cancels the shutdown alarm. */
void svc_consumer_signals_disarm(void);
/* Sleeps up to seconds, waking early on a stop signal. */
void svc_consumer_nap(double seconds);

/* ---- lua_bridge.c ---- */

/* Requires svccomm.dispatch (and, when present, svccomm.db and svccomm.events) and keeps
 * references to the functions the consumer calls; 0 or SVC_ELUA. */
int svc_consumer_lua_setup(struct svc_consumer *c);
/* Runs dispatch.handle() for m under the handler deadline and fills res. */
void svc_consumer_lua_handle(struct svc_consumer *c, const struct svc_consumer_msg *m,
                             struct svc_handler_result *res);
/* Copies the name of the handler that ran last ("" when unknown) into out. */
void svc_consumer_lua_last_handler(struct svc_consumer *c, char *out, size_t outsz);
/* Lends c->pg.conn to Lua (svccomm.db inside handlers); 0 or SVC_ELUA with the text in
 * c->pg.error. */
int svc_consumer_lua_lend(struct svc_consumer *c);
/* Takes the lent connection back: a userdata a handler kept raises from then on. */
void svc_consumer_lua_unlend(struct svc_consumer *c);
/* True when the Lua state should be replaced: a handler hit the memory cap, or the state is
 * still near it after a full collection (a leak in a global table). */
bool svc_consumer_lua_wants_recycle(struct svc_consumer *c);
/* Between messages, outside a transaction: replaces the Lua state by a fresh one with the
 * settings and apps loaded again, keeping the connections; logged. 0 or a negative code. */
int svc_consumer_lua_recycle(struct svc_consumer *c);
/* Between messages, outside a transaction: loads settings and apps into a new state and, when
 * they load (syntax, duplicate routes...), puts it in place of the current one, keeping the
 * connections; else keeps the current one. 0, or SVC_ELUA with err filled. */
int svc_consumer_lua_reload(struct svc_consumer *c, char *err, size_t errsz);

/* ---- watchfiles.c ---- */

/* Starts watching settings.lua and the project's .lua files (inotify); 0 or a negative code. */
int svc_consumer_devwatch_open(struct svc_consumer *c);
/* Reads pending file events without waiting; between messages, outside a transaction, once
 * 200 ms passed without a new one, commits the batch and reloads (app files) or asks for a
 * restart (settings.lua); 0, or the code of a failed commit. */
int svc_consumer_devwatch_poll(struct svc_consumer *c);
void svc_consumer_devwatch_close(struct svc_consumer *c);

/* ---- db.c ---- */

/* Opens the session's PostgreSQL connection and lends it to Lua; 0 or a negative code with the
 * text in c->pg.error. */
int svc_consumer_db_connect(struct svc_consumer *c);
/* Takes the connection back from Lua, closes it and forgets the open transaction. */
void svc_consumer_db_disconnect(struct svc_consumer *c);
/* Records "what: message" of a failed result r (cleared; NULL: the connection's error) in
 * c->pg.error and returns SVC_ECONN when the connection is gone, else SVC_EDB. */
int svc_consumer_db_fail(struct svc_consumer *c, PGresult *r, const char *what);
/* Runs sql (no parameters, no result rows); 0 or svc_consumer_db_fail()'s code. */
int svc_consumer_db_cmd(struct svc_consumer *c, const char *sql);

/* ---- inbox.c ---- */

/* Checks INBOX and INBOX_TABLE and builds the inbox statements; 0 or SVC_ECONFIG (logged). */
int svc_consumer_inbox_prepare(struct svc_consumer *c);
/* What svc_consumer_inbox_seen() found (or a negative code: the session's error). */
enum { SVC_INBOX_NEW = 0, SVC_INBOX_DUP = 1, SVC_INBOX_BAD = 2 };
/* Records m in the inbox: SVC_INBOX_NEW (or no id: not recorded), SVC_INBOX_DUP when already
 * there, SVC_INBOX_BAD when its id is the message's fault (why says how; the transaction may
 * be aborted: roll the savepoint back), < 0 on a session error. */
int svc_consumer_inbox_seen(struct svc_consumer *c, const struct svc_consumer_msg *m, char *why,
                            size_t whysz);
/* Deletes inbox rows older than INBOX_RETENTION in growing batches for a bounded time; true
 * when rows are left that the next pass should remove soon. */
bool svc_consumer_inbox_cleanup(struct svc_consumer *c);

/* ---- topology.c ---- */

/* Declares (or, with DO_NOT_DECLARE, checks) the exchanges, QUEUE and its bindings, and always
 * declares the DLQ and retry queues; 0 or a negative code (logged). */
int svc_consumer_declare_topology(struct svc_consumer *c);
/* Declares the exchanges and binds QUEUE again (not with DO_NOT_DECLARE): restores what a
 * deleted exchange took with it; 0 or a negative code (logged). */
int svc_consumer_restore_bindings(struct svc_consumer *c);
/* Opens the publishing connection in confirm mode; 0 or a negative code (logged). */
int svc_consumer_connect_out(struct svc_consumer *c);
/* Publishes a copy of d to queue with the headers of info and waits for its confirm,
 * reconnecting the publishing connection once if needed; 0 or a negative code. */
int svc_consumer_publish_copy(struct svc_consumer *c, const struct svc_delivery *d,
                              const char *queue, const struct svc_failure_info *info);

/* ---- batch.c ---- */

/* Adds a delivery to the open batch (starting it when empty). */
void svc_consumer_batch_add(struct svc_consumer *c, const struct svc_delivery *d);
/* Makes the transaction and this message's savepoint wait for its first statement; 0 or
 * SVC_ENOMEM. */
int svc_consumer_begin_message(struct svc_consumer *c);
/* After the message: true when its statements (and so the savepoint) ran. */
bool svc_consumer_end_message(struct svc_consumer *c);
/* Records a line that becomes true when the open batch is acked; it is logged (at warning,
 * ending ": acked") after the ack, and forgotten when the batch goes back to the queue. */
void svc_consumer_batch_note(struct svc_consumer *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Publishes the last message of the batch to the DLQ with reason, handler and error, then
 * logs "<what>: dead-lettered" (or "<what>, dead-lettered: <tail>"). A DLQ that refuses the copy (a
 * nack) does not end the session: the message is held in the longest retry queue and comes back to
 * try again (logged at error once per minute, counted). */
int svc_consumer_dead_letter(struct svc_consumer *c, const struct svc_consumer_msg *m,
                             const char *reason, const char *handler, const char *error,
                             const char *what, const char *tail);
/* A handler (or its COMMIT) failed: republishes the last message of the batch to a retry
 * queue or the DLQ, as the failure policy says. */
int svc_consumer_handle_failure(struct svc_consumer *c, const struct svc_consumer_msg *m,
                                bool permanent, const char *handler, const char *error_text);
/* A statement failed for the database's reasons (sqlstate, pg/errclass.h), not the
 * message's: rolls the batch back, requeues it without counting an attempt, logs it and backs
 * off (heartbeats go on). 0, or SVC_ECONN when a connection is lost. */
int svc_consumer_infra_failure(struct svc_consumer *c, const char *sqlstate, const char *error);
/* Reads the results of the handlers' pipelined statements (pg/session.h) with heartbeats
 * going on; a failure is kept as the session's late error (svc_pg_late_error: the caller
 * fails the batch). 0, or SVC_ECONN with the reason in c->pg.error. */
int svc_consumer_pipeline_sync(struct svc_consumer *c);
/* Commits the open batch and acks it; 0, or SVC_ECONN when a connection is lost (then
 * nothing is acked: the session ends and the broker redelivers). */
int svc_consumer_commit_batch(struct svc_consumer *c);

/* ---- committed.c ---- */

/* Allocates the batch slots' ids and the ring of committed ids; 0 or -1 (out of memory). */
int svc_consumer_committed_init(struct svc_consumer *c);
/* Keeps message_id (NULL: none) as the id of batch slot. */
void svc_consumer_batch_id(struct svc_consumer *c, size_t slot, const char *message_id);
/* The batch committed: remembers the ids of its messages (not those settled by a republished
 * copy), before the ack that may be lost. */
void svc_consumer_committed_record(struct svc_consumer *c);
/* True when message_id is among the latest committed: a redelivery to ack without the
 * handler. */
bool svc_consumer_committed_seen(struct svc_consumer *c, const char *message_id);
/* Frees all of it. */
void svc_consumer_committed_free(struct svc_consumer *c);

/* ---- watch.c ---- */

/* Starts the helper thread (idle until armed); 0 or -1. */
int svc_consumer_watch_start(struct svc_consumer *c);
/* Stops and joins it. */
void svc_consumer_watch_stop(struct svc_consumer *c);
/* The main thread is about to wait (a handler, a COMMIT) and leaves the broker connections to
 * the thread: heartbeats are sent; with timeout_s > 0 the statement running when it passes is
 * cancelled. */
void svc_consumer_watch_arm(struct svc_consumer *c, double timeout_s);
/* Takes the connections back; true when the deadline passed and a statement was cancelled. */
bool svc_consumer_watch_disarm(struct svc_consumer *c);

/* ---- message.c ---- */

/* Takes one delivery through its stages (checks, inbox, handler, savepoint, outcome); 0, or
 * a negative code that ends the session. */
int svc_consumer_process(struct svc_consumer *c, struct svc_delivery *d);
/* The structured fields of a log line about m (util/log.h): queue, exchange, routing_key,
 * message_id, attempt, then handler and error when not NULL. Borrowed pointers: lf lives no
 * longer than m, handler and error. */
struct svc_consumer_logf {
	struct svc_log_field f[8];
	size_t n;
	char attempt[24];
};
void svc_consumer_log_fields(const struct svc_consumer *c, const struct svc_consumer_msg *m,
                             const char *handler, const char *error, struct svc_consumer_logf *lf);
/* Fills m for d: its origin and attempt from its x-svccomm-* headers when it is a copy this
 * consumer's deployment signed, else its own exchange and routing key and attempt 1. */
void svc_consumer_msg_init(const struct svc_consumer *c, const struct svc_delivery *d,
                           struct svc_consumer_msg *m);

/* ---- metrics.c ---- */

/* Makes the consumer's metric series (no-ops without METRICS_ADDRESS). */
void svc_consumer_metrics_init(struct svc_consumer *c);
/* A session started consuming (up) or ended: connection gauges, reconnects, readiness. */
void svc_consumer_metrics_session(struct svc_consumer *c, bool up);
/* Counts a dead letter (outcome and reason). */
void svc_consumer_metrics_dead_letter(struct svc_consumer *c, const char *reason);
/* Samples the Lua state's memory. */
void svc_consumer_metrics_lua(struct svc_consumer *c);

#endif
