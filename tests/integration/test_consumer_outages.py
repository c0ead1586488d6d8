"""runconsumer: broker and database outages under load (issue 3, scenarios 9, 10)."""
import subprocess
import time

import pytest

from test_consumer_support import Broker, Project, pgctl, rabbitmqctl, wait_for

STEADY = """
local svccomm = require "svccomm"
local db = svccomm.db
svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  db.query("SELECT pg_sleep(0.0004)")  -- keep the flow going for a few seconds
  db.query("INSERT INTO $TABLE (n, attempt) VALUES ($1, $2)", body.n, msg.attempt)
end)
"""

N = 10000


def publish_many(n, exchange):
    b = Broker()
    b.ch.close()
    b.ch = b.conn.channel()  # no confirm mode: fast; counted in the queue below
    for i in range(n):
        b.publish(exchange, "load", {"n": i})
    b.close()


def handled(p):
    from test_consumer_support import sql
    return sql("SELECT count(DISTINCT n) FROM %s" % p.table)[0][0]


def broker_up():
    try:
        b = Broker()
        b.close()
        return True
    except Exception:
        return False


def test_broker_restarted_twice_while_10000_flow(tmp_path):
    ctl = rabbitmqctl()
    if ctl is None:
        pytest.fail("SVCCOMM_TEST_RABBITMQCTL is not set: run `eval \"$(scripts/servers.sh env)\"`")
    p = Project(tmp_path, STEADY, {"PREFETCH_COUNT": 20})
    try:
        p.start()
        publish_many(N, p.exchange)
        for round_ in range(2):
            wait_for(lambda: handled(p) >= (round_ + 1) * N // 4, 120, what="progress")
            subprocess.run(ctl + ["stop_app"], check=True, capture_output=True)
            time.sleep(1.0)
            subprocess.run(ctl + ["start_app"], check=True, capture_output=True)
            wait_for(broker_up, 60, what="the broker back")
        wait_for(lambda: handled(p) == N, 240, interval=0.5, what="all 10,000 handled")
        assert p.log().count("consuming '%s'" % p.queue) >= 3  # reconnected twice
        assert p.proc.poll() is None
        b = Broker()
        wait_for(lambda: b.count(p.queue) == 0, 30, what="the queue drained")
        assert p.stop() == 0
        p.cleanup(b)
        b.close()
    finally:
        p.stop()
        if broker_up():
            b = Broker()
            p.cleanup(b)
            b.close()


def test_postgresql_restarted_under_load_recovers_and_loses_nothing(tmp_path):
    ctl = pgctl()
    if ctl is None:
        pytest.fail("SVCCOMM_TEST_PGCTL is not set: run `eval \"$(scripts/servers.sh env)\"`")
    p = Project(tmp_path, STEADY, {"PREFETCH_COUNT": 20})
    b = Broker()
    try:
        p.start()
        publish_many(N // 2, p.exchange)
        wait_for(lambda: handled(p) >= N // 8, 120, what="progress")
        subprocess.run(ctl + ["restart", "-m", "fast", "-w"], check=True, capture_output=True)
        wait_for(lambda: handled(p) == N // 2, 240, interval=0.5, what="all handled")
        assert "PostgreSQL" in p.log()  # the loss was noticed and logged
        assert p.log().count("consuming '%s'" % p.queue) >= 2
        wait_for(lambda: b.count(p.queue) == 0, 30, what="the queue drained")
        assert p.stop() == 0
    finally:
        p.cleanup(b)
        b.close()


def test_queue_deleted_under_the_consumer_is_announced_and_redeclared(tmp_path):
    """The broker's basic.cancel (consumer_cancel_notify) is logged at once, the consumer
    reconnects, declares the queue again and goes on consuming."""
    broker = Broker()
    p = Project(tmp_path, STEADY, {"STATS_INTERVAL": 60})
    try:
        p.start()
        broker.ch.queue_delete(p.queue)
        wait_for(lambda: "the broker cancelled consumer" in p.log(), 5,
                 what="the cancel to be logged")
        wait_for(lambda: p.log().count("consuming '%s'" % p.queue) >= 2, 15,
                 what="the consumer to declare and consume again")
        broker.publish(p.exchange, "after", {"n": 1})
        wait_for(lambda: handled(p) == 1, 15, what="the message after the redeclare")
        assert p.stop() == 0
    finally:
        p.cleanup(broker)
        broker.close()
