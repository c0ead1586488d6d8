"""runconsumer: the database's own failures are not the message's (issue 17, items 1 and 3).
Runs against the test servers only: it makes the database read-only."""
import time

import pytest

import svc
from svc import sql

FLOW = """
local svccomm = require "svccomm"
svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  svccomm.db.query("INSERT INTO $TABLE (n, attempt) VALUES ($1, $2)", body.n, msg.attempt)
end)
"""


def set_read_only(conn, on):
    cur = conn.cursor()
    cur.execute("ALTER SYSTEM SET default_transaction_read_only = %s" % ("on" if on else "off"))
    cur.execute("SELECT pg_reload_conf()")


@pytest.mark.parametrize("inbox", [False, True], ids=["inbox-off", "inbox-on"])
def test_read_only_database_requeues_without_counting_attempts(project, broker, inbox):
    p = project.setup_consumer(FLOW, {"RETRY_DELAYS": [0.1, 0.1], "MAX_ATTEMPTS": 3,
                                      "RECONNECT_MAX_DELAY": 1, "PREFETCH_COUNT": 10})
    if inbox:
        p.write_settings(p.settings, INBOX=True, INBOX_TABLE=p.table("inbox"))
        r = p.run("migrate", timeout=60)  # the outbox and inbox tables
        assert r.returncode == 0, r.stderr
    p.start_consumer()
    admin = project.pg()
    n = 0
    try:
        set_read_only(admin, True)
        for _ in range(30):  # about 15 s of flow against a read-only database
            for _ in range(5):
                n += 1
                broker.publish(p.exchange(), "flow", {"n": n}, message_id="m-%d" % n)
            time.sleep(0.5)
    finally:
        set_read_only(admin, False)
    svc.wait_until(lambda: sql("SELECT count(DISTINCT n) FROM %s" % p.table())[0][0] == n, 60,
                   what="all %d handled once the database is writable" % n)
    assert broker.count(p.queue() + ".dlq") == 0
    log = p.log()
    assert "read-only" in log and "no attempt counted" in log, log
    # a read-only server is no primary: the session is dropped and opened again, so that
    # with several hosts (target_session_attrs=read-write) libpq finds the one that is
    assert "reconnecting" in log, log
    assert "retry in" not in log  # nothing went through the retry queues either
    # once per message: no attempt was spent on the outage
    assert sql("SELECT max(attempt) FROM %s" % p.table())[0][0] == 1
    assert p.proc.running()
    assert p.stop() == 0


LOCKED = """
local svccomm = require "svccomm"
svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  svccomm.db.query("UPDATE $TABLE SET attempt = attempt + 1 WHERE n = 0")
  svccomm.db.query("INSERT INTO $TABLE (n, attempt) VALUES ($1, $2)", body.n, msg.attempt)
end)
"""


def test_statement_waiting_on_a_lock_is_cancelled_at_handler_timeout(project, broker):
    """HANDLER_TIMEOUT bounds database time: the statement is cancelled at the deadline while
    the lock is still held, retried and dead-lettered as usual, and nothing commits."""
    p = project.setup_consumer(LOCKED, {"HANDLER_TIMEOUT": 1.5, "MAX_ATTEMPTS": 2,
                                        "RETRY_DELAYS": [0.2]})
    sql("INSERT INTO %s (n, attempt) VALUES (0, 0)" % p.table())
    p.start_consumer()
    holder = project.pg()
    cur = holder.cursor()
    cur.execute("BEGIN")
    cur.execute("SELECT * FROM %s WHERE n = 0 FOR UPDATE" % p.table())
    try:
        broker.publish(p.exchange(), "locked", {"n": 1}, message_id="locked-1")
        svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == 1, 20,
                       what="the dead letter while the lock is still held")
    finally:
        cur.execute("ROLLBACK")
    (props, _), = broker.get_all(p.queue() + ".dlq")
    assert props.headers["x-svccomm-reason"] == "max-attempts"
    assert "HANDLER_TIMEOUT" in props.headers["x-svccomm-error"]
    assert p.log().count("failed in") == 2  # retried once, as MAX_ATTEMPTS says
    assert p.records("n, attempt") == [(0, 0)]  # nothing of the handler committed
    assert p.stop() == 0


SLOW = """
local svccomm = require "svccomm"
svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  svccomm.db.query("SELECT pg_sleep($1)", body.sleep)
  svccomm.db.query("INSERT INTO $TABLE (n, attempt) VALUES ($1, $2)", body.n, msg.attempt)
end)
"""


def consumer_connections(p):
    """connected_at of the broker connections of p's consumer."""
    out = svc.rabbitmqctl("list_connections", "connected_at", "client_properties")
    return sorted(line.split()[0] for line in out.splitlines() if p.queue() in line)


def test_heartbeats_flow_while_a_handler_waits_longer_than_two_intervals(project, broker):
    """HEARTBEAT 2 s, a handler that waits 7 s in the database: the broker keeps the
    connection, the ack goes through and the work is committed once (no INBOX)."""
    p = project.setup_consumer(SLOW, {"HEARTBEAT": 2, "HANDLER_TIMEOUT": 30})
    p.start_consumer()
    before = consumer_connections(p)
    broker.publish(p.exchange(), "slow", {"n": 1, "sleep": 7}, message_id="slow-1")
    svc.wait_until(lambda: p.record_count() >= 1, 20, what="the slow handler's work")
    svc.wait_until(lambda: broker.count(p.queue()) == 0, 10, what="the ack")
    time.sleep(1.0)
    assert p.record_count() == 1
    assert consumer_connections(p) == before  # the same two connections
    assert "reconnecting in" not in p.log() and "heartbeat timeout" not in p.log()
    assert p.stop() == 0


def test_heartbeats_flow_while_the_inbox_insert_waits_on_a_lock(project, broker):
    """Another transaction holds the inbox key of the message (a copy in flight elsewhere)
    for 7 s with HEARTBEAT 2 s: the insert waits, the broker keeps the connection, and once
    the other transaction rolls back the message is handled once."""
    p = project.setup_consumer(SLOW, {"HEARTBEAT": 2, "HANDLER_TIMEOUT": 30})
    inbox = p.table("inbox")
    sql("CREATE TABLE %s (queue text NOT NULL, message_id text NOT NULL, "
        "received_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (queue, message_id))"
        % inbox)
    p.write_settings(p.settings, INBOX=True, INBOX_TABLE=inbox)
    p.start_consumer()
    before = consumer_connections(p)
    holder = svc.pg_connect()
    try:
        holder.autocommit = False
        holder.cursor().execute("INSERT INTO %s (queue, message_id) VALUES (%%s, %%s)" % inbox,
                                (p.queue(), "held-1"))
        broker.publish(p.exchange(), "m", {"n": 1}, message_id="held-1")
        svc.wait_until(lambda: "Lock" == (sql("SELECT wait_event_type FROM pg_stat_activity "
                                              "WHERE query LIKE %s AND state = 'active'",
                                              "%" + inbox + "%") or [[None]])[0][0],
                       10, what="the inbox insert waiting on the key")
        time.sleep(7)
        holder.rollback()
    finally:
        holder.close()
    svc.wait_until(lambda: p.record_count() == 1, 20, what="the message handled")
    svc.wait_until(lambda: broker.count(p.queue()) == 0, 10, what="the ack")
    assert consumer_connections(p) == before  # the same two connections
    assert "reconnecting in" not in p.log() and "heartbeat timeout" not in p.log()
    assert p.stop() == 0


def test_work_committed_whose_ack_was_lost_is_not_done_twice(project, broker):
    """The broker closes the consumer's connections while a handler waits: the COMMIT
    succeeds, the ack is lost, the message comes back and is acked without its handler."""
    p = project.setup_consumer(SLOW, {"HEARTBEAT": 2, "HANDLER_TIMEOUT": 30})
    p.start_consumer()
    broker.publish(p.exchange(), "slow", {"n": 1, "sleep": 10}, message_id="slow-2")
    svc.wait_until(lambda: "pg_sleep" in str(sql(
        "SELECT query FROM pg_stat_activity WHERE state = 'active'")), 10,
        what="the handler to wait")
    out = svc.rabbitmqctl("list_connections", "pid", "client_properties")
    for line in out.splitlines():
        if p.queue() in line and "(retries)" not in line:  # the consuming connection
            svc.rabbitmqctl("close_connection", line.split()[0], "test: ack lost")
    svc.wait_until(lambda: "acked without the handler" in p.log(), 30,
                   what="the redelivery acked without the handler")
    svc.wait_until(lambda: broker.count(p.queue()) == 0, 10, what="the queue empty")
    assert p.record_count() == 1
    assert p.stop() == 0
