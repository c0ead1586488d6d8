"""runconsumer: pipelined db.exec (CONSUMER_PIPELINE, on by default).

A handler's db.exec at the top level of its transaction does not wait for its result: the
statement stays in the libpq pipeline while the next messages run, and its result is read at
the batch's COMMIT, at the first statement whose result is needed (db.query), at a nested
db.transaction or at a handler failure. A failure read that late fails the whole batch: it is
rolled back, requeued without counting an attempt, and handled again one message at a time
without pipelining, where the failing message meets the database's error in its handler.
"""
import json

import svc
from svc import sql

# n < 0: the message's second statement violates the primary key of $TABLE_u (late failure).
LATE = """
local svccomm = require "svccomm"
local db = svccomm.db

svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  local r = db.exec("INSERT INTO $TABLE (n, attempt, rk, info) VALUES ($1, $2, $3, $4)",
    body.n, msg.attempt, rk, type(db.current():exec("SELECT 1")))
  if body.n < 0 then
    db.exec("INSERT INTO $TABLE_u (k) VALUES ('taken')")
  end
end)
"""


def start_with_backlog(p, broker, bodies, rk="job"):
    """Declares the topology, then publishes bodies while the consumer is down, so they
    arrive together and share a batch, and starts it again."""
    p.start_consumer()
    assert p.stop() == 0
    for b in bodies:
        broker.publish(p.exchange(), rk, b)
    return p.start_consumer()


def run_late_failure(project, broker, pipeline):
    settings = {"MAX_ATTEMPTS": 3, "RETRY_DELAYS": [0.3], "PREFETCH_COUNT": 100,
                "CONSUMER_COMMIT_INTERVAL": 2}
    if pipeline is not None:
        settings["CONSUMER_PIPELINE"] = pipeline
    p = project.setup_consumer(LATE.replace("$TABLE_u", project.table("u")), settings)
    sql("CREATE TABLE %s (k text PRIMARY KEY)" % p.table("u"))
    sql("INSERT INTO %s (k) VALUES ('taken')" % p.table("u"))
    bodies = [{"n": i} for i in range(100)]
    bodies[42] = {"n": -42}
    start_with_backlog(p, broker, bodies)
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == 1, 60, what="the dead letter")
    svc.wait_until(lambda: p.record_count() == 99, 20, what="the rows of 99 messages")
    # exactly once: 99 rows, 99 distinct messages, none of the failing one
    assert sql("SELECT count(*), count(DISTINCT n), min(n), max(n) FROM %s" % p.table()) == [
        (99, 99, 0, 99)]
    assert sql("SELECT count(*) FROM %s WHERE n < 0" % p.table()) == [(0,)]
    dead = broker.get_all(p.queue() + ".dlq")
    assert len(dead) == 1
    props, body = dead[0]
    h = props.headers
    assert body == b'{"n": -42}'
    assert h["x-svccomm-reason"] == "max-attempts"
    assert h["x-svccomm-attempts"] == "3"
    assert "duplicate key value violates unique constraint" in h["x-svccomm-error"]
    assert "23505" in h["x-svccomm-error"]
    assert broker.count(p.queue()) == 0
    return p


def test_late_failure_retries_the_batch_one_at_a_time_and_dead_letters_the_culprit(
        project, broker):
    p = run_late_failure(project, broker, None)  # the default: pipelined
    log = p.log()
    # found late (not in the handler), the batch went back unblamed...
    assert "a pipelined statement failed: duplicate key value" in log
    assert "go back to the queue, to be handled one at a time" in log
    # ...and the culprit failed in its handler once per attempt, with the database's error
    assert log.count("failed in") == 3
    # pipelined: db.exec returned true (the count is unavailable)
    infos = {r[0] for r in sql("SELECT DISTINCT info FROM %s" % p.table())}
    assert "boolean" in infos
    assert p.stop() == 0


def test_without_pipeline_the_handler_meets_the_error_at_once(project, broker):
    p = run_late_failure(project, broker, False)
    log = p.log()
    assert "pipelined statement failed" not in log
    assert "go back to the queue" not in log  # only the failing message was retried
    assert log.count("failed in") == 3
    # as before: db.exec returns the affected count
    assert sql("SELECT DISTINCT info FROM %s" % p.table()) == [("number",)]
    assert p.stop() == 0


READS_OWN_WRITES = """
local svccomm = require "svccomm"
local db = svccomm.db

svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  local n = body.n
  assert(db.exec("INSERT INTO $TABLE (n, info) VALUES ($1, 'w')", n) == true)
  db.exec("UPDATE $TABLE SET rk = 'updated' WHERE n = $1", n)
  local rows = db.query("SELECT count(*) AS c, max(rk) AS rk FROM $TABLE WHERE n = $1", n)
  db.exec("UPDATE $TABLE SET attempt = $2, body = $3 WHERE n = $1", n, rows[1].c, rows[1].rk)
end)
"""


def test_a_query_after_pipelined_execs_sees_them(project, broker):
    p = project.setup_consumer(READS_OWN_WRITES, {"PREFETCH_COUNT": 50,
                                                  "CONSUMER_COMMIT_INTERVAL": 2})
    start_with_backlog(p, broker, [{"n": i} for i in range(50)])
    svc.wait_until(lambda: broker.count(p.queue()) == 0 and p.record_count() == 50, 30,
                   what="50 messages handled")
    svc.wait_until(lambda: sql("SELECT count(*) FROM %s WHERE attempt IS NOT NULL"
                               % p.table())[0][0] == 50, 10, what="the batch's commit")
    # each handler's query saw its own insert and update, queued before it
    assert sql("SELECT count(*), count(DISTINCT n) FROM %s WHERE attempt = 1 AND "
               "body = 'updated'" % p.table()) == [(50, 50)]
    assert "failed" not in p.log()
    assert p.stop() == 0


NESTED = """
local svccomm = require "svccomm"
local db = svccomm.db

svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  local n = body.n
  db.exec("INSERT INTO $TABLE (n, info) VALUES ($1, 'before')", n)
  -- inside a nested transaction statements run at once: the failure is caught here and
  -- rolls back only the inner part
  local ok, err = pcall(db.transaction, function()
    db.exec("INSERT INTO $TABLE (n, info) VALUES ($1, 'inner-fail')", n)
    db.exec("INSERT INTO $TABLE_u (k) VALUES ('taken')")
  end)
  assert(not ok and err.sqlstate == "23505", tostring(err))
  local count = db.transaction(function()
    return db.exec("INSERT INTO $TABLE (n, info) VALUES ($1, 'inner-ok')", n)
  end)
  db.exec("INSERT INTO $TABLE (n, info) VALUES ($1, $2)", n, "after:" .. tostring(count))
end)
"""


def test_nested_transaction_after_pipelined_execs(project, broker):
    p = project.setup_consumer(NESTED.replace("$TABLE_u", project.table("u")),
                               {"PREFETCH_COUNT": 20, "CONSUMER_COMMIT_INTERVAL": 2})
    sql("CREATE TABLE %s (k text PRIMARY KEY)" % p.table("u"))
    sql("INSERT INTO %s (k) VALUES ('taken')" % p.table("u"))
    start_with_backlog(p, broker, [{"n": i} for i in range(20)])
    svc.wait_until(lambda: broker.count(p.queue()) == 0 and p.record_count() == 60, 30,
                   what="20 messages handled")
    rows = sql("SELECT n, info FROM %s ORDER BY n, id" % p.table())
    assert rows == [r for i in range(20) for r in
                    ((i, "before"), (i, "inner-ok"), (i, "after:1"))]
    log = p.log()
    assert "failed" not in log and "go back to the queue" not in log
    assert broker.count(p.queue() + ".dlq") == 0
    assert p.stop() == 0


LATER_TABLE = """
local svccomm = require "svccomm"
local db = svccomm.db

svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  db.exec("INSERT INTO $TABLE_later (n) VALUES ($1)", body.n)
end)
"""


def test_a_statement_that_failed_to_prepare_is_prepared_again(project, broker):
    # Pipelined statements are prepared, their Parse queued with them: when it fails (here the
    # table does not exist yet) the name must not stay cached, or every later use would fail
    p = project.setup_consumer(LATER_TABLE.replace("$TABLE_later", project.table("later")),
                               {"MAX_ATTEMPTS": 1})
    p.start_consumer()
    broker.publish(p.exchange(), "job", {"n": 0})
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == 1, 30, what="the dead letter")
    sql("CREATE TABLE %s (n int)" % p.table("later"))
    for i in range(1, 21):
        broker.publish(p.exchange(), "job", {"n": i})
    svc.wait_until(lambda: sql("SELECT count(*) FROM %s" % p.table("later"))[0][0] == 20, 30,
                   what="20 rows")
    log = p.log()
    assert log.count("a pipelined statement failed") == 1, log
    assert "prepared statement" not in log
    (props, body), = broker.get_all(p.queue() + ".dlq")
    assert "does not exist" in props.headers["x-svccomm-error"]
    assert p.stop() == 0


SYNC_POINTS = """
local svccomm = require "svccomm"
local db = svccomm.db

svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  local n = body.n
  if rk == "bad" then
    db.exec("INSERT INTO $TABLE (n, info) VALUES ($1, 'bad')", n)
    db.exec("INSERT INTO $TABLE_u (k) VALUES ('taken')")
  elseif rk == "catcher" then
    -- its query reads the earlier message's failure; catching it changes nothing
    local ok, err = pcall(db.query, "SELECT 1")
    if not ok then
      svccomm.log.warning("caught: " .. tostring(err.pipelined) .. " " .. tostring(err))
    end
    db.exec("INSERT INTO $TABLE (n, info) VALUES ($1, $2)", n,
      ok and "read" or (err.pipelined and "late:" .. err.sqlstate or tostring(err)))
  elseif rk == "many" then
    -- past the bound of 1,000 queued statements, and of 1 MiB of parameters
    for i = 1, 2500 do
      db.exec("INSERT INTO $TABLE (n, info) VALUES ($1, 'many')", n)
    end
    local big = string.rep("x", 400 * 1024)
    for i = 1, 4 do
      db.exec("INSERT INTO $TABLE (n, info, body) VALUES ($1, 'big', $2)", n, big)
    end
  else
    db.exec("INSERT INTO $TABLE (n, info) VALUES ($1, 'plain')", n)
  end
end)
"""


def test_a_caught_late_error_still_fails_the_batch_and_bounds_sync(project, broker):
    p = project.setup_consumer(SYNC_POINTS.replace("$TABLE_u", project.table("u")),
                               {"MAX_ATTEMPTS": 1, "PREFETCH_COUNT": 10,
                                "CONSUMER_COMMIT_INTERVAL": 2})
    sql("CREATE TABLE %s (k text PRIMARY KEY)" % p.table("u"))
    sql("INSERT INTO %s (k) VALUES ('taken')" % p.table("u"))
    kinds = ["plain", "bad", "plain", "catcher", "many", "plain"]
    p.start_consumer()
    assert p.stop() == 0
    for i, k in enumerate(kinds):
        broker.publish(p.exchange(), k, {"n": i})
    p.start_consumer()
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == 1, 60, what="the dead letter")
    svc.wait_until(lambda: p.record_count() == 3 + 1 + 2500 + 4, 30, what="the rows")
    rows = sql("SELECT n, info, count(*) FROM %s GROUP BY n, info ORDER BY n" % p.table())
    # one at a time, the catcher's query had nothing late to read
    assert rows == [(0, "plain", 1), (2, "plain", 1), (3, "read", 1), (4, "big", 4),
                    (4, "many", 2500), (5, "plain", 1)]
    log = p.log()
    assert log.count("a pipelined statement failed") == 1, log
    # in the pipelined run the catcher's query read the failure of message 1's statement
    assert log.count("caught: true a statement queued earlier in this transaction failed: "
                     "duplicate key value") == 1, log
    assert "failed in" in log and log.count("dead-lettered") == 1
    (props, body), = broker.get_all(p.queue() + ".dlq")
    assert json.loads(body) == {"n": 1}
    assert "duplicate key value" in props.headers["x-svccomm-error"]
    assert p.stop() == 0


def test_late_failure_with_inbox_forgets_the_rolled_back_ids(project, broker):
    # the inbox insert reads its result, so each message syncs what the earlier ones queued:
    # the failure is read at the next message's inbox insert, the batch's inbox rows are
    # rolled back with it, and the requeued messages are not taken for duplicates
    p = project.setup_consumer(LATE.replace("$TABLE_u", project.table("u")),
                               {"MAX_ATTEMPTS": 2, "RETRY_DELAYS": [0.3], "PREFETCH_COUNT": 30,
                                "CONSUMER_COMMIT_INTERVAL": 2})
    sql("CREATE TABLE %s (k text PRIMARY KEY)" % p.table("u"))
    sql("INSERT INTO %s (k) VALUES ('taken')" % p.table("u"))
    inbox = p.table("inbox")
    sql("CREATE TABLE %s (queue text NOT NULL, message_id text NOT NULL, "
        "received_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (queue, message_id))"
        % inbox)
    p.write_settings(p.settings, INBOX=True, INBOX_TABLE=inbox)
    p.start_consumer()
    assert p.stop() == 0
    for i in range(30):
        broker.publish(p.exchange(), "job", {"n": -i if i == 7 else i}, message_id="m%d" % i)
    p.start_consumer()
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == 1, 60, what="the dead letter")
    svc.wait_until(lambda: p.record_count() == 29, 20, what="the rows of 29 messages")
    assert sql("SELECT count(*), count(DISTINCT n) FROM %s WHERE n >= 0" % p.table()) == [
        (29, 29)]
    ids = sorted(r[0] for r in sql("SELECT message_id FROM %s" % inbox))
    assert ids == sorted("m%d" % i for i in range(30) if i != 7)
    log = p.log()
    assert "a pipelined statement failed: duplicate key value" in log
    assert "came back after its work committed" not in log
    assert "duplicates=0" in log and not any(
        "duplicates=%d" % k in log for k in range(1, 10))
    (props, body), = broker.get_all(p.queue() + ".dlq")
    assert props.message_id == "m7"
    assert "duplicate key value" in props.headers["x-svccomm-error"]
    assert p.stop() == 0
