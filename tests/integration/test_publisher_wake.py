"""The relay and the wake lock (sql/006_outbox_notify_auto.sql, src/relay/claim.c): an idle
relay sleeps holding the table's wake lock, so writers notify it; woken, it gives the lock back
and writers stop notifying while it claims; while writers that did not notify are in flight it
claims every few milliseconds; with several relays one sleeps on the lock and the others sleep
without it. Every row goes out although the relays' poll interval (30 s) is longer than any
wait here. Against the real relay, PostgreSQL and broker."""
import random
import re
import threading
import time

import svc
from test_outbox_notify_setting import WAKE_CLASS, Listener, channel_of, wake_lock_holders

SLOW_POLL = {"PUBLISHER_POLL_INTERVAL": 30, "LOG_LEVEL": "debug"}


def relay_project(project, broker, settings=None):
    p = project.setup_relay(dict(SLOW_POLL, **(settings or {})))
    ex, q = p.exchange(), p.queue("rec")
    broker.exchange(ex)
    broker.queue(q, [ex])
    return p, ex, q, p.table("outbox")


def insert(table, ex, key):
    (row_id,), = svc.sql('INSERT INTO "%s" (exchange, routing_key, body) VALUES (%%s, %%s, '
                         "'{}') RETURNING id" % table, ex, key)
    return row_id


def sleeping_on_the_lock(table):
    return wake_lock_holders(table) == [("ExclusiveLock", True)]


def test_an_idle_relay_sleeps_on_the_wake_lock_and_a_writer_wakes_it(project, broker):
    p, ex, q, table = relay_project(project, broker)
    relay = p.start_relay()
    svc.wait_until(lambda: sleeping_on_the_lock(table), 10, what="the relay holds the wake lock")
    listener = Listener(p, table)
    for i in range(3):
        row_id = insert(table, ex, "k%d" % i)
        assert listener.since() == [listener.channel]
        got = broker.collect(q, 1, timeout=5, settle=0)
        assert [svc.row_id(props.message_id) for _, props, _ in got] == [row_id], p.log(relay)
        svc.wait_until(lambda: sleeping_on_the_lock(table), 10,
                       what="the relay sleeps on the lock again")
    assert "wake lock given back" in p.log(relay)
    assert p.stop(relay) == 0
    assert wake_lock_holders(table) == []


def test_while_a_writer_is_in_flight_writers_skip_the_notify_and_the_relay_polls_for_them(
        project, broker):
    """A session holding the wake lock shared stands for a writer that skipped its NOTIFY and
    has not committed: the relay cannot sleep on the lock, so it claims every few milliseconds
    (and backs off), and the rows of other writers, who skip their NOTIFY too, still go out at
    once. Once that writer is done the relay takes the lock and writers notify again."""
    p, ex, q, table = relay_project(project, broker)
    writer = p.pg()
    svc.pg_query(writer, "SELECT pg_advisory_lock_shared(%s, hashtext(%s))",
                 (WAKE_CLASS, channel_of(table)))
    relay = p.start_relay()
    relay.wait_for_log("writers that did not notify are in flight", 10)
    listener = Listener(p, table)
    ids = [insert(table, ex, "quiet%d" % i) for i in range(5)]
    assert listener.since() == []
    got = broker.collect(q, 5, timeout=5, settle=0)
    assert sorted(svc.row_id(props.message_id) for _, props, _ in got) == ids, p.log(relay)
    assert wake_lock_holders(table) == [("ShareLock", True)]
    # backing off: at most every 20 ms, so claims stay few while nothing comes
    svc.wait_until(lambda: "claiming again in 0.02 s" in p.log(relay), 5, what="backed off")
    svc.pg_query(writer, "SELECT pg_advisory_unlock_all()")
    svc.wait_until(lambda: sleeping_on_the_lock(table), 5, what="the relay took the lock")
    row_id = insert(table, ex, "loud")
    assert listener.since() == [listener.channel]
    got = broker.collect(q, 1, timeout=5, settle=0)
    assert [svc.row_id(props.message_id) for _, props, _ in got] == [row_id]
    assert p.stop(relay) == 0


def test_with_two_relays_one_sleeps_on_the_lock_and_the_other_sleeps_too(project, broker):
    """The relay that finds the lock held in exclusive mode sleeps (writers notify, which wakes
    both) instead of polling; rows of every partition go out."""
    p, ex, q, table = relay_project(project, broker)
    exchanges = [ex] + [p.exchange("ex%d" % i) for i in range(7)]
    for e in exchanges[1:]:
        broker.exchange(e)
        broker.queue(q, [e])
    a, b = p.start_relay(), p.start_relay()
    svc.wait_until(lambda: all("wake lock held by a sleeping relay" in p.log(r)
                               or "wake lock taken" in p.log(r) for r in (a, b)), 15,
                   what="both relays settled")
    svc.wait_until(lambda: sleeping_on_the_lock(table), 10, what="one relay holds the lock")
    ids = []
    for i in range(16):
        ids.append(insert(table, exchanges[i % len(exchanges)], "k%d" % i))
    got = broker.collect(q, 16, timeout=10, settle=0)
    assert sorted(svc.row_id(props.message_id) for _, props, _ in got) == ids, (p.log(a), p.log(b))
    svc.wait_until(lambda: sleeping_on_the_lock(table), 10, what="one relay holds the lock")
    # neither relay polls for writers now: the number of claims stays put
    claims = [len(re.findall(r"claimed \d+ of", p.log(r))) for r in (a, b)]
    time.sleep(1.0)
    assert [len(re.findall(r"claimed \d+ of", p.log(r))) for r in (a, b)] == claims
    assert p.stop(a) == 0 and p.stop(b) == 0


def test_concurrent_writers_lose_no_wake_up(project, broker):
    """Rounds of eight writers committing at once (some rows alone, some three to a
    transaction), each round's rows awaited before the next: a row committed while the relay
    goes from claiming to sleeping on the lock, which no later write would wake it for, must
    still go out within the round, long before the 30 s poll."""
    p, ex, q, table = relay_project(project, broker, {"LOG_LEVEL": "info"})
    relay = p.start_relay()
    svc.wait_until(lambda: sleeping_on_the_lock(table), 10, what="the relay holds the wake lock")
    conns = [svc.pg_connect() for _ in range(8)]
    for c in conns:
        c.autocommit = False
    start = threading.Barrier(len(conns))
    errors, sent = [], 0
    try:
        for rnd in range(40):
            ids, lock = [], threading.Lock()

            def write(i, rnd=rnd):
                conn = conns[i]
                mine = []
                try:
                    start.wait(10)
                    time.sleep(random.Random(rnd * 8 + i).random() * 0.002)
                    with conn.cursor() as cur:
                        for _ in range(3 if (rnd + i) % 4 == 0 else 1):
                            cur.execute('INSERT INTO "%s" (exchange, routing_key, body) VALUES '
                                        "(%%s, 'k', '{}') RETURNING id" % table, (ex,))
                            mine.append(cur.fetchone()[0])
                    conn.commit()
                    with lock:
                        ids.extend(mine)
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(e)

            threads = [threading.Thread(target=write, args=(i,)) for i in range(len(conns))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert not errors, errors
            got = broker.collect(q, len(ids), timeout=5, settle=0)
            assert sorted(svc.row_id(props.message_id) for _, props, _ in got) == sorted(ids), \
                (rnd, p.log(relay))
            sent += len(ids)
    finally:
        for c in conns:
            c.close()
    assert broker.count(q) == 0
    svc.wait_until(lambda: p.outbox_count() == 0, 10, what="published rows deleted")
    svc.wait_until(lambda: sleeping_on_the_lock(table), 10, what="the relay sleeps on the lock")
    assert p.stop(relay) == 0
    assert wake_lock_holders(table) == []
