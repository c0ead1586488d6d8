"""runpublisher: rows the broker does not take at once (issue 5, scenarios 4, 6, 7; unroutable
and impossible rows)."""
import json
import re
import time

import pytest

import svc


def test_6_nacked_row_kept_and_delivered_once_the_queue_drains(project, broker):
    p = project.setup_relay({"RECONNECT_MAX_DELAY": 1})
    s = svc.suffix()
    ex, q = "nack_" + s, "nackq_" + s
    broker.exchange(ex)
    broker.queue(q, [ex], arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ids = p.outbox_insert_many(ex, 3)
    relay = p.start_relay()
    svc.wait_until(lambda: "refused by the broker" in p.log(relay), 15, what="a nack in the log")
    assert broker.count(q) == 1
    # the refused rows are still there, marked with the reason
    kept = p.outbox_rows("id, attempts, last_error, parked_at")
    assert 1 <= len(kept) <= 2
    for row_id, attempts, last_error, parked_at in kept:
        assert attempts >= 1 and "nack" in last_error and parked_at is None
    # drain the queue one message at a time: every row gets through eventually
    seen = []
    deadline = time.time() + 30
    while len(seen) < 3 and time.time() < deadline:
        m, props, body = broker.ch.basic_get(q, auto_ack=True)
        if m:
            seen.append(svc.row_id(props.message_id))
        else:
            time.sleep(0.1)
    assert sorted(seen) == ids
    svc.wait_until(lambda: p.outbox_count() == 0, 10, what="table empty")
    assert p.stop(relay) == 0


def test_7_missing_exchange_with_do_not_declare_kept_then_delivered(project, broker):
    p = project.setup_relay({"DO_NOT_DECLARE": True, "RECONNECT_MAX_DELAY": 1})
    s = svc.suffix()
    ex, q = "late_" + s, "lateq_" + s
    ids = p.outbox_insert_many(ex, 5)
    relay = p.start_relay()
    svc.wait_until(lambda: "does not exist" in p.log(relay) or "NOT_FOUND" in p.log(relay), 15,
                   what="missing exchange logged")
    time.sleep(1.5)
    rows = p.outbox_rows()
    assert [r[0] for r in rows] == ids  # kept, none parked
    assert all(r[3] is None for r in rows)
    assert all(r[2] and ("NOT_FOUND" in r[2] or "does not exist" in r[2]) for r in rows)
    # the exchange must not have been created by the relay
    ch = broker.conn.channel()
    with pytest.raises(Exception):
        ch.exchange_declare(ex, "topic", passive=True)
    broker.ch = broker.conn.channel() if not broker.ch.is_open else broker.ch
    broker.exchange(ex)
    broker.queue(q, [ex])
    got = broker.collect(q, 5, timeout=20)
    assert sorted(svc.row_id(props.message_id) for _, props, _ in got) == ids
    svc.wait_until(lambda: p.outbox_count() == 0, 10, what="table empty")
    assert p.stop(relay) == 0


def test_unroutable_kept_by_default_dropped_with_drop(make_project, broker):
    s = svc.suffix()
    ex = "noroute_" + s
    broker.exchange(ex)
    p = make_project().setup_relay({"PUBLISHER_UNROUTABLE": "drop"})
    p.outbox_insert_many(ex, 3, routing_key="ev.nobody")
    relay = p.start_relay()
    svc.wait_until(lambda: p.outbox_count() == 0, 15, what="unroutable rows dropped")
    # each drop is named at warning, with its exchange and routing key
    drops = [x for x in p.log(relay).splitlines() if "warning" in x and "unroutable event dropped"
             in x and '(exchange "%s", routing key "ev.nobody")' % ex in x]
    assert len(drops) == 3, p.log(relay)
    assert p.stop(relay) == 0

    k = make_project().setup_relay({"RECONNECT_MAX_DELAY": 1})  # the default: "keep"
    ids = k.outbox_insert_many(ex, 3)
    relay = k.start_relay()
    svc.wait_until(lambda: all(r[1] >= 1 for r in k.outbox_rows()), 15, what="unroutable rows kept")
    assert all("unroutable" in r[2] for r in k.outbox_rows())
    q = "noroute_q_" + s
    broker.queue(q, [ex])
    got = broker.collect(q, 3, timeout=20)
    assert sorted(svc.row_id(props.message_id) for _, props, _ in got) == ids
    svc.wait_until(lambda: k.outbox_count() == 0, 10, what="table empty")
    assert k.stop(relay) == 0


def test_returns_are_told_apart_with_and_without_a_message_id_of_the_row(make_project, broker):
    """Rows without a message_id of their own go out without the x-svccomm-seq header and
    their return is told by "<APP_ID>:<row id>"; rows with one keep the header. Mixed in one
    window, with routable rows between them, each returned row is the one kept (or dropped)
    and every routable row is deleted exactly once."""
    s = svc.suffix()
    ex, q = "mixret_" + s, "mixret_q_" + s
    broker.exchange(ex)
    broker.queue(q)
    broker.ch.queue_bind(q, ex, "ev.ok")

    def rows():
        out = []
        for i in range(12):
            r = {"exchange": ex, "routing_key": "ev.ok" if i % 3 == 0 else "ev.nobody",
                 "body": '{"i": %d}' % i}
            if i % 2:
                r["message_id"] = "own-%s-%d" % (s, i)
            out.append(r)
        return out

    k = make_project().setup_relay({"APP_ID": "mix-svc", "RECONNECT_MAX_DELAY": 1})
    ids = k.outbox_insert(rows())
    unroutable = [i for n, i in enumerate(ids) if n % 3]
    relay = k.start_relay()
    got = broker.collect(q, 4, timeout=20)
    svc.wait_until(lambda: [r[0] for r in k.outbox_rows()] == unroutable
                   and all(r[1] >= 1 for r in k.outbox_rows()), 15, what="unroutable rows kept")
    assert all("unroutable" in r[2] for r in k.outbox_rows())
    assert k.stop(relay) == 0
    # the routable ones: the relay's own message_id and no sequence header, or the row's own
    # message_id and the header
    for _, props, body in got:
        i = json.loads(body)["i"]
        headers = props.headers or {}
        if i % 2:
            assert props.message_id == "own-%s-%d" % (s, i)
            assert "x-svccomm-seq" in headers
        else:
            assert props.message_id == "mix-svc:%d" % ids[i]
            assert "x-svccomm-seq" not in headers
    assert sorted(json.loads(b)["i"] for _, _, b in got) == [0, 3, 6, 9]

    d = make_project().setup_relay({"APP_ID": "mix-svc", "PUBLISHER_UNROUTABLE": "drop"})
    ids = d.outbox_insert(rows())
    relay = d.start_relay()
    got = broker.collect(q, 4, timeout=20)
    svc.wait_until(lambda: d.outbox_count() == 0, 15, what="unroutable rows dropped")
    assert d.stop(relay) == 0
    dropped = sorted(int(re.search(r"outbox row (\d+)", x).group(1))
                     for x in d.log(relay).splitlines() if "unroutable event dropped" in x)
    assert dropped == sorted(i for n, i in enumerate(ids) if n % 3)
    assert sorted(json.loads(b)["i"] for _, _, b in got) == [0, 3, 6, 9]


def test_impossible_rows_are_parked_and_do_not_block_others(project, broker):
    s = svc.suffix()
    ex, q = "ok_" + s, "okq_" + s
    broker.exchange(ex)
    broker.queue(q, [ex])
    p = project.setup_relay()
    rows = [
        {"exchange": ex, "routing_key": "a", "body": '"before"'},
        {"exchange": "x" * 300, "routing_key": "a", "body": '"long name"'},
        {"exchange": ex, "routing_key": "a", "body": '"bad headers"', "headers": ["not", "obj"]},
        {"exchange": ex, "routing_key": "a", "body": '"after"'},
    ]
    ids = p.outbox_insert(rows)
    relay = p.start_relay()
    got = broker.collect(q, 2, timeout=15, settle=1.5)
    assert sorted(body for _, _, body in got) == [b'"after"', b'"before"']
    svc.wait_until(lambda: p.outbox_count("parked_at IS NULL") == 0, 10, what="good rows deleted")
    parked = p.outbox_rows()
    assert [r[0] for r in parked] == [ids[1], ids[2]]
    assert all(r[3] is not None and r[2] for r in parked)
    assert "255" in parked[0][2]
    assert "headers" in parked[1][2]
    assert "parked" in p.log(relay)
    r = p.run("checkpublisher")
    assert r.returncode == 1, r.stdout  # parked rows count against health (--max-parked 0)
    r = p.run("checkpublisher", "--max-parked", "2")
    assert r.returncode == 0, r.stdout
    assert p.stop(relay) == 0


def test_broker_closing_the_channel_parks_only_the_culprit(project, broker):
    # A message larger than the broker's max_message_size makes RabbitMQ close the channel
    # while other messages are in flight: the relay must find the culprit and park it alone.
    s = svc.suffix()
    ex, q = "big_" + s, "bigq_" + s
    broker.exchange(ex)
    broker.queue(q, [ex])
    p = project.setup_relay()
    svc.rabbitmqctl("eval", "application:set_env(rabbit, max_message_size, 65536).")
    try:
        rows = [{"exchange": ex, "routing_key": "a", "body": json.dumps({"n": i})}
                for i in range(20)]
        rows[10]["body"] = json.dumps({"big": "y" * 100000})
        ids = p.outbox_insert(rows)
        relay = p.start_relay()
        got = broker.collect(q, 19, timeout=30, settle=1.5)
        # Messages in flight when the channel closed lost their confirms and are sent again
        # (at least once, same message_id); the big one never arrives.
        assert set(svc.row_id(props.message_id) for _, props, _ in got) == set(ids[:10] + ids[11:])
        svc.wait_until(lambda: p.outbox_count() == 1, 10, what="only the big row left")
        (row_id, attempts, last_error, parked_at), = p.outbox_rows()
        assert row_id == ids[10] and parked_at is not None
        assert "406" in last_error or "PRECONDITION" in last_error or "size" in last_error
        assert p.stop(relay) == 0
    finally:
        svc.rabbitmqctl("eval", "application:set_env(rabbit, max_message_size, 134217728).")


def test_4_rows_pending_confirms_not_resent_on_wakeups(project, broker):
    # A disk alarm makes the broker stop reading from publishers: the relay's messages sit
    # unconfirmed while notifications and polls keep waking it up.
    s = svc.suffix()
    ex, q = "slow_" + s, "slowq_" + s
    broker.exchange(ex)
    broker.queue(q, [ex])
    p = project.setup_relay({"PUBLISHER_POLL_INTERVAL": 0.1})
    relay = p.start_relay()
    time.sleep(0.5)
    svc.rabbitmqctl("set_disk_free_limit", "10000GB")
    try:
        time.sleep(2)
        ids = p.outbox_insert_many(ex, 50)
        for _ in range(30):  # more wake-ups: notifications from other inserts
            conn = svc.pg_connect()
            with conn.cursor() as cur:
                cur.execute("NOTIFY %s" % p.table("outbox"))
            conn.close()
            time.sleep(0.05)
        time.sleep(1)
        assert p.outbox_count() == 50  # nothing confirmed, nothing deleted
    finally:
        svc.rabbitmqctl("set_disk_free_limit", "50MB")
    got = broker.collect(q, 50, timeout=30, settle=2)
    mids = [svc.row_id(props.message_id) for _, props, _ in got]
    assert sorted(mids) == ids  # each exactly once
    svc.wait_until(lambda: p.outbox_count() == 0, 10, what="table empty")
    assert p.stop(relay) == 0
