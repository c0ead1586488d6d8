"""One fleet with the Python library 2.6 (issue 12): pika plays the Python side with the bytes
it was captured putting on the wire (wire-python-2.6.md), against the real binary."""
import json
import time

import svc
from svc import sql

# What the Python library publishes for a call (through its outbox): routing key = method.
PY_CALL = ('{"id": 1, "data": {"case": "x", "userId": 7}, "meta": {"time": "%s", '
           '"replyTo": "%s", "expiredTime": "%s"}}')
PY_COMMAND = b'{"case": "x", "orderId": 7, "firstName": "Ann", "meta": {}}'

CALL_APP = """
local svccomm = require "svccomm"
local db = svccomm.db
local cjson = require "cjson"

local function record(n, rk, body)
  db.query("INSERT INTO $TABLE (n, rk, body) VALUES ($1, $2, $3)", n, rk, cjson.encode(body))
end

-- the Python side calls us: answer, and call it back
svccomm.call_handler("$EXCHANGE", "get.user", svccomm.call_consumer(function(data, meta)
  -- cjson.encode: "1" whether the id decoded as an integer or a float
  record(1, meta.method_name, { call_id = cjson.encode(meta.call_id), reply_to = meta.reply_to })
  local id = svccomm.send_call("$PYEX", "find.name", { user_id = data.userId },
    { reply_to = "$EXCHANGE", timeout = 60 })
  record(2, "sent", { call_id = id })
  return { name = "Bob", case = data.case }
end))

-- the Python side answers our call
svccomm.message_router.consumer("$EXCHANGE", "call-response.#",
  svccomm.call_response_consumer(function(data, info)
    record(3, info.method_name, { call_id = info.call_id, data = data })
  end))
"""


def iso_ms(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (int(t * 1000) % 1000)


def test_calls_both_ways_with_the_python_library(project, broker):
    p = project
    ex, pyex = p.exchange(), p.exchange("py")
    broker.exchange(pyex)
    pyq = p.queue("pyq")
    broker.queue(pyq, bind_to=[pyex])
    p.setup_consumer(CALL_APP.replace("$PYEX", pyex))
    p.write_settings(p.settings, **dict(svc.RELAY_SETTINGS, APP_ID=p.prefix))
    assert p.run("migrate", timeout=60).returncode == 0
    p.start_consumer()
    p.start_relay()

    # 1. Python send_call -> svccomm call_consumer (routing key = the method, id a number)
    now = time.time()
    body = PY_CALL % (iso_ms(now), pyex, iso_ms(now + 60))
    broker.publish(ex, "get.user", body.encode(), content_type="text/json")
    got = broker.collect(pyq, 2, timeout=20)
    by_rk = {m.routing_key: (props, json.loads(b)) for m, props, b in got}
    # the response, as the Python call_response_consumer reads it: id, data, meta
    props, resp = by_rk["call-response.%s.get.user" % ex]
    assert resp["id"] == 1 and isinstance(resp["id"], int), resp
    assert resp["data"] == {"name": "Bob", "case": "x"}
    assert "time" in resp["meta"]
    # 2. svccomm send_call -> Python call_consumer: routing key = the method, body with id
    props, call = by_rk["find.name"]
    assert call["id"] == call["call_id"] and call["data"] == {"user_id": 7}
    assert call["meta"]["replyTo"] == ex and "expiredTime" in call["meta"]
    # 3. the Python response -> svccomm call_response_consumer: call_id from id
    py_resp = {"id": call["id"], "data": {"name": "Ann"}, "meta": {"time": iso_ms(time.time())}}
    broker.publish(ex, "call-response.%s.find.name" % pyex, py_resp, content_type="text/json")
    svc.wait_until(lambda: p.record_count() == 3, 20, what="the response handled")
    rows = {r[0]: (r[1], json.loads(r[2])) for r in sql("SELECT n, rk, body FROM %s" % p.table())}
    assert rows[1] == ("get.user", {"call_id": "1", "reply_to": pyex})
    # (the service name has a dot here, so the split of the routing key is ambiguous)
    assert rows[3][1] == {"call_id": call["id"], "data": {"name": "Ann"}}
    assert rows[3][0].endswith("find.name")
    assert rows[2][1]["call_id"] == call["id"]
    assert p.stop(p._procs[0]) == 0


def test_inbox_warns_once_about_messages_without_an_id(project, broker):
    """A Python command has no message_id and no eventId: INBOX cannot deduplicate it, which
    is said once at warning (it was at debug only), and each copy is handled."""
    p = project.setup_consumer(svc.RECORDER)
    inbox = p.table("inbox")
    sql("CREATE TABLE %s (queue text NOT NULL, message_id text NOT NULL, "
        "received_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (queue, message_id))"
        % inbox)
    p.write_settings(p.settings, INBOX=True, INBOX_TABLE=inbox)
    p.start_consumer()
    for _ in range(3):
        broker.publish(p.exchange(), "do.it", PY_COMMAND, content_type="text/json")
    svc.wait_until(lambda: p.record_count() == 3, 20, what="3 commands handled")
    assert p.stop() == 0
    log = p.log()
    assert log.count("inbox cannot deduplicate messages without an id") == 1, log
    line = [l for l in log.splitlines() if "inbox cannot deduplicate" in l][0]
    assert "WARN" in line.upper(), line


ANSWER_APP = """
local svccomm = require "svccomm"
svccomm.call_handler("$EXCHANGE", "get.user", svccomm.call_consumer(function(data)
  svccomm.db.query("INSERT INTO $TABLE (n) VALUES (1)")
  return { name = "Bob" }
end))
"""


def start_both(p, app, **settings):
    p.setup_consumer(app)
    p.write_settings(p.settings, **dict(svc.RELAY_SETTINGS, APP_ID=p.prefix, **settings))
    assert p.run("migrate", timeout=60).returncode == 0
    p.start_consumer()
    p.start_relay()


def test_wire_format_django_writes_what_python_writes(project, broker):
    """WIRE_FORMAT = "django": events (here from `svccomm publish`) and call responses have
    the Python library's keys, JSON types and content type."""
    p = project
    ex, pyex = p.exchange(), p.exchange("py")
    broker.exchange(pyex)
    pyq = p.queue("pyq")
    broker.queue(pyq, bind_to=[pyex])
    start_both(p, ANSWER_APP, WIRE_FORMAT="django", KEY_STYLE="snake")
    now = time.time()
    broker.publish(ex, "get.user", (PY_CALL % (iso_ms(now), pyex, iso_ms(now + 60))).encode(),
                   content_type="text/json")
    r = p.run("publish", pyex, "plain.evt", '{"case": "x", "user_id": 7, "first_name": "Ann"}')
    assert r.returncode == 0, r.stderr
    got = {m.routing_key: (props, json.loads(b)) for m, props, b in broker.collect(pyq, 2)}
    props, ev = got["plain.evt"]
    assert props.content_type == "text/json"
    assert sorted(ev) == ["aggregate", "eventId", "event_time", "event_type", "payload"]
    assert isinstance(ev["eventId"], int) and ev["event_type"] == "plain.evt"
    assert ev["payload"] == {"case": "x", "userId": 7, "firstName": "Ann"}
    assert len(ev["event_time"]) == len("2026-12-01T01:51:19.138Z")
    props, resp = got["call-response.%s.get.user" % ex]
    assert props.content_type == "text/json"
    assert sorted(resp) == ["data", "id", "meta"] and sorted(resp["meta"]) == ["time"]
    assert resp["id"] == 1 and resp["data"] == {"name": "Bob"}


def test_call_whose_reply_to_exchange_does_not_exist(project, broker):
    """The call is handled once and acked; the response is published to the exchange the
    relay declares, no queue takes it, and under the default PUBLISHER_UNROUTABLE = "keep" it
    stays in the outbox with a warning, retried with a growing delay: the call is not handled
    again, no dead letter, no loop."""
    p = project
    start_both(p, ANSWER_APP)
    nowhere = p.exchange("nowhere")
    now = time.time()
    broker.publish(p.exchange(), "get.user",
                   (PY_CALL % (iso_ms(now), nowhere, iso_ms(now + 60))).encode(),
                   content_type="text/json")
    svc.wait_until(lambda: "unroutable message(s) kept for a retry" in p.log(), 20,
                   what="the response kept as unroutable")
    assert p.record_count() == 1
    assert broker.count(p.queue() + ".dlq") == 0
    assert p.outbox_count() == 1  # the response, kept until a queue is bound
