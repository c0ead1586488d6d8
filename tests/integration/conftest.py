"""Fixtures for the svccomm integration tests.

    servers   (session) the local RabbitMQ and PostgreSQL are up (scripts/servers.sh start when
              SVCCOMM_BROKER_URL is unset or unreachable); their variables are in os.environ.
    project   (per test) a temporary project directory with a UNIQUE prefix for every broker
              and database name, helpers to write settings.lua and apps, to run the binary and
              to talk to the servers; everything it created is removed afterwards.

A test typically reads:

    def test_something(project):
        project.write_settings(EXCHANGES=[project.exchange("orders")])
        project.write_app("orders", 'local r = require("svccomm").message_router ...')
        res = project.run("check")
        assert res.returncode == 0, res.stderr

More helpers (wait_until, publish_json, get_messages, restart_rabbitmq, ...) are in svc.py.
"""

import os
import re
import subprocess
import uuid
from pathlib import Path

import pika.exceptions
import pytest

import svc

class Project:
    """A temporary svccomm project (settings.lua + apps/) owned by one test."""

    def __init__(self, path, prefix):
        self.dir = Path(path)
        self.prefix = prefix
        self.settings_path = self.dir / "settings.lua"
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
        """Write settings.lua from a dict and/or keyword arguments; returns the dict written.

        With defaults=True the project defaults (APP_ID, URLs, QUEUE, OUTBOX_TABLE) are merged
        under the given keys; a key given as None is left out of the file.
        """
        merged = self.default_settings() if defaults else {}
        merged.update(settings or {})
        merged.update(keys)
        merged = {k: v for k, v in merged.items() if v is not None}
        svc.write_settings(self.settings_path, merged)
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
        return svc.run([svc.svccomm_bin(), *args], cwd=self.dir, env=self.env(env), timeout=timeout, input=input)

    def start(self, *args, env=None, name=None):
        """Start `svccomm <args>` in the background (stopped at teardown); returns svc.Background."""
        name = name or (args[0] if args else "svccomm")
        log = self.dir / f"{name}-{len(self._procs)}.log"
        proc = svc.Background([svc.svccomm_bin(), *args], cwd=self.dir, env=self.env(env), log_path=log)
        self._procs.append(proc)
        return proc

    # -- clients ----------------------------------------------------------------------------

    def amqp(self):
        """A fresh pika channel on the test vhost (its connection is closed at teardown)."""
        conn = svc.amqp_connect()
        self._amqp.append(conn)
        return conn.channel()

    def pg(self):
        """A fresh autocommit psycopg2 connection (closed at teardown)."""
        conn = svc.pg_connect()
        self._pg.append(conn)
        return conn

    # -- teardown ---------------------------------------------------------------------------

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
        _delete_broker_names(self._queues, self._exchanges)
        _drop_pg_objects(self.prefix)

def _drop_pg_objects(prefix):
    """Drop every schema, table and function whose name starts with prefix (the outbox table,
    its trigger function, inbox tables, ... whatever the test or the binary created)."""
    try:
        conn = svc.pg_connect()
    except Exception:  # database down (a test stopped it): nothing more to do
        return
    try:
        statements = svc.pg_query(
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
            svc.pg_query(conn, statement)
    finally:
        conn.close()


def _delete_broker_names(queues, exchanges):
    """Delete queues and exchanges by name; names that do not exist are fine."""
    if not queues and not exchanges:
        return
    try:
        conn = svc.amqp_connect()
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
    finally:
        conn.close()


# A per-session root makes every name unique across sessions too (several developers or CI
# jobs can share the servers) and lets the session sweep find this session's leftovers.
SESSION_TAG = "t" + uuid.uuid4().hex[:6]


def _sweep_session_leftovers():
    """Delete queues and exchanges of this session that the per-test cleanup did not know
    (for example retry or dead-letter queues the binary declared)."""
    try:
        queues = svc.rabbitmqctl("-q", "list_queues", "-p", "svccomm", "name", "--no-table-headers")
        exchanges = svc.rabbitmqctl("-q", "list_exchanges", "-p", "svccomm", "name", "--no-table-headers")
    except (RuntimeError, subprocess.TimeoutExpired):
        return
    mine = lambda text: {n for n in text.split() if n.startswith(SESSION_TAG + "_")}  # noqa: E731
    _delete_broker_names(mine(queues), mine(exchanges))


def pytest_configure(config):
    """Fill in the servers' variables before test modules are imported (some read them at
    import time); `scripts/servers.sh env` only prints them, the `servers` fixture starts."""
    for key, value in svc.servers_env().items():
        os.environ.setdefault(key, value)


@pytest.fixture(scope="session")
def servers():
    """The local servers are up; returns their variables (also in os.environ)."""
    env = svc.ensure_servers()
    yield env
    _sweep_session_leftovers()


@pytest.fixture
def project(servers, tmp_path, request):
    """A temporary project with unique names, cleaned up after the test."""
    test = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:28]
    prefix = f"{SESSION_TAG}_{test}_{uuid.uuid4().hex[:4]}"
    proj = Project(tmp_path, prefix)
    yield proj
    proj.cleanup()
