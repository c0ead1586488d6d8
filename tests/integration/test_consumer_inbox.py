"""runconsumer: INBOX deduplicates by message id (issue 3, scenario 7)."""
import svc
from svc import RECORDER, sql


def test_same_message_id_twice_runs_the_handler_once(project, broker):
    p = project.setup_consumer(RECORDER)
    inbox = p.table("inbox")
    sql("CREATE TABLE %s (queue text NOT NULL, message_id text NOT NULL, "
        "received_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (queue, message_id))"
        % inbox)
    p.write_settings(p.settings, INBOX=True, INBOX_TABLE=inbox)
    p.start_consumer()
    broker.publish(p.exchange(), "a", {"n": 1}, message_id="dup-1")
    broker.publish(p.exchange(), "a", {"n": 1}, message_id="dup-1")
    # no AMQP message_id: the envelope's eventId qualified by the exchange
    env = {"eventId": "77", "eventType": "a", "aggregate": p.exchange(), "payload": {}}
    broker.publish(p.exchange(), "a", dict(env, n=2))
    broker.publish(p.exchange(), "a", dict(env, n=2))
    broker.publish(p.exchange(), "a", {"n": 3}, message_id="other")
    svc.wait_until(lambda: "duplicates=2" in p.log(), 20, what="2 duplicates counted")
    assert sorted(r[0] for r in p.records()) == [1, 2, 3]
    ids = sorted(r[0] for r in sql("SELECT message_id FROM %s WHERE queue = %%s" % inbox,
                                   p.queue()))
    assert ids == sorted(["dup-1", "%s:77" % p.exchange(), "other"])
    # a later redelivery (e.g. after a crash) is skipped too
    broker.publish(p.exchange(), "a", {"n": 1}, message_id="dup-1")
    svc.wait_until(lambda: "duplicates=3" in p.log(), 20, what="3 duplicates counted")
    assert p.record_count() == 3
    assert broker.count(p.queue()) == 0
    assert p.stop() == 0


def test_zero_byte_inside_a_nested_value_does_not_hang_the_worker(project, broker):
    """The inbox reads eventId with a bounded scanner before Lua: a zero byte inside a nested
    value once made it loop for ever, pinning the worker and blocking the queue."""
    p = project.setup_consumer(RECORDER)
    inbox = p.table("inbox")
    sql("CREATE TABLE %s (queue text NOT NULL, message_id text NOT NULL, "
        "received_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (queue, message_id))"
        % inbox)
    p.write_settings(p.settings, INBOX=True, INBOX_TABLE=inbox, MAX_ATTEMPTS=1)
    p.start_consumer()
    broker.publish(p.exchange(), "a", b'{"x": [\x00], "eventId": "1"}')
    broker.publish(p.exchange(), "a", {"n": 5}, message_id="after")
    svc.wait_until(lambda: 5 in [r[0] for r in p.records()], 20, what="the next message handled")
    assert p.stop() == 0


def make_inbox(p, id_type="text", **settings):
    """The inbox table of p's consumer (message_id of id_type), and settings with INBOX on."""
    inbox = p.table("inbox")
    sql("CREATE TABLE %s (queue text NOT NULL, message_id %s NOT NULL, "
        "received_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (queue, message_id))"
        % (inbox, id_type))
    p.write_settings(p.settings, INBOX=True, INBOX_TABLE=inbox, **settings)
    return inbox


def assert_one_session(p):
    log = p.log()
    assert log.count("consuming '") == 1 and "reconnecting" not in log, log
    assert p.proc.poll() is None


def test_message_id_not_utf8_is_dead_lettered_and_the_next_message_handled(project, broker):
    """A message_id with byte 0xFF once failed the inbox insert (invalid byte sequence for
    encoding "UTF8"): the session ended, the message came back, for ever, and the queue
    stalled. The id is the sender's fault: the message is dead-lettered with a reason."""
    p = project.setup_consumer(RECORDER)
    inbox = make_inbox(p)
    p.start_consumer()
    broker.publish(p.exchange(), "a", {"n": 1}, message_id=b"bad-\xff-id")
    broker.publish(p.exchange(), "a", {"n": 2}, message_id="good")
    svc.wait_until(lambda: p.record_count() == 1, 20, what="the next message handled")
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == 1, 20, what="1 dead letter")
    (props, body), = broker.get_all(p.queue() + ".dlq")
    assert props.headers["x-svccomm-reason"] == "invalid-message-id"
    assert "UTF-8" in props.headers["x-svccomm-error"]
    assert body == b'{"n": 1}'
    assert [r[0] for r in p.records()] == [2]
    assert [r[0] for r in sql("SELECT message_id FROM %s" % inbox)] == ["good"]
    assert_one_session(p)
    assert broker.count(p.queue()) == 0
    assert p.stop() == 0


def test_message_id_the_database_refuses_as_bad_data_is_dead_lettered(project, broker):
    """Any inbox error whose SQLSTATE says the value was bad (class 22, here 22001 from a
    varchar(16) column) is the message's fault, not the session's."""
    p = project.setup_consumer(RECORDER)
    make_inbox(p, id_type="varchar(16)")
    p.start_consumer()
    broker.publish(p.exchange(), "a", {"n": 1}, message_id="x" * 40)
    broker.publish(p.exchange(), "a", {"n": 2}, message_id="short")
    svc.wait_until(lambda: p.record_count() == 1, 20, what="the next message handled")
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == 1, 20, what="1 dead letter")
    (props, _), = broker.get_all(p.queue() + ".dlq")
    assert props.headers["x-svccomm-reason"] == "invalid-message-id"
    assert "too long" in props.headers["x-svccomm-error"]
    assert [r[0] for r in p.records()] == [2]
    assert_one_session(p)
    assert p.stop() == 0


def test_two_producers_with_the_same_row_id_through_the_relay_are_both_handled(
        make_project, broker):
    """The relay once published the bare outbox row id as message_id: another service's
    row 1 was skipped as "already handled". It now sends "<APP_ID>:<row id>"."""
    c = make_project().setup_consumer(RECORDER)
    inbox = make_inbox(c)
    c.start_consumer()
    for n, app in enumerate(["orders", "billing"], 1):
        prod = make_project().setup_relay({"APP_ID": app})
        ids = prod.outbox_insert([{"exchange": c.exchange(), "routing_key": "ev",
                                   "body": '{"n": %d}' % n}])
        assert ids == [1]  # the same row id in both producers' outboxes
        relay = prod.start_relay()
        svc.wait_until(lambda: c.record_count() == n, 20, what="message of %s handled" % app)
        assert prod.stop(relay) == 0
    assert sorted(r[0] for r in c.records()) == [1, 2]
    assert sorted(r[0] for r in sql("SELECT message_id FROM %s" % inbox)) == [
        "billing:1", "orders:1"]
    assert "already handled" not in c.log()
    assert c.stop() == 0
