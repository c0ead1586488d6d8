"""runconsumer: INBOX deduplicates by message id (issue 3, scenario 7)."""
import json
import time

import pytest

from test_consumer_support import RECORDER, Broker, Project, sql, wait_for


@pytest.fixture
def broker():
    b = Broker()
    yield b
    b.close()


def test_same_message_id_twice_runs_the_handler_once(tmp_path, broker):
    p = Project(tmp_path, RECORDER)
    inbox = "inbox_" + p.id
    sql("CREATE TABLE %s (queue text NOT NULL, message_id text NOT NULL, "
        "received_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (queue, message_id))"
        % inbox)
    p.settings.update({"INBOX": True, "INBOX_TABLE": inbox})
    from test_consumer_support import lua_value
    (tmp_path / "settings.lua").write_text("return " + lua_value(p.settings) + "\n")
    try:
        p.start()
        broker.publish(p.exchange, "a", {"n": 1}, message_id="dup-1")
        broker.publish(p.exchange, "a", {"n": 1}, message_id="dup-1")
        # no AMQP message_id: the envelope's eventId qualified by the exchange
        env = {"eventId": "77", "eventType": "a", "aggregate": p.exchange, "payload": {}}
        broker.publish(p.exchange, "a", dict(env, n=2))
        broker.publish(p.exchange, "a", dict(env, n=2))
        broker.publish(p.exchange, "a", {"n": 3}, message_id="other")
        wait_for(lambda: "duplicates=2" in p.log(), 20, what="2 duplicates counted")
        assert sorted(r[0] for r in p.rows()) == [1, 2, 3]
        ids = sorted(r[0] for r in sql("SELECT message_id FROM %s WHERE queue = %%s" % inbox,
                                       p.queue))
        assert ids == ["dup-1", "%s:77" % p.exchange, "other"]
        # a later redelivery (e.g. after a crash) is skipped too
        broker.publish(p.exchange, "a", {"n": 1}, message_id="dup-1")
        wait_for(lambda: "duplicates=3" in p.log(), 20, what="3 duplicates counted")
        assert p.count() == 3
        assert broker.count(p.queue) == 0
        assert p.stop() == 0
    finally:
        p.cleanup(broker)
        sql("DROP TABLE IF EXISTS %s" % inbox)
