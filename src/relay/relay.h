/* relay: the outbox relay (`svccomm runpublisher`), which publishes the rows of the outbox table
 * to RabbitMQ and deletes each once the broker confirmed it.
 *
 * Files: loop.c (the loop, timers, shutdown), conn.c (both connections), partitions.c
 * (advisory locks shared between relays), claim.c (claim and publish), window.c (the confirm
 * window), settle.c (what happens to decided rows), exchanges.c (exchange cache and checks),
 * headers.c (the headers column's JSON); their shared state is in internal.h, the SQL in
 * outbox/relay_sql.c.
 *
 * How it works
 * ------------
 * One process, one thread, two connections: a PostgreSQL session (claims, deletes, advisory
 * locks, LISTEN) and a RabbitMQ channel in confirm mode. The loop waits with poll() on both
 * sockets, so confirms and notifications are handled as they arrive.
 *
 * Claim -> publish -> confirm -> delete. Due rows (send_after <= now(), parked_at IS NULL) are
 * read in id order, PUBLISHER_BATCH_SIZE at a time, and published as the window has room (a
 * claim does not wait for room: its rows wait in r->ahead, see claim.c) (mandatory, persistent,
 * content type application/json, app_id = APP_ID, message_id = the row's or "<APP_ID>:<id>",
 * correlation_id and headers from the row, timestamp = created_at). Up to PUBLISHER_WINDOW
 * messages may be unconfirmed; confirms (basic.ack/nack with `multiple`) are matched to rows
 * through the channel's publish sequence numbers. Decided rows are handled in one statement per
 * kind: nacked -> kept, retried after a backoff; returned as unroutable (basic.return, matched by
 * the message_id "<APP_ID>:<row id>" of a row without one of its own, else by the
 * "x-svccomm-seq" header amqp/conn adds) -> deleted and counted with PUBLISHER_UNROUTABLE =
 * "drop", kept with a backoff with "keep"; confirmed -> deleted just before the next claim,
 * by a DELETE of their own (one index range with a hashed membership test when their ids lie
 * close together: outbox/relay_sql.c says why not inside the claim). Confirmed rows wait for a
 * claim only while one is sure to follow (more work, confirms outstanding) and at most
 * DELETE_MAX_WAIT; otherwise (caught up, no partitions, shutdown, a partition to hand over, the
 * list full) they are deleted at once. The list survives reconnects: those rows
 * were confirmed, deleting them late is correct and spares a second publish. A row is deleted
 * only after a positive confirm, so a lost connection, a nack or a crash can only cause a second
 * publish of the same row (same message_id), never a loss.
 *
 * Before each claim the relay reads the confirms that already arrived, so the rows they settle
 * leave the skip list and are deleted before it. A claimed batch is published corked
 * (svc_amqp_cork): its messages' frames leave in writes of up to 64 KiB instead of a send()
 * per frame, which was most of the relay's CPU. Claim, delete and next-due are
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
 * with SELECT 1 (and libpq keepalives are on) so a half-open session is noticed. Writers notify
 * only while a relay sleeps holding the table's wake lock (sql/006_outbox_notify_auto.sql): a
 * listening relay takes it after a claim that caught up and gives it back when writers wake it,
 * and claims every 1-20 ms while writers that did not notify are in flight (claim.c).
 *
 * Both connections reconnect forever with jittered exponential backoff capped at
 * RECONNECT_MAX_DELAY. On SIGTERM/SIGINT the relay stops claiming, waits up to SHUTDOWN_TIMEOUT
 * for outstanding confirms, deletes what was confirmed and returns. Every STATS_INTERVAL it logs
 * published, confirmed, returned, nacked, parked, backlog and the age of the oldest due row.
 */
#ifndef SVC_RELAY_H
#define SVC_RELAY_H

#include <signal.h>

struct svc_config;

/* Runs the relay until *stop becomes nonzero, then drains outstanding confirms (up to
 * SHUTDOWN_TIMEOUT). Reconnects to both servers forever. Returns 0 after a clean stop or a
 * negative SVC_E* for errors that retrying cannot fix (bad settings, out of memory). */
int svc_publisher_run(const struct svc_config *cfg, volatile sig_atomic_t *stop);

#endif
