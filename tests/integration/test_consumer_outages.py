"""runconsumer: broker and database outages under load (issue 3, scenarios 9, 10)."""
import svc
from svc import Broker, sql

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
    b = Broker(confirms=False)  # fast; counted in the queue below
    for i in range(n):
        b.publish(exchange, "load", {"n": i})
    b.close()


def handled(p):
    return sql("SELECT count(DISTINCT n) FROM %s" % p.table())[0][0]


def test_broker_restarted_twice_while_10000_flow(project):
    p = project.setup_consumer(STEADY, {"PREFETCH_COUNT": 20})
    p.start_consumer()
    publish_many(N, p.exchange())
    for round_ in range(2):
        svc.wait_until(lambda: handled(p) >= (round_ + 1) * N // 4, 120, what="progress")
        svc.restart_rabbitmq(down_for=1.0)  # returns once the broker accepts connections
    svc.wait_until(lambda: handled(p) == N, 240, interval=0.5, what="all 10,000 handled")
    assert p.log().count("consuming '%s'" % p.queue()) >= 3  # reconnected twice
    assert p.proc.poll() is None
    b = Broker()
    try:
        svc.wait_until(lambda: b.count(p.queue()) == 0, 30, what="the queue drained")
    finally:
        b.close()
    assert p.stop() == 0


def test_postgresql_restarted_under_load_recovers_and_loses_nothing(project, broker):
    p = project.setup_consumer(STEADY, {"PREFETCH_COUNT": 20})
    p.start_consumer()
    publish_many(N // 2, p.exchange())
    svc.wait_until(lambda: handled(p) >= N // 8, 120, what="progress")
    svc.restart_postgresql()
    svc.wait_until(lambda: handled(p) == N // 2, 240, interval=0.5, what="all handled")
    assert "PostgreSQL" in p.log()  # the loss was noticed and logged
    assert p.log().count("consuming '%s'" % p.queue()) >= 2
    svc.wait_until(lambda: broker.count(p.queue()) == 0, 30, what="the queue drained")
    assert p.stop() == 0


def test_queue_deleted_under_the_consumer_is_announced_and_redeclared(project, broker):
    """The broker's basic.cancel (consumer_cancel_notify) is logged at once, the consumer
    reconnects, declares the queue again and goes on consuming."""
    p = project.setup_consumer(STEADY, {"STATS_INTERVAL": 60})
    p.start_consumer()
    broker.ch.queue_delete(p.queue())
    svc.wait_until(lambda: "the broker cancelled consumer" in p.log(), 5,
                   what="the cancel to be logged")
    svc.wait_until(lambda: p.log().count("consuming '%s'" % p.queue()) >= 2, 15,
                   what="the consumer to declare and consume again")
    broker.publish(p.exchange(), "after", {"n": 1})
    svc.wait_until(lambda: handled(p) == 1, 15, what="the message after the redeclare")
    assert p.stop() == 0
