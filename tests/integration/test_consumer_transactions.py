"""runconsumer: the batch transaction and each message's savepoint.

The consumer opens its transaction and each message's savepoint lazily: BEGIN / SAVEPOINT wait
on the connection and go out with the handler's first statement, in the same round trip. These
scenarios pin down what that must not change (a failed message rolls back only its own work;
nested db.transaction and multi-statement exec as the first statement; a handler that never
touches the database) and what it adds (no transaction is open while such a handler runs).
"""
import json
import os
import time

import svc
from svc import sql

MIXED = """
local svccomm = require "svccomm"
local db = svccomm.db

svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  local n = body.n
  if rk == "nodb" then
    return
  elseif rk == "nested" then
    -- first statement of the message: a nested transaction whose inner part fails
    local ok = pcall(db.transaction, function()
      db.query("INSERT INTO $TABLE (n, info) VALUES ($1, 'inner')", n)
      error("inner part fails")
    end)
    assert(not ok)
    db.query("INSERT INTO $TABLE (n, info) VALUES ($1, 'after-inner')", n)
  elseif rk == "exec" then
    -- first statement: several statements without parameters (simple query protocol)
    db.exec("INSERT INTO $TABLE (n, info) VALUES (" .. math.tointeger(n) .. ", 'exec1'); "
      .. "INSERT INTO $TABLE (n, info) VALUES (" .. math.tointeger(n) .. ", 'exec2')")
  elseif rk == "fail" then
    db.query("INSERT INTO $TABLE (n, info) VALUES ($1, 'must-vanish')", n)
    error("fails after writing")
  elseif rk == "status" then
    db.query("INSERT INTO $TABLE (n, info) VALUES ($1, $2)", n,
      db.current().conn:transaction_status())
  else
    db.query("INSERT INTO $TABLE (n, info) VALUES ($1, 'plain')", n)
  end
end)
"""


def test_batch_of_mixed_handlers_keeps_each_message_own_work(project, broker):
    # MAX_ATTEMPTS 1: a failing message is dead-lettered at once, nothing comes back
    p = project.setup_consumer(MIXED, {"MAX_ATTEMPTS": 1, "CONSUMER_COMMIT_INTERVAL": 0.5})
    kinds = ["nodb", "nested", "exec", "fail", "plain", "status"]
    p.start_consumer()  # declares the queue and the bindings
    assert p.stop() == 0
    # Published while the consumer is down: they arrive together and share batches.
    for i in range(60):
        broker.publish(p.exchange(), kinds[i % len(kinds)], {"n": i})
    p.start_consumer()
    svc.wait_until(lambda: broker.count(p.queue()) == 0 and broker.count(p.queue() + ".dlq") == 10,
                   30, what="all 60 messages handled")
    svc.wait_until(lambda: p.record_count() == 50, 10, what="the rows of 50 messages")
    rows = sql("SELECT n, info FROM %s ORDER BY n, id" % p.table())
    expected = []
    for i in range(60):
        k = kinds[i % len(kinds)]
        if k == "nested":
            expected.append((i, "after-inner"))
        elif k == "exec":
            expected += [(i, "exec1"), (i, "exec2")]
        elif k == "plain":
            expected.append((i, "plain"))
        elif k == "status":
            expected.append((i, "intrans"))
    assert rows == expected
    log = p.log()
    assert log.count("fails after writing") == 10
    assert "aborted" not in log
    assert p.stop() == 0


SLOW_NODB = """
local svccomm = require "svccomm"
local db = svccomm.db

svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  if rk == "slow" then
    local t = os.clock() + 1.5   -- busy: no database, no library call
    while os.clock() < t do end
  else
    db.query("INSERT INTO $TABLE (n, info) VALUES ($1, 'plain')", body.n)
  end
end)
"""


def test_handler_without_database_work_runs_outside_any_transaction(project, broker):
    app = "svctx_" + str(int(time.time() * 1000) % 10**9)
    url = os.environ["SVCCOMM_DATABASE_URL"]
    url += ("&" if "?" in url else "?") + "application_name=" + app
    p = project.setup_consumer(SLOW_NODB)
    p.start_consumer(env={"SVCCOMM_DATABASE_URL": url})

    def backend_state():
        rows = sql("SELECT state FROM pg_stat_activity WHERE application_name = %s", app)
        return rows[0][0] if rows else None

    broker.publish(p.exchange(), "slow", {"n": 1})
    time.sleep(0.5)  # inside the 1.5 s handler
    assert backend_state() == "idle"  # no BEGIN / SAVEPOINT was sent for it
    broker.publish(p.exchange(), "plain", {"n": 2})
    svc.wait_until(lambda: p.record_count() == 1, 20, what="the plain message's row")
    svc.wait_until(lambda: backend_state() == "idle", 5, what="the batch to commit")
    assert sql("SELECT n, info FROM %s" % p.table()) == [(2, "plain")]
    assert p.stop() == 0


OUTBOX_HANDLER = """
local svccomm = require "svccomm"
local db = svccomm.db

svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  local n = math.tointeger(body.n)
  if rk == "emit" or rk == "emit_then_fail" or rk == "emit_and_read" then
    db.query("INSERT INTO $TABLE (n, info) VALUES ($1, $2)", n, rk)
    local id = svccomm.publish_aggregate_event { aggregate = "agg", event_type = "done",
      payload = { n = n, s = 'q"uo' .. string.char(92) .. 'te' .. string.char(10, 9, 1) .. ' '
        .. utf8.char(0xfc, 0x20ac, 0x1F600) } }
    if rk == "emit_then_fail" then error("fails after publishing") end
    if rk == "emit_and_read" then
      -- outbox rows are written at commit: the handler's own SQL does not see them yet,
      -- but cancelling sees what this transaction scheduled
      local rows = db.query("SELECT count(*) AS c FROM $OUTBOX WHERE id = $1::int8", id)
      svccomm.publish_future_aggregate_event { aggregate = "agg", event_type = "later",
        event_time = os.time() + 3600, payload = {}, tags = { n = n } }
      local cancelled = svccomm.cancel_future_aggregate_event { aggregate = "agg",
        event_type = "later", tags = { n = n } }
      db.query("INSERT INTO $TABLE (n, info) VALUES ($1, $2)", n,
        "seen " .. rows[1].c .. " cancelled " .. cancelled)
    end
  elseif rk == "flush_then_fail" then
    -- the cancel writes this transaction's rows (this message's too), then the handler fails
    svccomm.publish_aggregate_event { aggregate = "agg", event_type = "mine", payload = {} }
    svccomm.cancel_future_aggregate_event { aggregate = "agg", event_type = "later",
      tags = { n = n } }
    error("fails after its rows were written")
  elseif rk == "poison" then
    svccomm.publish_aggregate_event { aggregate = "agg", event_type = "poison",
      payload = { n = n } }
  end
end)
"""


def migrate(p):
    r = p.run("migrate", timeout=60)
    assert r.returncode == 0, r.stderr


def test_outbox_rows_of_a_batch_commit_with_it_and_a_bad_row_is_isolated(project, broker):
    outbox = project.table("outbox")  # the project's OUTBOX_TABLE
    handler = OUTBOX_HANDLER.replace("$OUTBOX", outbox)
    p = project.setup_consumer(handler, {"MAX_ATTEMPTS": 1, "CONSUMER_COMMIT_INTERVAL": 0.5})
    migrate(p)
    # a row the database refuses only when it is written (not when it is queued)
    sql("CREATE FUNCTION %s_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.routing_key = 'poison' THEN RAISE EXCEPTION 'poisoned row'; END IF; "
        "RETURN NEW; END $$" % outbox)
    sql("CREATE TRIGGER refuse BEFORE INSERT ON %s FOR EACH ROW EXECUTE FUNCTION %s_refuse()"
        % (outbox, outbox))
    p.start_consumer()
    assert p.stop() == 0
    kinds = ["emit", "emit_then_fail", "emit_and_read", "emit", "poison", "emit"]
    for i in range(30):
        broker.publish(p.exchange(), kinds[i % len(kinds)], {"n": i})
    p.start_consumer()
    # 5 emit_then_fail + 5 poison end in the DLQ (MAX_ATTEMPTS 1)
    svc.wait_until(lambda: broker.count(p.queue()) == 0 and broker.count(p.queue() + ".dlq") == 10,
                   40, what="all 30 messages settled")
    emitted = [i for i in range(30) if kinds[i % len(kinds)] in ("emit", "emit_and_read")]
    svc.wait_until(lambda: p.record_count() == len(emitted) + 5, 10, what="the handlers' rows")
    rows = sql("SELECT id, body FROM %s ORDER BY id" % outbox)
    bodies = [json.loads(b) for _, b in rows]
    assert sorted(b["payload"]["n"] for b in bodies) == emitted
    assert all(b["eventId"] == str(i) for (i, _), b in zip(rows, bodies))
    assert all(b["eventType"] == "done" for b in bodies)
    assert all(b["payload"]["s"] == 'q"uo\\te\n\t\x01 \u00fc\u20ac\U0001F600' for b in bodies)
    seen = sql("SELECT info FROM %s WHERE info LIKE 'seen%%'" % p.table())
    assert seen == [("seen 0 cancelled 1",)] * 5
    dead = broker.get_all(p.queue() + ".dlq")
    poisoned = [json.loads(b)["n"] for props, b in dead
                if "poisoned row" in props.headers.get("x-svccomm-error", "")]
    assert sorted(poisoned) == [i for i in range(30) if kinds[i % len(kinds)] == "poison"]
    log = p.log()
    assert log.count("writing the batch's outbox rows: ") >= 5
    assert log.count("writing the batch's outbox rows: ") == \
        log.count("writing the batch's outbox rows: poisoned row")
    assert p.stop() == 0


def test_failed_message_whose_rows_were_already_written_leaves_none(project, broker):
    outbox = project.table("outbox")  # the project's OUTBOX_TABLE
    p = project.setup_consumer(OUTBOX_HANDLER.replace("$OUTBOX", outbox),
                               {"MAX_ATTEMPTS": 1, "CONSUMER_COMMIT_INTERVAL": 0.5})
    migrate(p)
    p.start_consumer()
    assert p.stop() == 0
    kinds = ["emit"] * 5 + ["flush_then_fail"] + ["emit"] * 5
    for i, k in enumerate(kinds):
        broker.publish(p.exchange(), k, {"n": i})
    p.start_consumer()
    svc.wait_until(lambda: broker.count(p.queue()) == 0 and broker.count(p.queue() + ".dlq") == 1,
                   30, what="all 11 messages settled")
    svc.wait_until(lambda: p.record_count() == 10, 10, what="the rows of the 10 good messages")
    rows = sql("SELECT body FROM %s ORDER BY id" % outbox)
    assert sorted(json.loads(b)["payload"]["n"] for (b,) in rows) == \
        [i for i, k in enumerate(kinds) if k == "emit"]
    (props, body), = broker.get_all(p.queue() + ".dlq")
    assert json.loads(body)["n"] == 5
    assert "fails after its rows were written" in props.headers["x-svccomm-error"]
    assert p.stop() == 0
