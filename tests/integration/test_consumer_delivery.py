"""runconsumer: delivery to handlers (issue 3, scenarios 1, 5, 12, 14)."""
import json
import time

import svc
from svc import RECORDER


def test_100_messages_with_headers_and_unicode_each_handled_once(project, broker):
    p = project.setup_consumer(RECORDER)
    p.start_consumer()
    text = "Grüße, 世界 🌍 — \"quoted\" \\ back"
    for i in range(100):
        broker.publish(p.exchange(), "order.created", {"n": i, "text": text},
                       headers={"h": "héader %d" % i}, message_id="m-%d" % i,
                       correlation_id="corr-%d" % i)
    svc.wait_until(lambda: p.record_count() >= 100, 30, what="100 handled")
    time.sleep(0.5)
    rows = p.records()
    assert sorted(r[0] for r in rows) == list(range(100))  # each exactly once
    for n, attempt, rk, body, info in rows:
        info = json.loads(info)
        assert attempt == 1 and rk == "order.created"
        assert info["text"] == text
        assert info["h"] == "héader %d" % n
        assert info["corr"] == "corr-%d" % n and info["mid"] == "m-%d" % n
        assert json.loads(body)["text"] == text
    assert p.stop() == 0
    assert broker.count(p.queue()) == 0  # all acked: nothing came back on close
    assert broker.count(p.queue() + ".dlq") == 0
    assert "stats received=100 ok=100" in p.log()


def test_prefetch_1_holds_back_the_second_message(project, broker):
    p = project.setup_consumer(RECORDER, {"PREFETCH_COUNT": 1})
    p.start_consumer()
    broker.publish(p.exchange(), "slow", {"n": 1, "sleep": 2})
    broker.publish(p.exchange(), "slow", {"n": 2})
    time.sleep(1.0)
    # the first is in its handler (unacked); the second still waits in the queue
    assert broker.count(p.queue()) == 1
    assert p.record_count() == 0
    svc.wait_until(lambda: p.record_count() == 2, 20, what="both handled")
    assert [r[0] for r in p.records()] == [1, 2]
    assert p.stop() == 0


ROUTES = """
local svccomm = require "svccomm"
local router = svccomm.message_router
local db = svccomm.db
local function rec(tag)
  return function(rk, body)
    db.query("INSERT INTO $TABLE (n, rk, info) VALUES ($1, $2, $3)", body.n, rk, tag)
  end
end
router.consumer("$EXCHANGE", "event.*", rec("wildcard"))
router.consumer("$EXCHANGE", "event.special", rec("exact"))
router.consumer("$EXCHANGE_wide")(rec("exchange-wide"))
router.default_consumer(rec("default"))
"""


def test_wildcard_exchange_wide_and_default_routing(project, broker):
    wide = project.exchange("wide")
    other = project.exchange("other")
    p = project.setup_consumer(ROUTES.replace("$EXCHANGE_wide", wide))
    p.write_settings(p.settings, EXCHANGES=[p.exchange(), wide, [other, "fanout"]],
                     BINDS=[[p.exchange(), "event.*"], wide, other])
    p.start_consumer()
    broker.publish(p.exchange(), "event.created", {"n": 1})
    broker.publish(p.exchange(), "event.special", {"n": 2})
    broker.publish(p.exchange(), "other.thing", {"n": 3})  # not bound: never arrives
    broker.publish(wide, "anything.at.all", {"n": 4})
    broker.publish(other, "whatever", {"n": 5})
    svc.wait_until(lambda: p.record_count() >= 4, 20, what="4 handled")
    time.sleep(0.5)
    got = {r[0]: (r[2], r[4]) for r in p.records()}
    assert got == {
        1: ("event.created", "wildcard"),
        2: ("event.special", "exact"),
        4: ("anything.at.all", "exchange-wide"),
        5: ("whatever", "default"),
    }
    assert p.stop() == 0


EVENTS = """
local svccomm = require "svccomm"
local db = svccomm.db
svccomm.message_router.consumer("$EXCHANGE", "update.base", svccomm.event_consumer(
  function(payload, meta)
    db.query("INSERT INTO $TABLE (n, rk, body, info) VALUES ($1, $2, $3, $4)",
      payload.userId, meta.event_type, require("cjson").encode(payload),
      require("cjson").encode({event_id = meta.event_id, aggregate = meta.aggregate,
                               event_time = meta.event_time}))
  end))
"""


def test_python_library_envelope_reaches_event_consumer(project, broker):
    p = project.setup_consumer(EVENTS)
    p.start_consumer()
    envelope = {"eventId": 9103, "event_time": "2026-11-27T17:50:26.588Z",
                "event_type": "update.base", "aggregate": "user",
                "payload": {"userId": 42, "firstName": "Zoë"}}
    broker.publish(p.exchange(), "update.base", json.dumps(envelope).encode(),
                   content_type="text/json", message_id="9103")
    svc.wait_until(lambda: p.record_count() == 1, 20, what="the event handled")
    n, _, rk, body, info = p.records()[0]
    assert n == 42 and rk == "update.base"
    assert json.loads(body) == {"userId": 42, "firstName": "Zoë"}
    info = json.loads(info)
    assert info["event_id"] == "9103"
    assert info["aggregate"] == "user"
    assert info["event_time"] == "2026-11-27T17:50:26.588Z"
    assert p.stop() == 0


def test_do_not_declare_reports_what_is_missing_and_exits_2(project, broker):
    p = project.setup_consumer(RECORDER, {"DO_NOT_DECLARE": True})
    p.start_consumer(wait_consuming=False)
    rc = p.proc.wait(30)
    assert rc == 2, p.log()
    assert "exchange '%s'" % p.exchange() in p.log()
    assert "queue '%s'" % p.queue() in p.log()


def test_missing_queue_setting_is_a_usage_error(project):
    p = project.setup_consumer(RECORDER, {"QUEUE": None}, use_db=False)
    p.start_consumer(wait_consuming=False)
    assert p.proc.wait(30) == 2
    assert "QUEUE: required by runconsumer, not set" in p.log()


FORGED = "2026-01-01T00:00:00.000Z ERROR [consumer] forged"


def test_a_newline_in_a_message_id_cannot_forge_a_log_line(project, broker):
    p = project.setup_consumer(RECORDER.replace('"#"', '"known.only"'))
    proc = p.start_consumer()
    broker.publish(p.exchange(), "nobody.takes.this", {"n": 1}, message_id="a\n" + FORGED + "\x1b[2J")
    proc.wait_for_log(r": acked", timeout=20)
    assert p.stop() == 0
    lines = p.log().splitlines()
    assert not [x for x in lines if x.startswith(FORGED)], p.log()
    assert not [x for x in lines if "\x1b" in x], p.log()
    assert [x for x in lines if "message a\\n" + FORGED + "\\x1b[2J: " in x and x.endswith(": acked")], p.log()


PROPERTIES = """
local svccomm = require "svccomm"
local db = svccomm.db
local kept
svccomm.message_router.consumer("$EXCHANGE", "props")(function(rk, body, msg)
  if body.n == 2 then
    -- a message table kept from an earlier handler: its delivery is gone
    local ok, err = pcall(function() return kept.properties end)
    db.query("INSERT INTO $TABLE (n, rk, info) VALUES ($1, $2, $3)", body.n, rk,
      require("cjson").encode({ ok = ok, err = tostring(err) }))
    return
  end
  if body.n == 3 then
    kept = msg -- kept without reading its properties
    db.query("INSERT INTO $TABLE (n, rk, info) VALUES ($1, $2, '{}')", body.n, rk)
    return
  end
  local p = msg.properties
  assert(rawequal(p, msg.properties), "built once")
  db.query("INSERT INTO $TABLE (n, rk, info) VALUES ($1, $2, $3)", body.n, rk,
    require("cjson").encode({ ct = p.content_type, app = p.app_id, mid = p.message_id,
      corr = p.correlation_id, h = p.headers.h, ts = p.timestamp }))
end)
"""


def test_message_properties_in_the_handler_and_not_after(project, broker):
    """message.properties carries the AMQP properties and headers while the handler runs; a
    message table kept for later cannot build them any more and says so."""
    p = project.setup_consumer(PROPERTIES)
    p.start_consumer()
    broker.publish(p.exchange(), "props", {"n": 1}, headers={"h": "x"}, message_id="m-1",
                   correlation_id="c-1")
    broker.publish(p.exchange(), "props", {"n": 3})
    svc.wait_until(lambda: p.record_count() >= 2, 20, what="two handled")
    broker.publish(p.exchange(), "props", {"n": 2})
    svc.wait_until(lambda: p.record_count() >= 3, 20, what="third handled")
    got = {r[0]: json.loads(r[4]) for r in p.records()}
    assert got[1]["ct"] == "application/json" and got[1]["h"] == "x"
    assert got[1]["mid"] == "m-1" and got[1]["corr"] == "c-1"
    assert got[2]["ok"] is False and "after its handler returned" in got[2]["err"]
    assert p.stop() == 0
