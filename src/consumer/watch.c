/* watch: the consumer's one helper thread, armed only while the main thread waits on something
 * it cannot interrupt itself: a handler (Lua, or a statement it runs) or a COMMIT. While armed
 * it sends AMQP heartbeat frames on both broker connections, so a long wait does not make the
 * broker close them (an ack after a COMMIT would then fail and the message come back), and
 * when the handler's deadline passes it cancels the running statement (PQcancel), so
 * HANDLER_TIMEOUT bounds database time too: a lock wait ends at the deadline.
 *
 * Ownership: while armed the main thread does not touch the broker connections; the thread
 * only writes heartbeat frames (it never reads, so no delivery is taken out of order). All
 * state is under one mutex; disarming waits for a cancel in progress to finish. The deadline
 * and the heartbeats are checked on a tick, so they may come up to TICK_ARMED_S late (the Lua
 * count hook still stops a handler running Lua on time). */
#include "consumer/internal.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "config/config.h"
#include "util/clock.h"
#include "util/log.h"

/* The thread wakes on a tick instead of being signalled: arming and disarming, once per
 * message, then cost two uncontended mutex operations and no thread switch. */
#define TICK_ARMED_S 0.1 /* how late a heartbeat or the deadline's cancel may be */
#define TICK_IDLE_S  0.5

static void *watch_main(void *arg);

int svc_consumer_watch_start(struct svc_consumer *c)
{
	struct svc_consumer_watch *w = &c->watch;
	pthread_condattr_t attr;

	memset(w, 0, sizeof(*w));
	if (pthread_condattr_init(&attr) != 0)
		return -1;
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	int rc = pthread_cond_init(&w->cv, &attr);
	pthread_condattr_destroy(&attr);
	if (rc != 0)
		return -1;
	pthread_mutex_init(&w->mu, NULL);
	w->in = c->in;
	w->out = c->out;
	w->hb_interval = c->cfg->heartbeat > 0 ? (double)c->cfg->heartbeat / 2 : 0;
	if (pthread_create(&w->th, NULL, watch_main, w) != 0) {
		pthread_cond_destroy(&w->cv);
		pthread_mutex_destroy(&w->mu);
		return -1;
	}
	w->running = true;
	return 0;
}

void svc_consumer_watch_stop(struct svc_consumer *c)
{
	struct svc_consumer_watch *w = &c->watch;
	if (!w->running)
		return;
	pthread_mutex_lock(&w->mu);
	w->stop = true;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
	pthread_join(w->th, NULL);
	pthread_cond_destroy(&w->cv);
	pthread_mutex_destroy(&w->mu);
	w->running = false;
}

void svc_consumer_watch_arm(struct svc_consumer *c, double timeout_s)
{
	struct svc_consumer_watch *w = &c->watch;
	if (!w->running)
		return;
	double now = svc_clock_mono();
	pthread_mutex_lock(&w->mu);
	w->armed = true;
	w->cancelled = false;
	w->deadline = timeout_s > 0 && c->pg_cancel ? now + timeout_s : 0;
	w->cancel = c->pg_cancel;
	w->next_hb = now + w->hb_interval;
	pthread_mutex_unlock(&w->mu);
}

bool svc_consumer_watch_disarm(struct svc_consumer *c)
{
	struct svc_consumer_watch *w = &c->watch;
	if (!w->running)
		return false;
	pthread_mutex_lock(&w->mu);
	bool cancelled = w->cancelled;
	w->armed = false;
	w->cancel = NULL;
	pthread_mutex_unlock(&w->mu);
	return cancelled;
}

static struct timespec abs_time(double mono)
{
	struct timespec ts;
	ts.tv_sec = (time_t)mono;
	ts.tv_nsec = (long)((mono - (double)ts.tv_sec) * 1e9);
	return ts;
}

/* Under the mutex, armed: what is due now. */
static void due_work(struct svc_consumer_watch *w, double now)
{
	if (w->deadline > 0 && now >= w->deadline && !w->cancelled && w->cancel) {
		char err[256];
		/* the main thread cannot disarm meanwhile: the cancel reaches this statement */
		if (!PQcancel(w->cancel, err, sizeof(err)))
			svc_warn(LOG, "cancelling a handler's statement at HANDLER_TIMEOUT: %s",
			         err);
		w->cancelled = true;
	}
	if (w->hb_interval > 0 && now >= w->next_hb) {
		svc_amqp_send_heartbeat(w->in);
		svc_amqp_send_heartbeat(w->out);
		w->next_hb = now + w->hb_interval;
	}
}

static void *watch_main(void *arg)
{
	struct svc_consumer_watch *w = arg;
	sigset_t all;
	sigfillset(&all); /* signals are the main thread's (stop flag, shutdown alarm) */
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	pthread_mutex_lock(&w->mu);
	while (!w->stop) {
		double now = svc_clock_mono();
		if (w->armed)
			due_work(w, now);
		struct timespec ts = abs_time(now + (w->armed ? TICK_ARMED_S : TICK_IDLE_S));
		pthread_cond_timedwait(&w->cv, &w->mu, &ts);
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}
