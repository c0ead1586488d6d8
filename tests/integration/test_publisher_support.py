"""Shared helpers for the relay scenarios (test_publisher_*.py); holds no tests itself.

Every scenario gets its own outbox table, exchanges and queues (names carry a random suffix)
and its own project directory with a settings.lua. The real `svccomm` binary runs the relay;
an independent client (psycopg2) writes outbox rows and another (pika) reads what arrived.
"""
import json
import os
import shlex
import signal
import subprocess
import time
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


def rabbitmqctl(*args):
    cmd = os.environ.get("SVCCOMM_TEST_RABBITMQCTL")
    assert cmd, "SVCCOMM_TEST_RABBITMQCTL is not set: eval \"$(scripts/servers.sh env)\""
    subprocess.run(shlex.split(cmd) + list(args), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=120)


def pgctl(*args):
    cmd = os.environ.get("SVCCOMM_TEST_PGCTL")
    assert cmd, "SVCCOMM_TEST_PGCTL is not set: eval \"$(scripts/servers.sh env)\""
    subprocess.run(shlex.split(cmd) + list(args), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=120)


def wait_for(pred, timeout=20.0, interval=0.1, what="condition"):
    return svc.wait_until(pred, timeout=timeout, interval=interval, what=what)


def db():
    return svc.pg_connect(DATABASE_URL)


def suffix():
    return uuid.uuid4().hex[:10]


class Broker:
    """A pika connection for declaring topology and reading what the relay sent."""

    def __init__(self):
        self.conn = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        self.ch = self.conn.channel()
        self.exchanges = []
        self.queues = []

    def exchange(self, name):
        self.ch.exchange_declare(name, "topic", durable=True)
        self.exchanges.append(name)

    def queue(self, name, bind_to=(), arguments=None):
        self.ch.queue_declare(name, durable=True, arguments=arguments)
        self.queues.append(name)
        for ex in bind_to:
            self.ch.queue_bind(name, ex, "#")

    def count(self, queue):
        return self.ch.queue_declare(queue, passive=True).method.message_count

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
        try:
            for q in self.queues:
                self.ch.queue_delete(q)
            for ex in self.exchanges:
                self.ch.exchange_delete(ex)
            self.conn.close()
        except Exception:
            pass


class Project:
    """A project directory with settings.lua, a fresh outbox table and relay processes."""

    def __init__(self, tmp_path, settings=None):
        self.dir = str(tmp_path)
        self.table = "pub_" + suffix()
        values = {
            "APP_ID": "pubtest",
            "OUTBOX_TABLE": self.table,
            "RECONNECT_MAX_DELAY": 1,
            "STATS_INTERVAL": 2,
            "SHUTDOWN_TIMEOUT": 10,
        }
        values.update(settings or {})
        lines = ["return {"]
        for k, v in values.items():
            if isinstance(v, bool):
                lines.append("  %s = %s," % (k, "true" if v else "false"))
            elif isinstance(v, (int, float)):
                lines.append("  %s = %r," % (k, v))
            else:
                lines.append("  %s = %s," % (k, json.dumps(v)))
        lines.append("}")
        self.settings = os.path.join(self.dir, "settings.lua")
        with open(self.settings, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.procs = []
        self.logs = []
        r = self.run("migrate")
        assert r.returncode == 0, r.stderr

    def env(self):
        env = dict(os.environ)
        env["SVCCOMM_BROKER_URL"] = BROKER_URL
        env["SVCCOMM_DATABASE_URL"] = DATABASE_URL
        return env

    def run(self, *args, timeout=60):
        return subprocess.run([BIN, "--settings", self.settings] + list(args), env=self.env(),
                              capture_output=True, text=True, timeout=timeout)

    def start(self):
        """Starts a relay; waits until it holds its partitions (or says why not)."""
        path = os.path.join(self.dir, "relay-%d.log" % len(self.logs))
        log = open(path, "w")
        p = subprocess.Popen([BIN, "--settings", self.settings, "runpublisher"],
                             env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        self.logs.append(path)
        wait_for(lambda: "starting" in self.log(p) or p.poll() is not None, 10,
                 what="relay start")
        return p

    def log(self, p=None):
        paths = [self.logs[self.procs.index(p)]] if p else self.logs
        out = ""
        for path in paths:
            with open(path) as f:
                out += f.read()
        return out

    def stop(self, p, sig=signal.SIGTERM, timeout=30):
        if p.poll() is None:
            p.send_signal(sig)
        return p.wait(timeout)

    def insert(self, rows, conn=None):
        """rows: list of dicts (exchange, routing_key, body and optional columns).
        Returns the ids, in order."""
        own = conn is None
        conn = conn or db()
        ids = []
        try:
            with conn.cursor() as cur:
                for r in rows:
                    cols = list(r.keys())
                    vals = [json.dumps(r[c]) if c in ("headers", "tags") else r[c]
                            for c in cols]
                    cur.execute("INSERT INTO %s (%s) VALUES (%s) RETURNING id"
                                % (self.table, ", ".join(cols),
                                   ", ".join(["%s"] * len(cols))), vals)
                    ids.append(cur.fetchone()[0])
        finally:
            if own:
                conn.close()
        return ids

    def insert_many(self, exchange, n, routing_key="ev.x", conn=None):
        """n rows in one statement; bodies are {"n": i}. Returns the ids."""
        own = conn is None
        conn = conn or db()
        try:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO %s (exchange, routing_key, body) SELECT %%s, %%s, "
                            "'{\"n\":' || g || '}' FROM generate_series(1, %%s) g "
                            "RETURNING id" % self.table, (exchange, routing_key, n))
                return sorted(r[0] for r in cur.fetchall())
        finally:
            if own:
                conn.close()

    def count(self, where="true"):
        conn = db()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM %s WHERE %s" % (self.table, where))
                return cur.fetchone()[0]
        finally:
            conn.close()

    def rows(self, cols="id, attempts, last_error, parked_at"):
        conn = db()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT %s FROM %s ORDER BY id" % (cols, self.table))
                return cur.fetchall()
        finally:
            conn.close()

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        conn = db()
        try:
            with conn.cursor() as cur:
                cur.execute("DROP TABLE IF EXISTS %s" % self.table)
        finally:
            conn.close()

# Fixtures shared by the test files that import them.

@pytest.fixture
def broker():
    b = Broker()
    yield b
    b.close()


@pytest.fixture
def make(tmp_path):
    made = []

    def factory(settings=None):
        d = tmp_path / ("p%d" % len(made))
        d.mkdir()
        p = Project(d, settings)
        made.append(p)
        return p

    yield factory
    for p in made:
        p.cleanup()
