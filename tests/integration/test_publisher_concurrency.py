"""runpublisher: ordering, several relays, crashes and server restarts (issue 5, scenarios 3, 5,
10, 11)."""
import random
import signal
import threading
import time

import svc


def topology(broker, n):
    s = svc.suffix()
    exchanges = ["agg%02d_%s" % (i, s) for i in range(n)]
    for ex in exchanges:
        broker.exchange(ex)
    q = "q_" + s
    broker.queue(q, exchanges)
    return exchanges, q


def writer(p, exchanges, n_tx, rows_per_tx, hold_max, rollback_ratio, committed, rolled_back,
           seed):
    rnd = random.Random(seed)
    conn = svc.pg_connect()
    conn.autocommit = False
    try:
        for _ in range(n_tx):
            ex = rnd.choice(exchanges)
            with conn.cursor() as cur:
                cur.execute("INSERT INTO %s (exchange, routing_key, body) SELECT %%s, 'ev', "
                            "'{\"n\":' || g || '}' FROM generate_series(1, %%s) g RETURNING id"
                            % p.table("outbox"), (ex, rows_per_tx))
                ids = [r[0] for r in cur.fetchall()]
            time.sleep(rnd.uniform(0, hold_max))
            if rnd.random() < rollback_ratio:
                conn.rollback()
                rolled_back.extend(ids)
            else:
                conn.commit()
                committed.extend(ids)
    finally:
        conn.close()


def run_writers(p, exchanges, n_writers, n_tx, rows_per_tx, hold_max, rollback_ratio,
                own_aggregates=False):
    """Threads (not started) that write; with own_aggregates each writer has its own share of
    the exchanges, so each aggregate's transactions commit one after the other (as with a row
    lock on the aggregate) and commit order = id order."""
    committed, rolled_back = [], []
    threads = [threading.Thread(target=writer,
                                args=(p, exchanges[i::n_writers] if own_aggregates
                                      else exchanges, n_tx, rows_per_tx, hold_max,
                                      rollback_ratio, committed, rolled_back, i))
               for i in range(n_writers)]
    return threads, committed, rolled_back


def check_order(got):
    """Per exchange, the first deliveries of each id come in increasing id order."""
    seen = set()
    last = {}
    for method, props, _ in got:
        mid = svc.row_id(props.message_id)
        if mid in seen:
            continue
        seen.add(mid)
        assert mid > last.get(method.exchange, 0), (method.exchange, mid, last[method.exchange])
        last[method.exchange] = mid


def test_3_out_of_order_commits_never_skipped_never_rolled_back(project, broker):
    # 8 writers x 1,250 rows (25 transactions of 50 rows each, held 0-500 ms, 10 % rolled back)
    p = project.setup_relay()
    exchanges, q = topology(broker, 4)
    relay = p.start_relay()
    threads, committed, rolled_back = run_writers(p, exchanges, 8, 25, 50, 0.5, 0.1)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(committed) + len(rolled_back) == 10000
    assert rolled_back  # the scenario did roll back
    got = broker.collect(q, len(committed), timeout=60, settle=1.5)
    ids = [svc.row_id(props.message_id) for _, props, _ in got]
    assert sorted(ids) == sorted(committed)  # all delivered, exactly once, no rolled-back row
    svc.wait_until(lambda: p.outbox_count() == 0, 10, what="table empty")
    assert p.stop(relay) == 0


def test_10_two_relays_each_event_once_in_order(project, broker):
    p = project.setup_relay()
    exchanges, q = topology(broker, 16)
    a = p.start_relay()
    b = p.start_relay()
    svc.wait_until(lambda: "holding" in p.log(b), 15, what="second relay takes partitions")
    threads, committed, _ = run_writers(p, exchanges, 4, 50, 50, 0.02, 0, own_aggregates=True)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = broker.collect(q, 10000, timeout=60, settle=1.5)
    ids = [svc.row_id(props.message_id) for _, props, _ in got]
    assert len(ids) == 10000
    assert sorted(ids) == sorted(committed)  # exactly once
    check_order(got)
    svc.wait_until(lambda: p.outbox_count() == 0, 10, what="table empty")
    # both relays did part of the work
    assert "took" in p.log(a) and "took" in p.log(b)
    assert p.stop(a) == 0 and p.stop(b) == 0


def test_10b_kill_one_of_two_relays_midway_other_finishes(project, broker):
    p = project.setup_relay({"PUBLISHER_BATCH_SIZE": 100, "PUBLISHER_WINDOW": 300})
    exchanges, q = topology(broker, 16)
    a = p.start_relay()
    b = p.start_relay()
    svc.wait_until(lambda: "holding" in p.log(b), 15, what="second relay takes partitions")
    threads, committed, _ = run_writers(p, exchanges, 4, 50, 50, 0.03, 0, own_aggregates=True)
    for t in threads:
        t.start()
    time.sleep(1.0)
    a.kill()  # SIGKILL
    a.wait(10)
    for t in threads:
        t.join()
    got = broker.collect(q, 10000, timeout=90, settle=2)
    ids = [svc.row_id(props.message_id) for _, props, _ in got]
    assert set(ids) == set(committed)  # lost 0
    check_order(got)  # first deliveries still in order per aggregate
    svc.wait_until(lambda: p.outbox_count() == 0, 20, what="table empty")
    assert p.stop(b) == 0


def test_5_kill_9_twenty_times_lost_zero(project, broker):
    p = project.setup_relay({"PUBLISHER_BATCH_SIZE": 50, "PUBLISHER_WINDOW": 200})
    exchanges, q = topology(broker, 4)
    threads, committed, _ = run_writers(p, exchanges, 4, 60, 20, 0.05, 0)
    for t in threads:
        t.start()
    rnd = random.Random(5)
    for _ in range(20):
        relay = p.start_relay()
        time.sleep(rnd.uniform(0.05, 0.4))
        relay.send_signal(signal.SIGKILL)
        relay.wait(10)
    for t in threads:
        t.join()
    relay = p.start_relay()
    got = broker.collect(q, len(committed), timeout=60, settle=2)
    by_id = {}
    for _, props, body in got:
        by_id.setdefault(svc.row_id(props.message_id), set()).add(body)
    assert set(by_id) == set(committed)  # lost 0
    # every duplicate carries its original message_id and the same body
    assert all(len(bodies) == 1 for bodies in by_id.values())
    svc.wait_until(lambda: p.outbox_count() == 0, 20, what="table empty")
    assert p.stop(relay) == 0


def test_11_broker_and_database_restart_during_drain(project, broker):
    p = project.setup_relay({"PUBLISHER_BATCH_SIZE": 200, "HEARTBEAT": 5})
    exchanges, q = topology(broker, 4)
    ids = []
    for ex in exchanges:
        ids += p.outbox_insert_many(ex, 2500)
    relay = p.start_relay()
    svc.wait_until(lambda: p.outbox_count() < 9000, 30, what="drain started")
    svc.restart_rabbitmq(down_for=1)
    svc.wait_until(lambda: p.outbox_count() < 6000, 60,
                   what="drain continues after the broker restart")
    svc.restart_postgresql()
    svc.wait_until(lambda: p.outbox_count() == 0, 90,
                   what="drain finished after the database restart")
    b2 = svc.Broker()
    try:
        got = b2.collect(q, len(ids), timeout=60, settle=2)
    finally:
        b2.close()
    assert set(svc.row_id(props.message_id) for _, props, _ in got) == set(ids)  # lost 0
    log = p.log(relay)
    assert "broker: reconnected" in log and "database: reconnected" in log
    assert p.stop(relay) == 0
