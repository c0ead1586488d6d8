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
