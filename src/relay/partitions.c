/* partitions: which of the 64 partitions this relay publishes. A relay publishes a partition
 * only while it holds its session-level advisory lock; every REBALANCE_PERIOD it counts the
 * relays (membership locks), keeps at most ceil(64 / relays), gives back the extra ones once
 * none of their rows is in flight or waiting for its delete, and tries to lock free ones. */
#include <unistd.h>

#include "relay/internal.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/log.h"

#define REBALANCE_PERIOD 2.0 /* seconds between partition rebalances */

static void update_claimable(struct relay *r)
{
	r->n_claimable = 0;
	for (int p = 0; p < SVC_RELAY_PARTITIONS; p++) {
		r->claimable[p] = r->held[p] && !r->releasing[p];
		r->n_claimable += r->claimable[p];
	}
}

/* Marks the highest partitions beyond target as given back: no new claims from them. */
static void give_back(struct relay *r, long target)
{
	long nkeep = 0;

	for (int p = 0; p < SVC_RELAY_PARTITIONS; p++)
		nkeep += r->held[p] && !r->releasing[p];
	for (int p = SVC_RELAY_PARTITIONS - 1; p >= 0 && nkeep > target; p--) {
		if (r->held[p] && !r->releasing[p]) {
			r->releasing[p] = true;
			nkeep--;
		}
	}
}

/* Unlocks the partitions given back once none of their rows is in flight, and none waits for
 * its delete either: the next owner would publish it again. Claimed rows not yet published
 * are forgotten first (this relay claims them again if they stay its own). Returns 0 or the
 * SVC_E* of a failure (the session may be lost already: see r->db_up). */
static int unlock_released(struct relay *r, long *nheld)
{
	int rc;

	for (int p = 0; p < SVC_RELAY_PARTITIONS; p++) {
		if (!r->releasing[p])
			continue;
		relay_drop_ahead(r);
		if (r->fl.part_count[p] > 0)
			continue;
		if (r->n_del > 0)
			relay_flush_deletes(r);
		if (!r->db_up)
			return SVC_ECONN;
		if (r->n_del > 0)
			break;
		if ((rc = svc_relay_unlock_part(&r->pg, &r->q, p)) != 0)
			return rc;
		r->held[p] = r->releasing[p] = false;
		(*nheld)--;
		svc_debug(COMP, "released partition %d", p);
	}
	return 0;
}

/* Takes free partitions up to target; each relay starts looking at its own offset. */
static int take_free(struct relay *r, long target, long nheld)
{
	int cand[SVC_RELAY_PARTITIONS], got[SVC_RELAY_PARTITIONS];
	size_t ncand = 0, ngot = 0;
	int start = (int)(getpid() % SVC_RELAY_PARTITIONS);
	int rc;

	for (int i = 0; i < SVC_RELAY_PARTITIONS; i++) {
		int p = (start + i) % SVC_RELAY_PARTITIONS;

		if (!r->held[p])
			cand[ncand++] = p;
	}
	rc = svc_relay_lock_parts(&r->pg, &r->q, cand, ncand, target - nheld, got, &ngot);
	if (rc != 0)
		return rc;
	for (size_t i = 0; i < ngot; i++)
		r->held[got[i]] = true;
	if (ngot > 0) {
		r->work = true;
		svc_info(COMP, "%ld relay(s); took %zu partition(s), holding %ld of %d", r->members,
		         ngot, nheld + (long)ngot, SVC_RELAY_PARTITIONS);
	}
	return 0;
}

int relay_rebalance(struct relay *r)
{
	long target, nheld = 0;
	int rc;

	r->next_rebalance = svc_clock_mono() + REBALANCE_PERIOD;
	if ((rc = svc_relay_members(&r->pg, &r->q, &r->members)) != 0)
		goto fail;
	if (r->members < 1)
		r->members = 1;
	target = (SVC_RELAY_PARTITIONS + r->members - 1) / r->members;
	for (int p = 0; p < SVC_RELAY_PARTITIONS; p++)
		nheld += r->held[p];
	give_back(r, target);
	rc = unlock_released(r, &nheld);
	if (!r->db_up)
		return SVC_ECONN; /* lost while deleting: relay_db_lost() ran already */
	if (rc != 0)
		goto fail;
	if (nheld < target && (rc = take_free(r, target, nheld)) != 0)
		goto fail;
	update_claimable(r);
	relay_metrics_partitions(r);
	r->db_last_ok = svc_clock_mono();
	return 0;
fail:
	if (rc == SVC_ECONN)
		relay_db_lost(r, "rebalancing partitions");
	else
		svc_error(COMP, "rebalancing partitions: %s", svc_pg_error(&r->pg));
	return rc;
}
