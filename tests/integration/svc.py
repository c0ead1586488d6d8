"""The one support module of the svccomm integration tests (fixtures are in conftest.py).

The tests drive the real `svccomm` binary against the real local servers (scripts/servers.sh)
and inspect the results with independent clients: pika (1.2) and psycopg2.

    waiting      wait_until
    settings     lua_literal, write_settings (settings.lua from a dict)
    processes    run (to completion), Background (started, logged, stopped)
    RabbitMQ     amqp_connect, publish_json, get_messages, queue_depth, Broker (a client of
                 the test's own), broker_up
    PostgreSQL   pg_connect (the one way to connect), pg_query, sql (one statement, own session)
    servers      servers_env, ensure_servers, rabbitmqctl, pg_ctl, restart_rabbitmq,
                 restart_postgresql (they always leave the server running)
    Project      a temporary project with unique names: settings, apps, the binary, clients,
                 the runconsumer and runpublisher scenarios, cleanup
"""

import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import textwrap
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pika
import pika.exceptions
import psycopg2

ROOT = Path(__file__).resolve().parents[2]
SERVERS_SH = ROOT / "scripts" / "servers.sh"

# A per-session root makes every name unique across sessions too (several developers or CI
# jobs can share the servers) and lets the session sweep find this session's leftovers.
SESSION_TAG = "t" + uuid.uuid4().hex[:6]


def svccomm_bin():
    """Path of the binary under test: env SVCCOMM_BIN, default build/svccomm."""
    return os.environ.get("SVCCOMM_BIN") or str(ROOT / "build" / "svccomm")


def suffix():
    """A random suffix for names a test makes up itself."""
    return uuid.uuid4().hex[:10]


# --- waiting ------------------------------------------------------------------------------------


def wait_until(predicate, timeout=10.0, interval=0.05, what=None):
    """Poll predicate() until it returns a truthy value, and return that value.

    Raises AssertionError naming `what` (or the predicate) after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            name = what or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(f"timed out after {timeout}s waiting for {name}")
        time.sleep(interval)


# --- settings.lua -------------------------------------------------------------------------------


class LuaExpr(str):
    """A raw Lua expression written as is, e.g. LuaExpr('os.getenv("HOME")')."""


_LUA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LUA_KEYWORDS = set(
    "and break do else elseif end false for function goto if in local nil not or repeat "
    "return then true until while".split()
)


def lua_string(s):
    """A Lua string literal for s (UTF-8 kept as is; quotes, backslash, control bytes escaped)."""
    out = ['"']
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 32 or ord(c) == 127:
            out.append("\\%03d" % ord(c))
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def lua_literal(value, indent=0):
    """Lua source for a Python value: dict -> table, list/tuple -> sequence, None -> nil."""
    pad = "  " * (indent + 1)
    if isinstance(value, LuaExpr):
        return str(value)
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "(0/0)"
        if math.isinf(value):
            return "math.huge" if value > 0 else "-math.huge"
        return repr(value)
    if isinstance(value, str):
        return lua_string(value)
    if isinstance(value, (list, tuple)):
        if not value:
            return "{}"
        if not any(isinstance(v, (list, tuple, dict)) for v in value):
            return "{ " + ", ".join(lua_literal(v) for v in value) + " }"
        items = [pad + lua_literal(v, indent + 1) + "," for v in value]
        return "{\n" + "\n".join(items) + "\n" + "  " * indent + "}"
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = []
        for k, v in value.items():
            if v is None:
                continue  # nil fields do not exist in a Lua table
            if isinstance(k, str) and _LUA_NAME.match(k) and k not in _LUA_KEYWORDS:
                key = k
            else:
                key = "[" + lua_literal(k) + "]"
            items.append(f"{pad}{key} = {lua_literal(v, indent + 1)},")
        return "{\n" + "\n".join(items) + "\n" + "  " * indent + "}"
    raise TypeError(f"no Lua literal for {type(value).__name__}: {value!r}")


def write_settings(path, settings):
    """Write settings.lua at path: a file that returns the dict as a Lua table."""
    Path(path).write_text("-- written by tests/integration/svc.py\nreturn " + lua_literal(settings) + "\n")


# --- running the binary -------------------------------------------------------------------------


def run_svccomm_alone(args, cwd, env=None, timeout=30):
    """Runs svccomm in cwd without the SVCCOMM_* variables of the test environment (they would
    override the settings under test), plus `env`."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("SVCCOMM_")}
    full.update(env or {})
    return run([svccomm_bin()] + list(args), cwd=cwd, env=full, timeout=timeout)


def run(args, cwd=None, env=None, timeout=30, input=None):
    """Run a command to completion; returns subprocess.CompletedProcess with text stdout/stderr.

    A command still running after `timeout` seconds is killed and raises TimeoutExpired.
    """
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Background:
    """A process started in the background, its stdout+stderr captured in a log file.

    Besides its own helpers it answers like subprocess.Popen (pid, poll, wait, send_signal,
    kill), so tests can treat it as one.
    """

    def __init__(self, args, cwd=None, env=None, log_path=None):
        self.args = [str(a) for a in args]
        self.log_path = Path(log_path or Path(cwd or ".") / "process.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self):
        return self.proc.pid

    def poll(self):
        """The exit code, or None while it runs."""
        return self.proc.poll()

    def running(self):
        return self.proc.poll() is None

    def log(self):
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern, timeout=10.0):
        """Wait until the log matches the regex `pattern`; returns the match.

        Fails early, with the log, when the process exits first.
        """

        def found():
            m = re.search(pattern, self.log())
            if not m and not self.running():
                raise AssertionError(
                    f"process exited ({self.proc.returncode}) before logging {pattern!r}:\n{self.log()}"
                )
            return m

        return wait_until(found, timeout, what=f"log line {pattern!r}")

    def signal(self, signum):
        if self.running():
            self.proc.send_signal(signum)

    send_signal = signal

    def kill(self):
        self.signal(signal.SIGKILL)

    def wait(self, timeout=10.0):
        """Wait for the exit; returns the exit code (negative: killed by that signal)."""
        return self.proc.wait(timeout)

    def stop(self, timeout=15.0, signum=None):
        """Send signum (default SIGTERM), wait up to `timeout` s, then SIGKILL. Returns the
        exit code."""
        if self.running():
            self.proc.send_signal(signum or signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


# --- RabbitMQ -----------------------------------------------------------------------------------


def amqp_connect(url=None, attempts=3):
    """A pika BlockingConnection to the broker URL (default: env SVCCOMM_BROKER_URL)."""
    params = pika.URLParameters(url or os.environ["SVCCOMM_BROKER_URL"])
    params.connection_attempts = attempts
    params.retry_delay = 0.5
    return pika.BlockingConnection(params)


def broker_up():
    """True when an AMQP connection to the broker opens now."""
    try:
        amqp_connect(attempts=1).close()
        return True
    except pika.exceptions.AMQPError:
        return False


def publish_json(
    channel,
    exchange,
    routing_key,
    body,
    message_id=None,
    headers=None,
    mandatory=False,
    **properties,
):
    """Publish body (dict/list -> JSON; str/bytes as is) persistently, as application/json.

    Extra keyword arguments become pika.BasicProperties fields (correlation_id, app_id, ...).
    """
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    props = pika.BasicProperties(
        content_type=properties.pop("content_type", "application/json"),
        delivery_mode=properties.pop("delivery_mode", 2),
        message_id=message_id,
        headers=headers,
        **properties,
    )
    channel.basic_publish(exchange, routing_key, body, props, mandatory=mandatory)


class Message:
    """One message taken from a queue."""

    def __init__(self, method, properties, body):
        self.method = method
        self.properties = properties
        self.body = body
        self.routing_key = method.routing_key
        self.exchange = method.exchange
        self.headers = properties.headers or {}

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"Message({self.exchange!r}, {self.routing_key!r}, {self.body[:200]!r})"


def get_messages(channel, queue, count=1, timeout=5.0):
    """Take (and ack) messages from queue until `count` arrived or `timeout` passed.

    Returns the list (possibly shorter than count); count=None drains what arrives in time.
    """
    messages = []
    deadline = time.monotonic() + timeout
    while count is None or len(messages) < count:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            messages.append(Message(method, props, body))
            continue
        if time.monotonic() >= deadline:
            break
        channel.connection.sleep(0.05)
    return messages


def queue_depth(channel, queue):
    """Number of ready messages in an existing queue."""
    return channel.queue_declare(queue, passive=True).method.message_count


class Broker:
    """The test's own AMQP client (one connection, one channel `ch`): publishes as another
    service would, declares topology and reads what arrived. close() deletes what it declared.

    With confirms (the default) publish() returns once the broker has the message.
    """

    def __init__(self, confirms=True):
        self.conn = amqp_connect()
        self.ch = self.conn.channel()
        if confirms:
            self.ch.confirm_delivery()
        self.exchanges = []
        self.queues = []

    def publish(self, exchange, routing_key, body, headers=None, message_id=None,
                correlation_id=None, content_type="application/json", persistent=True):
        """Publish body (anything but bytes is sent as JSON, UTF-8 unescaped)."""
        if not isinstance(body, (bytes, bytearray)):
            body = json.dumps(body, ensure_ascii=False).encode()
        publish_json(self.ch, exchange, routing_key, bytes(body), message_id=message_id,
                     headers=headers, correlation_id=correlation_id, content_type=content_type,
                     delivery_mode=2 if persistent else 1)

    def exchange(self, name, kind="topic"):
        """Declare a durable exchange (deleted by close())."""
        self.ch.exchange_declare(name, kind, durable=True)
        self.exchanges.append(name)

    def queue(self, name, bind_to=(), arguments=None):
        """Declare a durable queue bound with "#" to each of bind_to (deleted by close())."""
        self.ch.queue_declare(name, durable=True, arguments=arguments)
        self.queues.append(name)
        for ex in bind_to:
            self.ch.queue_bind(name, ex, "#")

    def count(self, queue):
        return queue_depth(self.ch, queue)

    def get_all(self, queue):
        """Take (and ack) every ready message of queue; returns [(properties, body)]."""
        return [(m.properties, m.body) for m in get_messages(self.ch, queue, None, 0)]

    def collect(self, queue, n, timeout=30.0, settle=0.5):
        """Reads messages until n arrived and nothing more came for `settle` seconds (so
        duplicates are seen too), or until timeout. Returns [(method, props, body)]."""
        got = []
        deadline = time.time() + timeout
        quiet_since = None
        for method, props, body in self.ch.consume(queue, auto_ack=True,
                                                   inactivity_timeout=0.1):
            now = time.time()
            if method is not None:
                got.append((method, props, body))
                quiet_since = None
            elif len(got) >= n:
                quiet_since = quiet_since or now
                if now - quiet_since >= settle:
                    break
            if now > deadline:
                break
        self.ch.cancel()
        return got

    def close(self):
        delete_broker_names(self.queues, self.exchanges)
        try:
            self.conn.close()
        except pika.exceptions.AMQPError:
            pass  # already closed by the broker (a test restarted it)


# --- PostgreSQL ---------------------------------------------------------------------------------


def pg_connect(url=None):
    """A psycopg2 connection in autocommit mode (default: env SVCCOMM_DATABASE_URL)."""
    conn = psycopg2.connect(url or os.environ["SVCCOMM_DATABASE_URL"], connect_timeout=5)
    conn.autocommit = True
    return conn


def pg_query(conn, query, params=None):
    """Execute query with params; returns all rows (a list of tuples), or [] without a result."""
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall() if cur.description else []


def sql(query, *params):
    """Run one statement in a session of its own (so it outlives server restarts); returns
    its rows, or [] without a result."""
    conn = pg_connect()
    try:
        return pg_query(conn, query, params or None)
    finally:
        conn.close()


# --- the servers --------------------------------------------------------------------------------


def _tcp_open(url, timeout=1.0):
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname or "localhost", u.port), timeout):
            return True
    except OSError:
        return False


def servers_env():
    """The variables `scripts/servers.sh env` exports, as a dict."""
    out = subprocess.run(
        ["bash", str(SERVERS_SH), "env"], capture_output=True, text=True, check=True
    ).stdout
    env = {}
    for line in out.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            env[key] = value
    return env


def ensure_servers():
    """Make sure the local servers run and os.environ has their variables; returns them."""
    keys = ("SVCCOMM_BROKER_URL", "SVCCOMM_DATABASE_URL", "SVCCOMM_TEST_RABBITMQCTL", "SVCCOMM_TEST_PGCTL")
    for key, value in servers_env().items():
        os.environ.setdefault(key, value)
    if not (_tcp_open(os.environ["SVCCOMM_BROKER_URL"]) and _tcp_open(os.environ["SVCCOMM_DATABASE_URL"])):
        before = servers_env()
        subprocess.run(["bash", str(SERVERS_SH), "start"], check=True, timeout=300)
        # The first start generates the passwords the URLs carry: take the new values.
        for key, value in servers_env().items():
            if os.environ.get(key) == before.get(key):
                os.environ[key] = value
    return {k: os.environ[k] for k in keys}


def _control(variable, what, args, timeout):
    """Run the control command in env `variable` with args; returns stdout, raises on failure."""
    cmd = os.environ.get(variable)
    assert cmd, f'{variable} is not set: eval "$(scripts/servers.sh env)"'
    res = run(shlex.split(cmd) + [str(a) for a in args], timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{what} {' '.join(map(str, args))} failed: {res.stderr or res.stdout}")
    return res.stdout


def rabbitmqctl(*args, timeout=120):
    """Run rabbitmqctl against the test node; returns stdout, raises on failure."""
    return _control("SVCCOMM_TEST_RABBITMQCTL", "rabbitmqctl", args, timeout)


def pg_ctl(*args, timeout=120):
    """Run pg_ctl for the test cluster (e.g. pg_ctl("restart", "-m", "fast", "-w"))."""
    return _control("SVCCOMM_TEST_PGCTL", "pg_ctl", args, timeout)


def stop_rabbitmq_app():
    """Stop the RabbitMQ application (the node stays up; clients are disconnected)."""
    rabbitmqctl("stop_app")


def start_rabbitmq_app():
    """Start the RabbitMQ application again and wait until AMQP connections work."""
    rabbitmqctl("start_app")
    wait_until(broker_up, 60, interval=0.1, what="RabbitMQ accepting AMQP connections")


def restart_rabbitmq(down_for=0.0):
    """Restart the RabbitMQ application, staying down `down_for` seconds in between. The
    application is started again even when stopping or waiting failed."""
    try:
        stop_rabbitmq_app()
        time.sleep(down_for)
    finally:
        start_rabbitmq_app()


def restart_postgresql():
    """Restart the PostgreSQL cluster (fast mode: open sessions are terminated)."""
    pg_ctl("restart", "-m", "fast", "-w")

    def accepting():
        try:
            pg_connect().close()
            return True
        except psycopg2.OperationalError:
            return False

    wait_until(accepting, 60, interval=0.1, what="PostgreSQL connections")


# --- cleanup ------------------------------------------------------------------------------------
# Best effort: a server that a test (or another run sharing the servers) is restarting must not
# turn a test's result into a teardown error; the session sweep removes broker leftovers.


def drop_pg_objects(prefix):
    """Drop every schema, table and function whose name starts with prefix (the outbox table,
    its trigger function, inbox tables, ... whatever the test or the binary created)."""
    try:
        conn = pg_connect()
    except psycopg2.Error:  # database down (a test stopped it): nothing more to do
        return
    try:
        statements = pg_query(
            conn,
            """
            SELECT format('DROP SCHEMA %%I CASCADE', nspname) FROM pg_namespace
             WHERE left(nspname, length(%(p)s)) = %(p)s
            UNION ALL
            SELECT format('DROP TABLE IF EXISTS %%I.%%I CASCADE', n.nspname, c.relname)
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND left(c.relname, length(%(p)s)) = %(p)s
            UNION ALL
            SELECT format('DROP FUNCTION IF EXISTS %%s CASCADE', p.oid::regprocedure) FROM pg_proc p
             WHERE left(p.proname, length(%(p)s)) = %(p)s
            """,
            {"p": prefix},
        )
        for (statement,) in statements:
            pg_query(conn, statement)
    except psycopg2.OperationalError:
        pass  # the session was lost (a restart)
    finally:
        conn.close()


def delete_broker_names(queues, exchanges):
    """Delete queues and exchanges by name; names that do not exist are fine."""
    if not queues and not exchanges:
        return
    try:
        conn = amqp_connect()
    except pika.exceptions.AMQPError:
        return  # broker down (a test stopped it): the session sweep removes leftovers
    try:
        for kind, names in (("queue", queues), ("exchange", exchanges)):
            for name in sorted(names):
                ch = conn.channel()
                try:
                    if kind == "queue":
                        ch.queue_delete(name)
                    else:
                        ch.exchange_delete(name)
                    ch.close()
                except pika.exceptions.ChannelClosedByBroker:
                    pass
    except pika.exceptions.AMQPError:
        return  # the connection was lost (a restart)
    finally:
        if conn.is_open:
            conn.close()


def sweep_session_leftovers():
    """Delete queues and exchanges of this session that the per-test cleanup did not know."""
    try:
        queues = rabbitmqctl("-q", "list_queues", "-p", "svccomm", "name", "--no-table-headers")
        exchanges = rabbitmqctl("-q", "list_exchanges", "-p", "svccomm", "name", "--no-table-headers")
    except (RuntimeError, subprocess.TimeoutExpired):
        return
    mine = lambda text: {n for n in text.split() if n.startswith(SESSION_TAG + "_")}  # noqa: E731
    delete_broker_names(mine(queues), mine(exchanges))


# --- the project --------------------------------------------------------------------------------


# A handler that records every message into the project's table(); body fields steer it:
#   fail_until = k  -> raise while attempt < k;  fail = true -> always raise
#   sleep = s       -> pg_sleep(s) first (after writing a "partial" row)
#   permanent = true -> raise a permanent error
RECORDER = """
local svccomm = require "svccomm"
local db = svccomm.db

local function record(rk, body, msg)
  if type(body) == "table" and body.sleep then
    db.query("INSERT INTO $TABLE (n, attempt, rk, info) VALUES ($1, $2, $3, 'partial')",
      body.n or -1, msg.attempt, rk)
    db.query("SELECT pg_sleep($1)", body.sleep)
  end
  if type(body) == "table" and body.permanent then
    svccomm.permanent_error("not for us: " .. tostring(body.n))
  end
  if type(body) == "table" and (body.fail or (body.fail_until and msg.attempt < body.fail_until)) then
    error("handler failed on attempt " .. msg.attempt)
  end
  if type(body) == "table" and body.sleep then
    db.query("DELETE FROM $TABLE WHERE info = 'partial' AND n = $1", body.n or -1)
  end
  local info = {
    h = msg.properties.headers.h, corr = msg.correlation_id, mid = msg.message_id,
    redelivered = msg.redelivered, text = type(body) == "table" and body.text or nil,
  }
  db.query("INSERT INTO $TABLE (n, attempt, rk, body, info) VALUES ($1, $2, $3, $4, $5)",
    type(body) == "table" and body.n or -1, msg.attempt, rk,
    require("cjson").encode(body), require("cjson").encode(info))
end

svccomm.message_router.consumer("$EXCHANGE", "#", record)
"""

# What setup_consumer() and setup_relay() add to the defaults: short delays keep runs short.
CONSUMER_SETTINGS = {"RETRY_DELAYS": [0.3, 0.6], "MAX_ATTEMPTS": 3, "STATS_INTERVAL": 1,
                     "HEARTBEAT": 5, "RECONNECT_MAX_DELAY": 2}
RELAY_SETTINGS = {"APP_ID": "pubtest", "RECONNECT_MAX_DELAY": 1, "STATS_INTERVAL": 2,
                  "SHUTDOWN_TIMEOUT": 10}


class Project:
    """A temporary svccomm project (settings.lua + apps/) owned by one test.

    Every queue, exchange and table name it hands out starts with its prefix; cleanup() stops
    the processes it started, closes its clients and removes those names. A test typically
    reads:

        project.write_settings(EXCHANGES=[project.exchange("orders")])
        project.write_app("orders", 'local r = require("svccomm").message_router ...')
        res = project.run("check")

    setup_consumer() and setup_relay() prepare the two long-running scenarios.
    """

    def __init__(self, path, prefix):
        self.dir = Path(path)
        self.prefix = prefix
        self.settings_path = self.dir / "settings.lua"
        self.settings = {}  # what write_settings() wrote last
        self._queues = set()
        self._exchanges = set()
        self._procs = []
        self._amqp = []
        self._pg = []
        (self.dir / "apps").mkdir(exist_ok=True)

    # -- unique names (recorded for cleanup) ------------------------------------------------

    def queue(self, name="q"):
        """A queue name unique to this test: <prefix>.<name>."""
        q = f"{self.prefix}.{name}"
        self._queues.add(q)
        return q

    def exchange(self, name="ex"):
        """An exchange name unique to this test: <prefix>.<name>."""
        e = f"{self.prefix}.{name}"
        self._exchanges.add(e)
        return e

    def table(self, name="t"):
        """A table name unique to this test: <prefix>_<name>. Every table, schema and
        function whose name starts with the prefix is dropped after the test."""
        return f"{self.prefix}_{name}"

    # -- files ------------------------------------------------------------------------------

    def default_settings(self):
        return {
            "APP_ID": self.prefix,
            "BROKER_CONNECTION_URL": os.environ["SVCCOMM_BROKER_URL"],
            "DATABASE_URL": os.environ["SVCCOMM_DATABASE_URL"],
            "QUEUE": self.queue("q"),
            "OUTBOX_TABLE": self.table("outbox"),
        }

    def write_settings(self, settings=None, defaults=True, **keys):
        """Write settings.lua from a dict and/or keyword arguments; returns the dict written
        (also kept as self.settings, so `write_settings(project.settings, KEY=...)` changes
        one key).

        With defaults=True the project defaults (APP_ID, URLs, QUEUE, OUTBOX_TABLE) are merged
        under the given keys; a key given as None is left out of the file.
        """
        merged = self.default_settings() if defaults else {}
        merged.update(settings or {})
        merged.update(keys)
        merged = {k: v for k, v in merged.items() if v is not None}
        write_settings(self.settings_path, merged)
        self.settings = merged
        return merged

    def write_settings_source(self, source):
        """Write settings.lua verbatim (for syntax and runtime error tests)."""
        self.settings_path.write_text(source)

    def write_app(self, name, source, filename="consumers.lua"):
        """Write apps/<name>/<filename> (default consumers.lua); returns its path."""
        path = self.dir / "apps" / name / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
        return path

    # -- the binary -------------------------------------------------------------------------

    def env(self, extra=None):
        """The environment for the binary: the test env without the URL overrides (the
        settings file decides), plus `extra` (a value of None removes a variable)."""
        env = dict(os.environ)
        for k in ("SVCCOMM_BROKER_URL", "SVCCOMM_DATABASE_URL", "SVCCOMM_SETTINGS"):
            env.pop(k, None)
        for k, v in (extra or {}).items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = str(v)
        return env

    def run(self, *args, env=None, timeout=30, input=None):
        """Run `svccomm <args>` in the project directory; returns CompletedProcess
        (returncode, stdout, stderr as text)."""
        return run([svccomm_bin(), *args], cwd=self.dir, env=self.env(env), timeout=timeout, input=input)

    def start(self, *args, env=None, name=None):
        """Start `svccomm <args>` in the background (stopped at cleanup); returns its
        Background."""
        name = name or (args[0] if args else "svccomm")
        log = self.dir / f"{name}-{len(self._procs)}.log"
        proc = Background([svccomm_bin(), *args], cwd=self.dir, env=self.env(env), log_path=log)
        self._procs.append(proc)
        return proc

    @property
    def proc(self):
        """The process started last."""
        return self._procs[-1]

    def stop(self, proc=None, signum=signal.SIGTERM, timeout=30):
        """Send signum to proc (default: the process started last), SIGKILL it after
        `timeout` s; returns its exit code."""
        return (proc or self.proc).stop(timeout, signum)

    def log(self, proc=None):
        """What proc wrote, or every process of the project one after the other."""
        return "".join(p.log() for p in ([proc] if proc else self._procs))

    # -- the runconsumer scenario -----------------------------------------------------------

    def setup_consumer(self, handler, settings=None, app="rec", use_db=True):
        """Settings for runconsumer (queue() bound to exchange() with "#", CONSUMER_SETTINGS,
        then `settings`), the handler source as apps/<app>/consumers.lua with $EXCHANGE and
        $TABLE replaced by exchange() and table(), and with use_db the table the handler
        records into (n, attempt, rk, body, info). Returns the project."""
        ex = self.exchange()
        keys = {"EXCHANGES": [ex], "BINDS": [[ex, "#"]], **CONSUMER_SETTINGS}
        if not use_db:
            keys["DATABASE_URL"] = None
        keys.update(settings or {})
        self.write_settings(keys)
        code = textwrap.dedent(handler).replace("$EXCHANGE", ex).replace("$TABLE", self.table())
        self.write_app(app, code)
        if use_db:
            sql("CREATE TABLE %s (id bigserial, n int, attempt int, rk text, body text, "
                "info text, at timestamptz DEFAULT clock_timestamp())" % self.table())
        return self

    def start_consumer(self, *args, env=None, wait_consuming=True):
        """Start `svccomm runconsumer <args>`; by default return once it consumes its queue."""
        proc = self.start("runconsumer", *args, env=env)
        if wait_consuming:
            proc.wait_for_log(re.escape("consuming '%s'" % self.settings["QUEUE"]), 30)
            assert proc.running(), proc.log()
        return proc

    def records(self, cols="n, attempt, rk, body, info"):
        """The rows the handler recorded, in order."""
        return sql("SELECT %s FROM %s ORDER BY id" % (cols, self.table()))

    def record_count(self):
        return sql("SELECT count(*) FROM %s" % self.table())[0][0]

    # -- the runpublisher scenario ----------------------------------------------------------

    def setup_relay(self, settings=None):
        """Settings for runpublisher (RELAY_SETTINGS, then `settings`) and the outbox table
        table("outbox") made by `svccomm migrate`. Returns the project."""
        self.write_settings(dict(RELAY_SETTINGS, **(settings or {})))
        r = self.run("migrate", timeout=60)
        assert r.returncode == 0, r.stderr
        return self

    def start_relay(self):
        """Start `svccomm runpublisher`; returns once it says it is starting."""
        proc = self.start("runpublisher")
        proc.wait_for_log("starting", 10)
        return proc

    def outbox_insert(self, rows):
        """rows: list of dicts (exchange, routing_key, body and optional columns), each
        committed on its own. Returns the ids, in order."""
        ids = []
        conn = pg_connect()
        try:
            for r in rows:
                cols = list(r.keys())
                vals = [json.dumps(r[c]) if c in ("headers", "tags") else r[c] for c in cols]
                (row_id,), = pg_query(conn, "INSERT INTO %s (%s) VALUES (%s) RETURNING id"
                                      % (self.table("outbox"), ", ".join(cols),
                                         ", ".join(["%s"] * len(cols))), vals)
                ids.append(row_id)
        finally:
            conn.close()
        return ids

    def outbox_insert_many(self, exchange, n, routing_key="ev.x"):
        """n rows in one statement; bodies are {"n": i}. Returns the ids."""
        rows = sql("INSERT INTO %s (exchange, routing_key, body) SELECT %%s, %%s, "
                   "'{\"n\":' || g || '}' FROM generate_series(1, %%s) g "
                   "RETURNING id" % self.table("outbox"), exchange, routing_key, n)
        return sorted(r[0] for r in rows)

    def outbox_count(self, where="true"):
        return sql("SELECT count(*) FROM %s WHERE %s" % (self.table("outbox"), where))[0][0]

    def outbox_rows(self, cols="id, attempts, last_error, parked_at"):
        return sql("SELECT %s FROM %s ORDER BY id" % (cols, self.table("outbox")))

    # -- clients ----------------------------------------------------------------------------

    def amqp(self):
        """A fresh pika channel on the test vhost (its connection is closed at cleanup)."""
        conn = amqp_connect()
        self._amqp.append(conn)
        return conn.channel()

    def pg(self):
        """A fresh autocommit psycopg2 connection (closed at cleanup)."""
        conn = pg_connect()
        self._pg.append(conn)
        return conn

    # -- cleanup ----------------------------------------------------------------------------

    def cleanup(self):
        """Stop processes, print their logs, drop what the test created."""
        for proc in self._procs:
            code = proc.stop()
            # pytest shows this only when the test failed.
            print(f"--- {' '.join(proc.args)} (exit {code}), log {proc.log_path}:\n{proc.log()}")
        for conn in self._amqp:
            if conn.is_open:
                try:
                    conn.close()
                except pika.exceptions.AMQPError:
                    pass
        for conn in self._pg:
            conn.close()
        delete_broker_names(self._queues | self._consumer_queues(), self._exchanges)
        drop_pg_objects(self.prefix)

    def _consumer_queues(self):
        """The dead-letter and retry queues runconsumer declares for the project's queue."""
        q = self.settings.get("QUEUE")
        if not isinstance(q, str) or not q.startswith(self.prefix):
            return set()
        delays = self.settings.get("RETRY_DELAYS")
        delays = delays if isinstance(delays, (list, tuple)) else []
        return {q + ".dlq"} | {"%s.retry.%d" % (q, round(d * 1000)) for d in delays}


def row_id(message_id):
    """The outbox row id in a message_id the relay made: "<APP_ID>:<row id>"."""
    app, sep, rid = message_id.rpartition(":")
    assert sep and app, message_id
    return int(rid)
