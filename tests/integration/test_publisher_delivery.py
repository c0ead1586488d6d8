"""runpublisher / checkpublisher: what is sent and when (issue 5, scenarios 1, 2, 8, 9, 12, 13)."""
import json
import time

import pytest

import svc


def topology(broker, n_exchanges=1):
    s = svc.suffix()
    exchanges = ["agg%d_%s" % (i, s) for i in range(n_exchanges)]
    for ex in exchanges:
        broker.exchange(ex)
    q = "q_" + s
    broker.queue(q, exchanges)
    return exchanges, q


def test_1_hundred_rows_exact_bodies_and_properties(project, broker):
    p = project.setup_relay()
    (ex,), q = topology(broker)
    rows = []
    for i in range(100):
        r = {"exchange": ex, "routing_key": "user.update.%d" % (i % 3),
             "body": json.dumps({"n": i, "text": "Grüße 🌍 \"q\" \\"}, ensure_ascii=False)}
        if i % 2:
            r["correlation_id"] = "corr-%d" % i
        if i % 5 == 0:
            r["headers"] = {"traceparent": "00-%032x-%016x-01" % (i, i)}
        if i == 7:
            r["message_id"] = "custom-id-7"
        rows.append(r)
    t0 = int(time.time())
    ids = p.outbox_insert(rows)
    relay = p.start_relay()
    got = broker.collect(q, 100)
    assert len(got) == 100
    svc.wait_until(lambda: p.outbox_count() == 0, 10, what="table empty")
    by_id = {}
    for method, props, body in got:
        by_id[props.message_id] = (method, props, body)
    for i, (row_id, r) in enumerate(zip(ids, rows)):
        mid = r.get("message_id", "pubtest:%d" % row_id)
        method, props, body = by_id[mid]
        assert body.decode("utf-8") == r["body"]  # exact bytes
        assert method.exchange == ex and method.routing_key == r["routing_key"]
        assert props.content_type == "application/json"
        assert props.delivery_mode == 2
        assert props.app_id == "pubtest"
        assert props.correlation_id == r.get("correlation_id")
        assert abs(props.timestamp - t0) <= 5
        headers = props.headers or {}
        if "headers" in r:
            assert headers["traceparent"] == r["headers"]["traceparent"]
        else:
            assert "traceparent" not in headers
    # the order of one aggregate is the id order
    order = [props.message_id for _, props, _ in got]
    expected = [r.get("message_id", "pubtest:%d" % i) for i, r in zip(ids, rows)]
    assert order == expected
    assert p.stop(relay) == 0


def test_2_nothing_sent_before_commit_and_never_after_rollback(project, broker):
    p = project.setup_relay()
    (ex,), q = topology(broker)
    relay = p.start_relay()
    conn = svc.pg_connect()
    conn.autocommit = False
    cur = conn.cursor()
    cur.execute("INSERT INTO %s (exchange, routing_key, body) VALUES (%%s, 'a', '\"c\"') "
                "RETURNING id" % p.table("outbox"), (ex,))
    committed_id = cur.fetchone()[0]
    time.sleep(2.5)  # several poll intervals pass while the transaction is open
    assert broker.count(q) == 0
    conn.commit()
    cur.execute("INSERT INTO %s (exchange, routing_key, body) VALUES (%%s, 'a', '\"r\"')"
                % p.table("outbox"), (ex,))
    conn.rollback()
    conn.close()
    got = broker.collect(q, 1, timeout=10, settle=2.5)
    assert [(props.message_id, body) for _, props, body in got] == [("pubtest:%d" % committed_id, b'"c"')]
    assert p.outbox_count() == 0
    assert p.stop(relay) == 0


def test_8_rows_written_while_stopped_go_out_at_start(project, broker):
    p = project.setup_relay()
    (ex,), q = topology(broker)
    relay = p.start_relay()
    assert p.stop(relay) == 0
    ids = p.outbox_insert_many(ex, 100)
    time.sleep(0.5)
    assert broker.count(q) == 0
    relay = p.start_relay()
    got = broker.collect(q, 100)
    assert sorted(svc.row_id(props.message_id) for _, props, _ in got) == ids
    svc.wait_until(lambda: p.outbox_count() == 0, 10, what="table empty")
    assert p.stop(relay) == 0


@pytest.mark.parametrize("mode,interval", [("listen", 30), ("poll", 1)])
def test_9_scheduled_row_on_time_and_cancelled_never(project, broker, mode, interval):
    # LISTEN mode with a long poll interval: only the notification plus the due-time wake-up
    # can send the row on time. Poll mode learns of the row at the next poll.
    p = project.setup_relay({"PUBLISHER_MODE": mode, "PUBLISHER_POLL_INTERVAL": interval})
    (ex,), q = topology(broker)
    relay = p.start_relay()
    time.sleep(0.5)
    conn = svc.pg_connect()
    with conn.cursor() as cur:
        cur.execute("INSERT INTO %s (exchange, routing_key, body, send_after, tags) VALUES "
                    "(%%s, 'later', '\"cancelled\"', now() + interval '2 seconds', "
                    "'{\"order\": \"7\"}') RETURNING id" % p.table("outbox"), (ex,))
        cur.execute("INSERT INTO %s (exchange, routing_key, body, send_after) VALUES "
                    "(%%s, 'later', '\"due\"', now() + interval '2 seconds') RETURNING id"
                    % p.table("outbox"), (ex,))
        due_id = cur.fetchone()[0]
        t0 = time.time()
        cur.execute("DELETE FROM %s WHERE tags @> '{\"order\": \"7\"}'" % p.table("outbox"))
    conn.close()
    svc.wait_until(lambda: broker.count(q) >= 1, 10, interval=0.02, what="scheduled message")
    elapsed = time.time() - t0
    assert 1.8 <= elapsed <= 2.0 + min(interval, 1) + 0.5, elapsed
    got = broker.collect(q, 1, timeout=10, settle=2.5)
    assert [body for _, _, body in got] == [b'"due"']
    assert got[0][1].message_id == "pubtest:%d" % due_id
    assert p.outbox_count() == 0
    log = p.log(relay)
    if mode == "listen":
        assert "falling back to polling" not in log
    assert p.stop(relay) == 0


def test_9b_scheduled_row_not_sent_early(project, broker):
    p = project.setup_relay({"PUBLISHER_POLL_INTERVAL": 0.2})
    (ex,), q = topology(broker)
    relay = p.start_relay()
    conn = svc.pg_connect()
    with conn.cursor() as cur:
        cur.execute("INSERT INTO %s (exchange, routing_key, body, send_after) VALUES "
                    "(%%s, 'later', '\"due\"', now() + interval '2 seconds')" % p.table("outbox"),
                    (ex,))
    t0 = time.time()
    conn.close()
    svc.wait_until(lambda: broker.count(q) == 1, 10, interval=0.02, what="scheduled message")
    elapsed = time.time() - t0
    assert 1.8 <= elapsed <= 3.0, elapsed
    assert p.stop(relay) == 0


def test_12_checkpublisher_healthy_and_unhealthy(project):
    p = project.setup_relay()
    r = p.run("checkpublisher")
    assert r.returncode == 0, r.stderr
    assert "publisher healthy" in r.stdout
    # two rows due for a minute, one due for 5 s, one scheduled, one parked: no relay runs
    p.outbox_insert([{"exchange": "x", "routing_key": "k", "body": "1"}] * 0)
    conn = svc.pg_connect()
    with conn.cursor() as cur:
        for ago in (60, 60, 5):
            cur.execute("INSERT INTO %s (exchange, routing_key, body, send_after) VALUES "
                        "('x', 'k', '1', now() - make_interval(secs => %%s))" % p.table("outbox"),
                        (ago,))
        cur.execute("INSERT INTO %s (exchange, routing_key, body, send_after) VALUES "
                    "('x', 'k', '1', now() + interval '1 hour')" % p.table("outbox"))
        cur.execute("INSERT INTO %s (exchange, routing_key, body, send_after, parked_at) VALUES "
                    "('x', 'k', '1', now() - interval '1 hour', now())" % p.table("outbox"))
    conn.close()
    r = p.run("checkpublisher")
    assert r.returncode == 1
    assert "unhealthy" in r.stdout and "2 row(s)" in r.stdout and "3 due" in r.stdout
    assert "1 parked" in r.stdout
    # a parked row counts against health unless allowed (issue 22)
    r = p.run("checkpublisher", "--max-queue-size", "2")
    assert r.returncode == 1 and "1 parked (allowed 0)" in r.stdout
    r = p.run("checkpublisher", "--max-queue-size", "2", "--max-parked", "1")
    assert r.returncode == 0 and "publisher healthy" in r.stdout
    r = p.run("checkpublisher", "--max-delay", "120", "--max-parked=1")
    assert r.returncode == 0 and "publisher healthy" in r.stdout
    r = p.run("checkpublisher", "--max-delay=1", "--max-queue-size=2", "--max-parked=1")
    assert r.returncode == 1 and "3 row(s)" in r.stdout
    r = p.run("checkpublisher", "--max-delay", "soon")
    assert r.returncode == 2
    r = p.run("checkpublisher", "--bogus")
    assert r.returncode == 2
    r = p.run("checkpublisher", "--help")
    assert r.returncode == 0 and "--max-queue-size" in r.stdout


def test_12b_checkpublisher_database_down_is_failure(project):
    p = project.setup_relay()
    r = p.run("checkpublisher",
              env={"SVCCOMM_DATABASE_URL": "postgresql://svccomm@127.0.0.1:1/svccomm"})
    assert r.returncode == 3  # not 1: the health is unknown (issue 22)
    assert "publisher healthy" not in r.stdout


def test_13_message_fits_the_python_library_consumer(project, broker):
    p = project.setup_relay()
    (ex,), q = topology(broker)
    r = p.run("publish", ex, "update.base", '{"name": "Ann", "tags": ["a"]}')
    assert r.returncode == 0, r.stderr
    event_id = r.stdout.strip()
    relay = p.start_relay()
    got = broker.collect(q, 1, timeout=15)
    assert len(got) == 1
    method, props, body = got[0]
    # What the Python library's consumer reads: JSON content, the envelope fields, and the
    # routing (exchange = aggregate, routing key = event type).
    assert props.content_type == "application/json"
    assert props.delivery_mode == 2
    assert props.message_id == "pubtest:" + event_id
    env = json.loads(body)
    assert set(env) >= {"eventId", "eventTime", "eventType", "aggregate", "payload"}
    assert env["eventId"] == event_id and isinstance(env["eventId"], str)
    assert env["eventType"] == "update.base" == method.routing_key
    assert env["aggregate"] == ex == method.exchange
    assert env["payload"] == {"name": "Ann", "tags": ["a"]}
    assert env["eventTime"].endswith("Z") and "T" in env["eventTime"]
    assert p.stop(relay) == 0


def test_message_id_is_app_id_and_row_id_unless_the_row_sets_one(project, broker):
    """Ids unique per producer: a bare row id collided in consumers' inboxes with another
    service's row of the same id. eventId keeps its documented form (the row id)."""
    p = project.setup_relay({"APP_ID": "orders-svc"})
    (ex,), q = topology(broker)
    r = p.run("publish", ex, "update.base", '{"name": "Ann"}')
    assert r.returncode == 0, r.stderr
    event_id = r.stdout.strip()
    own = p.outbox_insert([{"exchange": ex, "routing_key": "a", "body": '"b"',
                            "message_id": "my-id-1"}])
    relay = p.start_relay()
    got = broker.collect(q, 2, timeout=15)
    assert [props.message_id for _, props, _ in got] == ["orders-svc:" + event_id, "my-id-1"]
    assert json.loads(got[0][2])["eventId"] == event_id == str(own[0] - 1)
    assert all(props.app_id == "orders-svc" for _, props, _ in got)
    assert p.stop(relay) == 0


def test_claims_larger_than_the_window_wait_for_room_and_go_out_once_in_order(project, broker):
    """A claim does not wait for room in the confirm window: its rows wait in the relay and go
    out as confirms come back. With a window of 3 and claims of 10, every row goes out exactly
    once, in id order, and is deleted; a row committed while others wait is not skipped."""
    p = project.setup_relay({"PUBLISHER_WINDOW": 3, "PUBLISHER_BATCH_SIZE": 10,
                             "LOG_LEVEL": "debug"})
    (ex,), q = topology(broker)
    ids = p.outbox_insert_many(ex, 60)
    relay = p.start_relay()
    late = p.outbox_insert([{"exchange": ex, "routing_key": "ev.x", "body": '{"n": 61}'}])
    got = broker.collect(q, 61, timeout=30)
    svc.wait_until(lambda: p.outbox_count() == 0, 15, what="table empty")
    assert p.stop(relay) == 0
    mids = [svc.row_id(props.message_id) for _, props, _ in got]
    assert mids == ids + late
    log = p.log(relay)
    # claims of 10 rows were published 3 at a time at first: the window was the limit
    assert "claimed 10 of 10, published 3, in flight 3" in log, log[-3000:]


def test_claimed_rows_that_wait_long_are_claimed_again_so_a_deleted_row_stays_unsent(
        project, broker):
    """Claimed rows waiting for room in the window are forgotten after a second and claimed
    again: a row deleted from the table meanwhile (an outbox cancel) is not published from the
    relay's stale copy. The broker holds the window with a memory alarm."""
    p = project.setup_relay({"PUBLISHER_WINDOW": 1, "PUBLISHER_BATCH_SIZE": 10,
                             "LOG_LEVEL": "debug"})
    (ex,), q = topology(broker)
    relay = p.start_relay()
    first = p.outbox_insert_many(ex, 1)
    assert [svc.row_id(pr.message_id) for _, pr, _ in broker.collect(q, 1, timeout=15)] == first
    svc.wait_until(lambda: p.outbox_count() == 0, 10, what="first row deleted")
    svc.rabbitmqctl("set_vm_memory_high_watermark", "0")
    try:
        ids = p.outbox_insert_many(ex, 5)
        relay.wait_for_log("claimed 5 of 10, published 1", 15)
        svc.sql("DELETE FROM %s WHERE id = %%s" % p.table("outbox"), ids[2])
        relay.wait_for_log("claiming them again", 10)
        relay.wait_for_log("claimed 3 of 10, published 0", 10)
    finally:
        svc.rabbitmqctl("set_vm_memory_high_watermark", "0.4")
    got = broker.collect(q, 4, timeout=20)
    svc.wait_until(lambda: p.outbox_count() == 0, 15, what="table empty")
    assert p.stop(relay) == 0
    assert [svc.row_id(pr.message_id) for _, pr, _ in got] == ids[:2] + ids[3:]
    assert broker.count(q) == 0  # the deleted row never came
