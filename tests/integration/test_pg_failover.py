"""Database failover: relay and consumer on a DATABASE_URL with two hosts and
target_session_attrs=read-write keep both guarantees when the primary is lost and its
synchronous standby promoted, and reconnect to the new primary by themselves (issue 15).

The test's own standby (`scripts/servers.sh pg-standby start --sync`) is removed afterwards and
the usual PostgreSQL started again, so the other tests find the servers as they were."""
import json
import shlex
import subprocess
import threading
import time

import psycopg2
import pytest

import svc
from svc import RECORDER

EVENTS = 1500  # transactions the writer tries; every 10th is rolled back on purpose
FAIL_AFTER = 400  # handled events before the primary is stopped


def standby(*args, timeout=300):
    res = subprocess.run(["bash", str(svc.SERVERS_SH), "pg-standby", *args],
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr + res.stdout
    return res.stdout


@pytest.fixture
def failover_urls(servers, request):
    """A standby of the test PostgreSQL (synchronous unless the test is marked
    `asynchronous`); yields (the two-host URL, the standby's URL). Afterwards the standby is
    removed and the test PostgreSQL started again (it may have been stopped)."""
    standby("start", *([] if request.node.get_closest_marker("asynchronous") else ["--sync"]))
    env = {}
    for line in standby("env").splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export":
            key, value = words[1].split("=", 1)
            env[key] = value
    try:
        yield env["SVCCOMM_FAILOVER_DATABASE_URL"], env["SVCCOMM_STANDBY_DATABASE_URL"]
    finally:
        standby("stop")
        subprocess.run(["bash", str(svc.SERVERS_SH), "start"], check=True, timeout=300,
                       capture_output=True)
        svc.wait_until(lambda: _accepting(None), 60, what="the test PostgreSQL back")


def _accepting(url):
    try:
        svc.pg_connect(url).close()
        return True
    except psycopg2.OperationalError:
        return False


class Writer(threading.Thread):
    """Commits a business row and its outbox row per transaction, through the two-host URL,
    reconnecting when the primary is gone. Sorts each n by what COMMIT said."""

    def __init__(self, url, biz, outbox, exchange):
        super().__init__(daemon=True)
        self.url, self.biz, self.outbox, self.exchange = url, biz, outbox, exchange
        self.committed, self.rolled_back, self.unknown, self.failed = set(), set(), set(), set()
        self.reconnects = 0
        self.error = None

    def run(self):
        try:
            self._run()
        except Exception as e:  # reported by the test
            self.error = e

    def _run(self):
        conn = None
        n = 0
        while n < EVENTS:
            if conn is None:
                try:
                    conn = psycopg2.connect(self.url, connect_timeout=3)
                except psycopg2.OperationalError:
                    time.sleep(0.1)
                    continue
            n += 1
            in_commit = False
            try:
                cur = conn.cursor()
                cur.execute("INSERT INTO %s (n) VALUES (%%s)" % self.biz, (n,))
                cur.execute("INSERT INTO %s (exchange, routing_key, body) VALUES (%%s, %%s, %%s)"
                            % self.outbox, (self.exchange, "ev.made", json.dumps({"n": n})))
                if n % 10 == 0:
                    conn.rollback()
                    self.rolled_back.add(n)
                else:
                    in_commit = True
                    conn.commit()
                    self.committed.add(n)
            except psycopg2.Error:
                # failed before COMMIT: not committed; during COMMIT: not known
                (self.unknown if in_commit else self.failed).add(n)
                try:
                    conn.close()
                except psycopg2.Error:
                    pass
                conn = None
                self.reconnects += 1
        if conn is not None:
            conn.close()


def query(url, q):
    conn = svc.pg_connect(url)
    try:
        return svc.pg_query(conn, q)
    finally:
        conn.close()


def test_primary_lost_and_standby_promoted_nothing_lost_no_restart(project, broker, failover_urls):
    failover_url = failover_urls[0]
    p = project.setup_consumer(RECORDER, dict(svc.RELAY_SETTINGS, **{
        "DATABASE_URL": failover_url, "INBOX": True, "INBOX_TABLE": project.table("inbox"),
        "PREFETCH_COUNT": 50, "RECONNECT_MAX_DELAY": 1}))
    r = p.run("migrate", timeout=60)
    assert r.returncode == 0, r.stderr
    biz = p.table("biz")
    svc.sql("CREATE TABLE %s (n int PRIMARY KEY)" % biz)
    assert ", standby, streaming, sync," in standby("status")
    consumer = p.start_consumer()
    relay = p.start_relay()

    writer = Writer(failover_url, biz, p.table("outbox"), p.exchange())
    writer.start()
    handled = lambda: query(failover_url, "SELECT count(*) FROM %s" % p.table())[0][0]
    svc.wait_until(lambda: handled() >= FAIL_AFTER, 60, what="events flowing")

    # the primary dies (no shutdown checkpoint, sessions cut), the standby takes over
    svc.pg_ctl("stop", "-m", "immediate")
    standby("promote")
    assert ", primary (promoted)," in standby("status")

    writer.join(120)
    assert not writer.is_alive() and writer.error is None, writer.error
    assert writer.reconnects >= 1  # it did see the primary go

    outbox = p.table("outbox")
    svc.wait_until(lambda: query(failover_url, "SELECT count(*) FROM %s" % outbox)[0][0] == 0,
                   90, what="the outbox drained on the new primary")
    made = {n for (n,) in query(failover_url, "SELECT n FROM %s" % biz)}

    def all_handled():
        return {n for (n,) in query(failover_url, "SELECT n FROM %s" % p.table())} >= made

    svc.wait_until(all_handled, 60, what="every committed event handled")
    rows = [n for (n,) in query(failover_url, "SELECT n FROM %s" % p.table())]
    got = set(rows)

    # synchronous replication: whatever COMMIT confirmed is on the new primary, and its event
    # was handled (lost 0)
    assert writer.committed <= made, sorted(writer.committed - made)[:20]
    assert writer.committed <= got, sorted(writer.committed - got)[:20]
    # an event is handled iff its transaction committed on the surviving history: none of a
    # rolled-back, failed or lost transaction (a COMMIT whose answer was lost counts as
    # committed exactly when its business row is there)
    assert got == made, (sorted(got - made)[:20], sorted(made - got)[:20])
    assert not got & writer.rolled_back and not got & writer.failed
    # the inbox skipped every redelivery and every republished duplicate: handled once each
    assert len(rows) == len(got), len(rows) - len(got)

    # both reconnected by themselves, without a restart
    assert consumer.running() and relay.running()
    clog, rlog = p.log(consumer), p.log(relay)
    assert clog.count("consuming '") >= 2, clog
    assert "database: reconnected" in rlog, rlog
    assert p.stop(relay) == 0 and p.stop(consumer) == 0
    print("committed %d, rolled back %d, commit unknown %d, failed %d, handled %d"
          % (len(writer.committed), len(writer.rolled_back), len(writer.unknown),
             len(writer.failed), len(got)))


def set_read_only(url, on):
    conn = svc.pg_connect(url)
    try:
        cur = conn.cursor()
        cur.execute("ALTER SYSTEM %s default_transaction_read_only" % ("SET" if on else "RESET")
                    + (" = on" if on else ""))
        cur.execute("SELECT pg_reload_conf()")
    finally:
        conn.close()


@pytest.mark.asynchronous
def test_a_fenced_read_only_old_primary_is_left_for_the_promoted_standby(project, broker,
                                                                          failover_urls):
    """The old primary stays up but read-only (fenced: default_transaction_read_only) and the
    standby is promoted: the relay, whose claim is refused with SQLSTATE 25006, and the
    consumer, whose handler's INSERT is, both reconnect and find the new primary."""
    failover_url, standby_url = failover_urls
    p = project.setup_consumer(RECORDER, dict(svc.RELAY_SETTINGS, **{
        "DATABASE_URL": failover_url, "RECONNECT_MAX_DELAY": 1}))
    r = p.run("migrate", timeout=60)
    assert r.returncode == 0, r.stderr
    consumer = p.start_consumer()
    relay = p.start_relay()
    outbox = p.table("outbox")
    insert = ("INSERT INTO %s (exchange, routing_key, body) SELECT %%s, 'ev.made', "
              "json_build_object('n', g)::text FROM generate_series(%%s, %%s) g" % outbox)
    conn = svc.pg_connect()
    svc.pg_query(conn, insert, (p.exchange(), 1, 20))
    conn.close()
    count = lambda url: query(url, "SELECT count(*) FROM %s" % p.table())[0][0]
    svc.wait_until(lambda: count(standby_url) == 20, 60, what="20 handled, on the standby too")
    try:
        set_read_only(None, True)
        standby("promote")
        conn = svc.pg_connect(standby_url)
        svc.pg_query(conn, insert, (p.exchange(), 21, 40))
        conn.close()
        svc.wait_until(lambda: count(standby_url) == 40, 60,
                       what="the events written on the new primary handled there")
    finally:
        set_read_only(None, False)
    assert query(standby_url, "SELECT count(DISTINCT n) FROM %s" % p.table())[0][0] == 40
    assert consumer.running() and relay.running()
    clog, rlog = p.log(consumer), p.log(relay)
    # its claim (which deletes what was confirmed) is refused on a read-only server
    assert "read-only transaction" in rlog and "database: reconnected" in rlog, rlog
    assert "SQLSTATE 25006" in clog and clog.count("consuming '") >= 2, clog
    assert p.stop(relay) == 0 and p.stop(consumer) == 0
