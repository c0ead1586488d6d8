"""The outbox write side (issue 4, "Done means" 1-8 and 10; 9 with the module from the build
tree): plain lua5.4 scripts and the real binary against the real PostgreSQL."""
import json
import os
import re
import subprocess
import time


import svc

ROOT = svc.ROOT
LUA_CPATH = os.environ.get("SVCCOMM_LUA_CPATH", str(ROOT / "build" / "lua" / "?.so"))
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def lua(project, source, *args, timeout=60, outbox=None):
    """Run a plain lua5.4 script (svccomm from the source tree + build/lua/svccomm/core.so)."""
    path = project.dir / "script.lua"
    path.write_text(source)
    env = dict(os.environ)
    env["LUA_PATH"] = f"{ROOT}/lua/?.lua;{ROOT}/lua/?/init.lua;;"
    env["LUA_CPATH"] = f"{LUA_CPATH};;"
    env["OUTBOX"] = outbox or project.table("outbox")
    return subprocess.run(["lua5.4", str(path), *args], cwd=project.dir, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


PRELUDE = """
local svccomm = require "svccomm"
local cjson = require "cjson"
svccomm.configure { OUTBOX_TABLE = os.getenv("OUTBOX") }
local db = assert(svccomm.db.connect(os.getenv("SVCCOMM_DATABASE_URL")))
"""


def rows(project, table, where="true"):
    conn = project.pg()
    return svc.pg_query(conn, f'SELECT id, exchange, routing_key, body, send_after, tags, correlation_id, '
                              f'message_id, headers FROM "{table}" WHERE {where} ORDER BY id')


def test_rollback_writes_nothing_commit_writes_the_exact_envelope(project, outbox):
    res = lua(project, PRELUDE + """
pcall(db.transaction, db, function()
  svccomm.publish_aggregate_event("user", "update.base", { id = 1 })
  error("roll back")
end)
local id = db:transaction(function()
  return svccomm.publish_aggregate_event { aggregate = "user", event_type = "update.base",
                                           payload = { id = 7, name = "Ann", tags = { "a", "b" } } }
end)
print(id)
""")
    assert res.returncode == 0, res.stderr
    event_id = res.stdout.strip()
    got = rows(project, outbox)
    assert len(got) == 1
    row_id, exchange, rk, body, *_ = got[0]
    assert (str(row_id), exchange, rk) == (event_id, "user", "update.base")
    env = json.loads(body)
    assert list(env) == ["eventId", "eventTime", "eventType", "aggregate", "payload"]
    assert env["eventId"] == event_id and isinstance(env["eventId"], str)
    assert ISO.match(env["eventTime"]), env["eventTime"]
    assert env["eventType"] == "update.base" and env["aggregate"] == "user"
    assert env["payload"] == {"id": 7, "name": "Ann", "tags": ["a", "b"]}


def test_unicode_nested_arrays_empty_tables_and_1mb_round_trip(project, outbox):
    res = lua(project, PRELUDE + """
local big = string.rep("Grüße 世界 🌍 ", 1024 * 1024 // 20 + 1)
db:transaction(function()
  svccomm.publish_aggregate_event("doc", "saved", {
    text = "Grüße, 世界 🌍 \\"q\\" \\\\ /", nested = { a = { b = { c = { 1, 2.5, true, svccomm.null } } } },
    list = { 1, "two", { three = 3 } }, empty_object = {}, empty_array = svccomm.array(), big = big,
    int = 9007199254740993,
  })
end)
io.write(#big)
""")
    assert res.returncode == 0, res.stderr
    (_, _, _, body, *_), = rows(project, outbox)
    payload = json.loads(body)["payload"]
    big = "Grüße 世界 🌍 " * (1024 * 1024 // 20 + 1)
    assert len(body.encode()) > 1024 * 1024
    assert payload == {
        "text": "Grüße, 世界 🌍 \"q\" \\ /",
        "nested": {"a": {"b": {"c": [1, 2.5, True, None]}}},
        "list": [1, "two", {"three": 3}],
        "empty_object": {},
        "empty_array": [],
        "big": big,
        "int": 9007199254740993,
    }


def test_publishing_outside_a_transaction_fails_and_writes_nothing(project, outbox):
    res = lua(project, PRELUDE + """
svccomm.publish_aggregate_event("user", "update.base", { id = 1 })
""")
    assert res.returncode != 0
    assert "publish_aggregate_event: no transaction" in res.stderr
    assert rows(project, outbox) == []


def test_bad_payload_raises_before_anything_is_written(project, outbox):
    res = lua(project, PRELUDE + """
local cyc = {} cyc.self = cyc
for _, p in ipairs({ { x = 0/0 }, { f = print }, cyc }) do
  local ok, err = pcall(db.transaction, db, function()
    svccomm.publish_aggregate_event("user", "x", { ok = 1 })
    svccomm.publish_aggregate_event("user", "x", p)
  end)
  assert(not ok) print(err)
end
""")
    assert res.returncode == 0, res.stderr
    assert "NaN or infinity" in res.stdout and "function cannot be encoded" in res.stdout
    assert "cycle" in res.stdout
    assert rows(project, outbox) == []


def test_scheduled_event_carries_due_time_and_cancel_by_tag_subset(project, outbox):
    res = lua(project, PRELUDE + """
db:transaction(function()
  svccomm.publish_future_aggregate_event { aggregate = "order", event_type = "remind",
    event_time = "2031-05-06T07:08:09.123456Z", payload = { n = 1 }, tags = { order = 1, kind = "mail" } }
  svccomm.publish_future_aggregate_event("order", "remind", "2031-05-06T07:08:09Z", { n = 2 }, { order = "2", kind = "mail" })
  svccomm.publish_future_aggregate_event("order", "remind", "2031-05-06T07:08:09Z", { n = 3 }, { order = "1", kind = "sms" })
end)
print(db:transaction(function()
  return svccomm.cancel_future_aggregate_event { aggregate = "order", event_type = "remind", tags = { kind = "mail", order = 1 } }
end))
""")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "1"
    left = rows(project, outbox)
    assert [json.loads(r[3])["payload"]["n"] for r in left] == [2, 3]
    assert left[0][5] == {"order": "2", "kind": "mail"}
    assert left[0][4].isoformat() == "2031-05-06T07:08:09+00:00"
    conn = project.pg()
    (due,), = svc.pg_query(conn, f'SELECT count(*) FROM "{outbox}" WHERE send_after > now()')
    assert due == 2


def test_send_command_checks_expiry_and_writes_the_documented_body(project, outbox):
    res = lua(project, PRELUDE + """
db:transaction(function()
  local ok, err = pcall(svccomm.send_command, "billing", { a = 1 }, { command_name = "charge", timeout = 5, expired_time = os.time() + 60 })
  assert(not ok and err:find("not both"), err)
  ok, err = pcall(svccomm.send_command, "billing", { a = 1 }, { command_name = "charge", expired_time = os.time() - 60 })
  assert(not ok and err:find("in the past"), err)
  print(svccomm.send_command("billing", { amount = 10 }, { command_name = "charge", timeout = 60 }))
end)
""")
    assert res.returncode == 0, res.stderr
    (row_id, exchange, rk, body, *_), = rows(project, outbox)
    assert str(row_id) == res.stdout.strip()
    assert (exchange, rk) == ("billing", "charge")
    b = json.loads(body)
    assert b["amount"] == 10 and ISO.match(b["meta"]["expired_time"])


def test_bad_outbox_table_is_refused_before_any_sql(project):
    conn = project.pg()
    canary = project.table("x")
    svc.pg_query(conn, f'CREATE TABLE "{canary}" (a int)')
    bad = f'outbox"; DROP TABLE "{canary}"; --'
    project.write_settings(OUTBOX_TABLE=bad)
    for args in (["migrate"], ["publish", "user", "x", "{}"]):
        res = project.run(*args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert "OUTBOX_TABLE" in res.stderr
    res = lua(project, PRELUDE, outbox=bad)
    assert res.returncode != 0 and "OUTBOX_TABLE" in res.stderr
    assert svc.pg_query(conn, "SELECT to_regclass(%s) IS NOT NULL", (f'"{canary}"',)) == [(True,)]


def test_svccomm_publish_prints_the_event_id_and_refuses_bad_json(project, outbox):
    res = project.run("publish", "user", "created", '{"id": 5, "name": "Zoë"}')
    assert res.returncode == 0, res.stderr
    event_id = res.stdout.strip()
    (row_id, exchange, rk, body, *_), = rows(project, outbox)
    assert str(row_id) == event_id
    assert (exchange, rk) == ("user", "created")
    assert json.loads(body)["payload"] == {"id": 5, "name": "Zoë"}
    res = project.run("publish", "user", "created", "{not json")
    assert res.returncode == 2
    assert "JSON" in res.stderr
    assert len(rows(project, outbox)) == 1


HANDLER = """
local svccomm = require "svccomm"
local db = svccomm.db
svccomm.message_router.consumer("$EX", "nested")(function(rk, body)
  svccomm.publish_aggregate_event("agg", "outer", { n = body.n })
  pcall(db.transaction, function()
    svccomm.publish_aggregate_event("agg", "inner_failed", { n = body.n })
    error("inner part fails")
  end)
  db.transaction(function()
    svccomm.publish_aggregate_event("agg", "inner_ok", { n = body.n })
  end)
end)
svccomm.message_router.consumer("$EX", "call.#")(svccomm.call_consumer(function(data)
  if data.fail then error("call handler fails") end
  return { sum = data.a + data.b }
end))
"""


def test_handler_transaction_nested_savepoint_and_call_response(project, outbox):
    ex = project.exchange("svc")
    project.write_settings(EXCHANGES=[ex], BINDS=[ex], MAX_ATTEMPTS=1, RETRY_DELAYS=[1],
                           INBOX_TABLE=project.table("inbox"))
    project.write_app("w4", HANDLER.replace("$EX", ex))
    proc = project.start("runconsumer")
    ch = project.amqp()
    svc.wait_until(lambda: "consuming '" in proc.log(), 20, what="consumer ready")
    svc.publish_json(ch, ex, "nested", {"n": 1}, correlation_id="corr-77")
    svc.wait_until(lambda: len(rows(project, outbox)) >= 2, 20, what="handler rows")
    got = rows(project, outbox)
    assert [r[2] for r in got] == ["outer", "inner_ok"]
    assert all(r[6] == "corr-77" for r in got)  # the incoming correlation id travels on
    svc.pg_query(project.pg(), f'DELETE FROM "{outbox}"')

    call = {"call_id": "c-1", "method_name": "add", "service_name": ex, "reply_to": "caller",
            "data": {"a": 2, "b": 3}, "meta": {"expired_time": None}}
    svc.publish_json(ch, ex, "call.add", call)
    svc.wait_until(lambda: len(rows(project, outbox)) >= 1, 20, what="call response")
    (_, exchange, rk, body, _, _, corr, *_), = rows(project, outbox)
    assert (exchange, rk, corr) == ("caller", f"call-response.{ex}.add", "c-1")
    assert json.loads(body)["data"] == {"sum": 5}
    svc.pg_query(project.pg(), f'DELETE FROM "{outbox}"')

    call["call_id"], call["data"] = "c-2", {"fail": True}
    svc.publish_json(ch, ex, "call.add", call)
    svc.wait_until(lambda: "call handler fails" in proc.log(), 20, what="failing call handled")
    time.sleep(0.5)
    assert rows(project, outbox) == []  # no response: the handler's transaction rolled back
