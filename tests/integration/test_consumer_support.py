"""Shared helpers for the consumer scenarios (test_consumer_*.py); holds no tests itself.

Each scenario gets its own project directory, queue, exchanges and PostgreSQL table (names
carry a random suffix), so scenarios never see each other's messages. An independent client
(pika, psycopg2) publishes and inspects; the handler records into PostgreSQL through
svccomm.db, inside the consumer's transaction.
"""
import json
import os
import shlex
import signal
import subprocess
import textwrap
import uuid

import pika
import pytest

import svc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("SVCCOMM_BIN", os.path.join(ROOT, "build", "svccomm"))
BROKER_URL = os.environ.get("SVCCOMM_BROKER_URL",
                            "amqp://svccomm:svccomm@localhost:5673/svccomm")
DATABASE_URL = os.environ.get("SVCCOMM_DATABASE_URL",
                              "postgresql://svccomm@localhost:5433/svccomm")


def rabbitmqctl():
    cmd = os.environ.get("SVCCOMM_TEST_RABBITMQCTL")
    return shlex.split(cmd) if cmd else None


def pgctl():
    cmd = os.environ.get("SVCCOMM_TEST_PGCTL")
    return shlex.split(cmd) if cmd else None


def wait_for(pred, timeout=20.0, interval=0.1, what="condition"):
    return svc.wait_until(pred, timeout=timeout, interval=interval, what=what)


def db_connect():
    return svc.pg_connect(DATABASE_URL)


def sql(query, *args):
    """Runs one statement in its own connection; returns the rows (or None)."""
    conn = db_connect()
    try:
        with conn.cursor() as cur:
            cur.execute(query, args or None)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


class Broker:
    """A pika connection for publishing and inspecting queues."""

    def __init__(self):
        self.conn = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()

    def publish(self, exchange, routing_key, body, headers=None, message_id=None,
                correlation_id=None, content_type="application/json", persistent=True):
        if not isinstance(body, (bytes, bytearray)):
            body = json.dumps(body, ensure_ascii=False).encode()
        props = pika.BasicProperties(headers=headers, message_id=message_id,
                                     correlation_id=correlation_id,
                                     content_type=content_type,
                                     delivery_mode=2 if persistent else 1)
        self.ch.basic_publish(exchange, routing_key, body, props)

    def count(self, queue):
        return self.ch.queue_declare(queue, passive=True).method.message_count

    def consumers(self, queue):
        return self.ch.queue_declare(queue, passive=True).method.consumer_count

    def get_all(self, queue):
        out = []
        while True:
            method, props, body = self.ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((props, body))

    def delete(self, *queues_or_exchanges):
        for name in queues_or_exchanges:
            try:
                self.ch.queue_delete(name)
            except Exception:
                self.ch = self.conn.channel()

    def close(self):
        try:
            self.conn.close()
        except Exception:
            pass


class Project:
    """A temporary svccomm project: settings.lua, one app, a record table, a queue."""

    def __init__(self, tmp_path, handler_lua, settings=None, app="rec", use_db=True):
        self.id = uuid.uuid4().hex[:10]
        self.dir = str(tmp_path)
        self.queue = "q_" + self.id
        self.exchange = "ex_" + self.id
        self.table = "rec_" + self.id
        self.proc = None
        self.logfile = os.path.join(self.dir, "consumer.log")
        base = {
            "QUEUE": self.queue,
            "EXCHANGES": [self.exchange],
            "BINDS": [[self.exchange, "#"]],
            "RETRY_DELAYS": [0.3, 0.6],
            "MAX_ATTEMPTS": 3,
            "STATS_INTERVAL": 1,
            "HEARTBEAT": 5,
            "RECONNECT_MAX_DELAY": 2,
        }
        if not use_db:
            base["DATABASE_URL"] = None
        base.update(settings or {})
        self.settings = base
        os.makedirs(os.path.join(self.dir, "apps", app), exist_ok=True)
        with open(os.path.join(self.dir, "settings.lua"), "w") as f:
            f.write("return " + lua_value(base) + "\n")
        code = textwrap.dedent(handler_lua)
        code = code.replace("$EXCHANGE", self.exchange).replace("$TABLE", self.table)
        with open(os.path.join(self.dir, "apps", app, "consumers.lua"), "w") as f:
            f.write(code)
        if use_db:
            sql("CREATE TABLE %s (id bigserial, n int, attempt int, rk text, body text, "
                "info text, at timestamptz DEFAULT clock_timestamp())" % self.table)

    # --- the process
    def env(self):
        env = dict(os.environ)
        env["SVCCOMM_BROKER_URL"] = BROKER_URL
        if self.settings.get("DATABASE_URL", "unset") is None:
            env.pop("SVCCOMM_DATABASE_URL", None)
        else:
            env["SVCCOMM_DATABASE_URL"] = DATABASE_URL
        return env

    def start(self, *args, wait_consuming=True):
        self.log_fh = open(self.logfile, "ab")
        self.proc = subprocess.Popen(
            [BIN, "--settings", os.path.join(self.dir, "settings.lua"), "runconsumer", *args],
            cwd=self.dir, env=self.env(), stdout=self.log_fh, stderr=subprocess.STDOUT)
        if wait_consuming:
            wait_for(lambda: "consuming '%s'" % self.queue in self.log() or
                     self.proc.poll() is not None, 30, what="the consumer to start")
            assert self.proc.poll() is None, self.log()
        return self.proc

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.log_fh.close()
        return rc

    def log(self):
        try:
            with open(self.logfile, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    # --- what the handler recorded
    def rows(self, cols="n, attempt, rk, body, info"):
        return sql("SELECT %s FROM %s ORDER BY id" % (cols, self.table))

    def count(self):
        return sql("SELECT count(*) FROM %s" % self.table)[0][0]

    def cleanup(self, broker=None):
        self.stop(signal.SIGKILL, 5)
        try:
            sql("DROP TABLE IF EXISTS %s" % self.table)
        except Exception:
            pass
        if broker is not None:
            names = [self.queue, self.queue + ".dlq"]
            names += ["%s.retry.%d" % (self.queue, round(d * 1000))
                      for d in self.settings.get("RETRY_DELAYS", [])]
            broker.delete(*names)
            try:
                broker.ch.exchange_delete(self.exchange)
            except Exception:
                broker.ch = broker.conn.channel()


def lua_value(v):
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "{" + ", ".join(lua_value(x) for x in v) + "}"
    if isinstance(v, dict):
        return "{" + ", ".join("[%s] = %s" % (json.dumps(k), lua_value(x))
                               for k, x in v.items() if x is not None) + "}"
    raise TypeError(v)


# A handler that records every message; body fields steer it:
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

# Fixtures shared by the test files that import them.

@pytest.fixture
def broker():
    b = Broker()
    yield b
    b.close()


@pytest.fixture
def projects(broker):
    made = []
    yield made
    for p in made:
        p.cleanup(broker)
