"""The harness itself: the local servers answer, and the project fixture writes what it says."""

import json
import os
import re
import signal
import socket
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pika
import psycopg2
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


# --- the local servers admit only the project (issue 11, finding 9) ----------------------------
# These read the running servers' state; they never restart them.


def _state_dirs():
    pgdir = Path(os.environ["SVCCOMM_TEST_PGHOST"])
    return pgdir, pgdir.parent / "rabbitmq"


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _listening(port):
    """The local addresses of the TCP sockets listening on `port` (from /proc/net/tcp{,6})."""
    found = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        with open(f"/proc/net/{name}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                addr, hexport = fields[1].split(":")
                if fields[3] != "0A" or int(hexport, 16) != port:
                    continue
                raw = bytes.fromhex(addr)
                # The kernel prints each 32-bit word in host (little-endian) order.
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(family, raw))
    return found


LOOPBACK = {"127.0.0.1", "::1"}


def test_passwords_cookie_and_socket_directory_are_private(servers):
    pgdir, rdir = _state_dirs()
    assert oct(_mode(pgdir)) == oct(0o700), "the PostgreSQL socket directory"
    assert oct(_mode(rdir)) == oct(0o700), "the RabbitMQ state directory"
    assert _mode(rdir / ".erlang.cookie") & 0o077 == 0
    urls = {pgdir / "password": os.environ["SVCCOMM_DATABASE_URL"],
            rdir / "password": os.environ["SVCCOMM_BROKER_URL"]}
    for path, url in urls.items():
        assert oct(_mode(path)) == oct(0o600), path
        password = path.read_text().strip()
        assert len(password) >= 32 and urlparse(url).password == password, path


def test_postgresql_refuses_a_connection_without_the_password(servers):
    u = urlparse(os.environ["SVCCOMM_DATABASE_URL"])
    for host in ("127.0.0.1", os.environ["SVCCOMM_TEST_PGHOST"]):
        for password in ("", "svccomm", (u.password or "") + "x"):
            with pytest.raises(psycopg2.OperationalError, match="password"):
                psycopg2.connect(host=host, port=u.port, user=u.username, dbname=u.path.lstrip("/"),
                                 password=password, passfile="/dev/null", connect_timeout=5).close()
    assert u.password and u.password != "svccomm"
    conn = svc.pg_connect()
    try:
        assert svc.pg_query(conn, "SELECT current_user") == [("svccomm",)]
    finally:
        conn.close()
    assert _listening(u.port) == {"127.0.0.1"}


def test_rabbitmq_has_only_svccomm_without_administrator_tag(servers):
    users = dict(line.split("\t") for line in
                 svc.rabbitmqctl("-q", "list_users", "--no-table-headers").splitlines() if line)
    assert users == {"svccomm": "[]"}
    u = urlparse(os.environ["SVCCOMM_BROKER_URL"])
    assert u.password and u.password != "svccomm"
    for creds in ("guest:guest", "svccomm:svccomm", "svccomm:" + u.password + "x"):
        with pytest.raises((pika.exceptions.ProbableAuthenticationError,
                            pika.exceptions.ProbableAccessDeniedError)):
            svc.amqp_connect(f"amqp://{creds}@127.0.0.1:{u.port}/svccomm", attempts=1).close()


def test_epmd_amqp_and_distribution_listen_on_loopback_only(servers):
    epmd = int(os.environ.get("SVCCOMM_TEST_EPMD_PORT", "4369"))
    assert _listening(epmd) and _listening(epmd) <= LOOPBACK
    assert _listening(urlparse(os.environ["SVCCOMM_BROKER_URL"]).port) == {"127.0.0.1"}
    names = subprocess.run(["epmd", "-names"], env=dict(os.environ, ERL_EPMD_PORT=str(epmd)),
                           capture_output=True, text=True, timeout=10).stdout
    ports = [int(p) for p in re.findall(r"^name \S+ at port (\d+)$", names, re.M)]
    assert ports, names
    for port in ports:
        assert _listening(port) == {"127.0.0.1"}, port
