"""Helpers for the svccomm integration tests: servers, the binary, AMQP and PostgreSQL clients.

The tests drive the real `svccomm` binary against the real local servers (scripts/servers.sh)
and inspect the results with independent clients: pika (1.2) and psycopg2. Fixtures that use
these helpers live in conftest.py.
"""

import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import pika
import psycopg2

ROOT = Path(__file__).resolve().parents[2]
SERVERS_SH = ROOT / "scripts" / "servers.sh"


def svccomm_bin():
    """Path of the binary under test: env SVCCOMM_BIN, default build/svccomm."""
    return os.environ.get("SVCCOMM_BIN") or str(ROOT / "build" / "svccomm")


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
    """A process started in the background, its stdout+stderr captured in a log file."""

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

    def wait(self, timeout=10.0):
        """Wait for the exit; returns the exit code (negative: killed by that signal)."""
        return self.proc.wait(timeout)

    def stop(self, timeout=15.0):
        """SIGTERM, wait up to `timeout` s, then SIGKILL. Returns the exit code."""
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


# --- RabbitMQ -----------------------------------------------------------------------------------


def amqp_connect(url=None):
    """A pika BlockingConnection to the broker URL (default: env SVCCOMM_BROKER_URL)."""
    params = pika.URLParameters(url or os.environ["SVCCOMM_BROKER_URL"])
    params.connection_attempts = 3
    params.retry_delay = 0.5
    return pika.BlockingConnection(params)


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


# --- PostgreSQL ---------------------------------------------------------------------------------


def pg_connect(url=None):
    """A psycopg2 connection in autocommit mode (default: env SVCCOMM_DATABASE_URL)."""
    conn = psycopg2.connect(url or os.environ["SVCCOMM_DATABASE_URL"], connect_timeout=5)
    conn.autocommit = True
    return conn


def pg_query(conn, sql, params=None):
    """Execute sql with params; returns all rows (a list of tuples), or [] without a result."""
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


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
        subprocess.run(["bash", str(SERVERS_SH), "start"], check=True, timeout=300)
    return {k: os.environ[k] for k in keys}


def rabbitmqctl(*args, timeout=120):
    """Run rabbitmqctl against the test node; returns stdout, raises on failure."""
    cmd = shlex.split(os.environ["SVCCOMM_TEST_RABBITMQCTL"]) + [str(a) for a in args]
    res = run(cmd, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(map(str, args))} failed: {res.stderr or res.stdout}")
    return res.stdout


def pg_ctl(*args, timeout=120):
    """Run pg_ctl for the test cluster (e.g. pg_ctl("restart", "-m", "fast", "-w"))."""
    cmd = shlex.split(os.environ["SVCCOMM_TEST_PGCTL"]) + [str(a) for a in args]
    res = run(cmd, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"pg_ctl {' '.join(map(str, args))} failed: {res.stderr or res.stdout}")
    return res.stdout


def stop_rabbitmq_app():
    """Stop the RabbitMQ application (the node stays up; clients are disconnected)."""
    rabbitmqctl("stop_app")


def start_rabbitmq_app():
    """Start the RabbitMQ application again and wait until AMQP connections work."""
    rabbitmqctl("start_app")
    wait_until(lambda: _tcp_open(os.environ["SVCCOMM_BROKER_URL"]), 60, what="RabbitMQ port")


def restart_rabbitmq(down_for=0.0):
    """Restart the RabbitMQ application, staying down `down_for` seconds in between."""
    stop_rabbitmq_app()
    time.sleep(down_for)
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
