"""runpublisher: confirmed rows are deleted by the next claim (one statement), or on their own
when no claim is coming; neither a lost database session nor the hand-over of partitions loses
a row or publishes a deleted one again."""
import random
import time

import svc


def topology(broker, n):
    s = svc.suffix()
    exchanges = ["del%02d_%s" % (i, s) for i in range(n)]
    for ex in exchanges:
        broker.exchange(ex)
    q = "q_" + s
    broker.queue(q, exchanges)
    return exchanges, q


def first_deliveries_in_order(got):
    seen, last = set(), {}
    for method, props, _ in got:
        mid = svc.row_id(props.message_id)
        if mid in seen:
            continue
        seen.add(mid)
        assert mid > last.get(method.exchange, 0), (method.exchange, mid)
        last[method.exchange] = mid


def relay_backends(table):
    """Backend pids of the relays of this table (their statements name it)."""
    conn = svc.pg_connect()
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = "
                        "'svccomm-relay' AND query LIKE %s", ("%" + table + "%",))
            return [r[0] for r in cur.fetchall()]
    finally:
        conn.close()


def terminate(pids):
    conn = svc.pg_connect()
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for pid in pids:
                cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        conn.close()


def test_batches_of_one_each_row_once_and_table_empty_when_caught_up(project, broker):
    # Batch 1: every claim carries the deletes of the rows confirmed since the previous one.
    p = project.setup_relay({"PUBLISHER_BATCH_SIZE": 1, "PUBLISHER_WINDOW": 50})
    exchanges, q = topology(broker, 3)
    ids = []
    for ex in exchanges:
        ids += p.outbox_insert_many(ex, 150)
    relay = p.start_relay()
    got = broker.collect(q, len(ids), timeout=60, settle=1)
    mids = [svc.row_id(props.message_id) for _, props, _ in got]
    assert sorted(mids) == sorted(ids)  # each exactly once: no loss, no second publish
    first_deliveries_in_order(got)
    svc.wait_until(lambda: p.outbox_count() == 0, 10, what="table empty")
    # Caught up: no claim follows, the last confirmed rows are deleted on their own at once.
    more = p.outbox_insert_many(exchanges[0], 3)
    got = broker.collect(q, 3, timeout=10, settle=0.5)
    assert sorted(svc.row_id(props.message_id) for _, props, _ in got) == more
    svc.wait_until(lambda: p.outbox_count() == 0, 2,
                   what="the last rows deleted without a further claim")
    assert p.stop(relay) == 0


def test_database_session_killed_repeatedly_lost_zero_deleted_never_resent(project, broker):
    p = project.setup_relay({"PUBLISHER_BATCH_SIZE": 20, "PUBLISHER_WINDOW": 100,
                             "RECONNECT_MAX_DELAY": 0.5})
    exchanges, q = topology(broker, 4)
    ids = []
    for ex in exchanges:
        ids += p.outbox_insert_many(ex, 1500)
    relay = p.start_relay()
    rnd = random.Random(7)
    kills = 0
    deadline = time.monotonic() + 60
    while kills < 8 and p.outbox_count() > 500 and time.monotonic() < deadline:
        time.sleep(rnd.uniform(0.05, 0.3))
        pids = relay_backends(p.table("outbox"))
        if pids:
            terminate(pids)
            kills += 1
    assert kills >= 3, "the relay drained before the sessions could be killed"
    svc.wait_until(lambda: p.outbox_count() == 0, 90, what="table empty after the reconnects")
    got = broker.collect(q, len(ids), timeout=60, settle=2)
    by_id = {}
    for _, props, body in got:
        by_id.setdefault(svc.row_id(props.message_id), []).append(body)
    assert set(by_id) == set(ids)  # lost 0
    assert all(len(set(bodies)) == 1 for bodies in by_id.values())
    first_deliveries_in_order(got)
    # A second publish happens only for rows in flight when a session died (at most a window
    # each time); a confirmed row waiting for its delete is deleted after the reconnect.
    dups = sum(len(b) - 1 for b in by_id.values())
    assert dups <= kills * 100, dups
    log = p.log(relay)
    assert "database: reconnected" in log
    assert p.stop(relay) == 0


def test_two_relays_hand_over_partitions_without_resending_confirmed_rows(project, broker):
    p = project.setup_relay({"PUBLISHER_BATCH_SIZE": 50, "PUBLISHER_WINDOW": 400})
    exchanges, q = topology(broker, 8)
    ids = []
    for ex in exchanges:
        ids += p.outbox_insert_many(ex, 600)
    a = p.start_relay()
    svc.wait_until(lambda: p.outbox_count() < 4000, 30, what="first relay publishing")
    b = p.start_relay()  # takes half of the partitions from a while a has rows confirmed
    svc.wait_until(lambda: p.outbox_count() == 0, 60, what="table empty")
    got = broker.collect(q, len(ids), timeout=60, settle=2)
    mids = [svc.row_id(props.message_id) for _, props, _ in got]
    assert sorted(mids) == sorted(ids)  # each exactly once
    first_deliveries_in_order(got)
    assert p.stop(a) == 0
    assert p.stop(b) == 0
