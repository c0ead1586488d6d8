"""The harness itself: the local servers answer, and the project fixture writes what it says."""

import json
import os
import signal
import subprocess

import pika
import pytest

import svc


def test_rabbitmq_accepts_the_test_user_and_round_trips_a_message(project):
    ch = project.amqp()
    assert ch.connection._impl.params.virtual_host == "svccomm"
    queue = project.queue("roundtrip")
    ch.queue_declare(queue, durable=True)

    svc.publish_json(ch, "", queue, {"n": 1, "name": "ünï"}, message_id="m-1", headers={"traceparent": "00-x"},
                     correlation_id="c-1")
    [msg] = svc.get_messages(ch, queue, count=1, timeout=5)

    assert msg.json() == {"n": 1, "name": "ünï"}
    assert msg.routing_key == queue
    assert msg.properties.message_id == "m-1"
    assert msg.properties.correlation_id == "c-1"
    assert msg.properties.delivery_mode == 2
    assert msg.properties.content_type == "application/json"
    assert msg.headers == {"traceparent": "00-x"}
    assert svc.get_messages(ch, queue, count=1, timeout=0.2) == []


def test_project_cleanup_deletes_its_queues_and_exchanges(servers, tmp_path):
    proj = svc.Project(tmp_path, "tcleanup_" + os.urandom(3).hex())
    ch = proj.amqp()
    queue, exchange = proj.queue("q"), proj.exchange("ex")
    ch.exchange_declare(exchange, "topic")
    ch.queue_declare(queue)
    ch.queue_bind(queue, exchange, "#")
    proj.cleanup()

    ch = svc.amqp_connect().channel()
    try:
        for declare in (lambda c: c.queue_declare(queue, passive=True),
                        lambda c: c.exchange_declare(exchange, passive=True)):
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
                declare(ch)
            assert err.value.reply_code == 404
            ch = ch.connection.channel()
    finally:
        ch.connection.close()


def test_postgresql_accepts_queries_and_cleanup_drops_prefixed_tables(servers, tmp_path):
    proj = svc.Project(tmp_path, "tcleanup_" + os.urandom(3).hex())
    conn = proj.pg()
    assert svc.pg_query(conn, "SELECT current_database(), current_user, %s::int + 1", (41,)) == [
        ("svccomm", "svccomm", 42)
    ]
    table = proj.table("items")
    svc.pg_query(conn, f'CREATE TABLE "{table}" (id serial PRIMARY KEY, v text)')
    svc.pg_query(conn, f'INSERT INTO "{table}" (v) VALUES (%s), (%s)', ("a", "b"))
    assert svc.pg_query(conn, f'SELECT v FROM "{table}" ORDER BY id') == [("a",), ("b",)]
    proj.cleanup()

    conn = svc.pg_connect()
    try:
        assert svc.pg_query(conn, "SELECT to_regclass(%s)", (table,)) == [(None,)]
    finally:
        conn.close()


SETTINGS = {
    "APP_ID": 'quote " backslash \\ newline \n tab \t ünïcode',
    "QUEUE_ARGUMENTS": {"x-queue-type": "quorum", "x-max-length": 10, "x-flag": True},
    "EXCHANGES": ["plain", ["typed", "fanout"]],
    "BINDS": [["plain", "event.*"], "typed"],
    "PREFETCH_COUNT": 7,
    "HANDLER_TIMEOUT": 2.5,
    "DO_NOT_DECLARE": False,
    "RETRY_DELAYS": [1, 10, 60],
    "end": "a Lua keyword as a key",
}

DUMP_SETTINGS = r"""
local cjson = require("cjson")
local t = dofile(arg[1])
local function sorted(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = sorted(x) end
  return out
end
io.write(cjson.encode(sorted(t)))
"""


def test_project_writes_a_settings_lua_that_lua_loads(project):
    written = project.write_settings(SETTINGS, defaults=True, DATABASE_URL=None)
    assert "DATABASE_URL" not in written and written["QUEUE"].startswith(project.prefix)

    script = project.dir / "dump.lua"
    script.write_text(DUMP_SETTINGS)
    res = svc.run(["lua5.4", script, project.settings_path], timeout=10)
    assert res.returncode == 0, res.stderr

    assert json.loads(res.stdout) == written


def test_project_writes_apps_that_lua_loads(project):
    path = project.write_app("billing", 'return { answer = 6 * 7, name = "billing" }\n')
    assert path == project.dir / "apps" / "billing" / "consumers.lua"
    res = svc.run(["lua5.4", "-e", f"local t = dofile({svc.lua_string(str(path))}); print(t.answer, t.name)"])
    assert (res.returncode, res.stdout) == (0, "42\tbilling\n"), res.stderr


def test_run_captures_exit_code_and_output_and_enforces_the_timeout(tmp_path):
    res = svc.run(["lua5.4", "-e", "io.write('out') io.stderr:write('err') os.exit(3)"], cwd=tmp_path)
    assert (res.returncode, res.stdout, res.stderr) == (3, "out", "err")
    with pytest.raises(subprocess.TimeoutExpired):
        svc.run(["sleep", "10"], timeout=0.3)


def test_background_process_logs_and_stops_on_sigterm(tmp_path):
    proc = svc.Background(["sh", "-c", "echo started; exec sleep 30"], cwd=tmp_path, log_path=tmp_path / "bg.log")
    proc.wait_for_log(r"started", timeout=5)
    assert proc.running()
    assert proc.stop(timeout=5) == -signal.SIGTERM
    assert "started" in proc.log()


def test_wait_until_returns_the_value_or_fails_naming_what(tmp_path):
    calls = []
    assert svc.wait_until(lambda: calls.append(1) or len(calls) >= 3 and "done", timeout=2) == "done"
    with pytest.raises(AssertionError, match="waiting for the impossible"):
        svc.wait_until(lambda: False, timeout=0.2, what="the impossible")


def test_postgresql_restart_drops_sessions_and_comes_back(servers):
    conn = svc.pg_connect()
    try:
        pid = svc.pg_query(conn, "SELECT pg_backend_pid()")[0][0]
        svc.restart_postgresql()
        with pytest.raises(Exception):
            svc.pg_query(conn, "SELECT 1")
    finally:
        conn.close()
    conn = svc.pg_connect()
    try:
        assert svc.pg_query(conn, "SELECT pg_backend_pid() <> %s", (pid,)) == [(True,)]
    finally:
        conn.close()


def test_rabbitmq_restart_closes_connections_and_comes_back(project):
    ch = project.amqp()
    queue = project.queue("durable")
    ch.queue_declare(queue, durable=True)
    svc.publish_json(ch, "", queue, {"kept": True})
    svc.wait_until(lambda: svc.queue_depth(ch, queue) == 1, 5, what="message in queue")

    svc.restart_rabbitmq()
    svc.wait_until(lambda: not ch.connection.is_open or _broken(ch), 10, what="old connection closed")

    ch2 = project.amqp()
    [msg] = svc.get_messages(ch2, queue, count=1, timeout=5)
    assert msg.json() == {"kept": True}


def _broken(ch):
    try:
        ch.connection.process_data_events(0)
        return False
    except pika.exceptions.AMQPError:
        return True
