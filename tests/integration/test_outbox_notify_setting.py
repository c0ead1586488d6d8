"""The insert trigger's NOTIFY follows the PostgreSQL setting svccomm.outbox_notify
(sql/005_outbox_notify_setting.sql, sql/006_outbox_notify_auto.sql): by default (auto) a writer
notifies only while a relay sleeps on the table's wake lock; on always notifies, off never
(a relay in PUBLISHER_MODE = "poll" needs none); it applies to a session, a role or a
database; a value that is not auto, on or off is refused. Against the real PostgreSQL, relay
and broker."""
import hashlib
import os
import select
import time
import uuid

import psycopg2
import pytest

import svc
from svc import sql
from test_outbox_write import PRELUDE, lua

NOTIFY = ["on", "ON", "true", "True", "1", " on "]
AUTO = [None, "", "auto", "AUTO", " Auto "]
QUIET = ["off", "OFF", "Off", "false", "FALSE", "0", " off "]
BAD = ["of", "offf", "yes", "no", "2", "disabled", "on off", "automatic"]
WAKE_CLASS = 1937138551  # the wake lock's first key: 0x73766377, "svcw"


def channel_of(table):
    """The wake-up channel of 003_outbox_notify_channel.sql: <schema>.<table>."""
    (name,), = sql("SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n "
                   "ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)", '"%s"' % table)
    if len(name.encode()) > 63:
        name = "svccomm_" + hashlib.md5(name.encode()).hexdigest()
    return name


def try_wake_lock(conn, table):
    """pg_try_advisory_lock on the table's wake lock, as a relay takes it before it sleeps."""
    (got,), = svc.pg_query(conn, "SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                           (WAKE_CLASS, channel_of(table)))
    return got


class SleepingRelay:
    """A session that holds the table's wake lock in exclusive mode, as a relay does while it
    sleeps (src/relay/claim.c): writers in auto mode then notify."""

    def __init__(self, project, table):
        self.conn = project.pg()
        svc.pg_query(self.conn, "SELECT pg_advisory_lock(%s, hashtext(%s))",
                     (WAKE_CLASS, channel_of(table)))

    def wake(self):
        svc.pg_query(self.conn, "SELECT pg_advisory_unlock_all()")


def wake_lock_holders(table):
    """(mode, granted) of every session's hold on the table's wake lock."""
    return sql("SELECT mode, granted FROM pg_locks WHERE locktype = 'advisory' AND classid = "
               "%s::int8::oid AND objid = (hashtext(%s)::int8 & 4294967295)::oid AND "
               "objsubid = 2 ORDER BY mode", WAKE_CLASS, channel_of(table))


class Listener:
    """A session that LISTENs on the outbox's channels (the schema-qualified one and the bare
    table name of 001) and on a marker channel of its own."""

    def __init__(self, project, table):
        self.conn = project.pg()
        self.table = table
        self.channel = channel_of(table)
        self.marker = project.table("marker")
        self.seen = 0
        for name in (self.channel, table, self.marker):
            svc.pg_query(self.conn, 'LISTEN "%s"' % name)

    def since(self, timeout=5.0):
        """The channels of the outbox notifications that arrived since the previous call, once
        every transaction committed before this call has been delivered: a NOTIFY on the marker
        channel, sent now from a session of its own, comes after all of them (one queue, in
        commit order)."""
        token = uuid.uuid4().hex
        sql("SELECT pg_notify(%s, %s)", self.marker, token)
        deadline = time.monotonic() + timeout
        while True:
            self.conn.poll()
            got = self.conn.notifies[self.seen:]
            marks = [i for i, n in enumerate(got) if (n.channel, n.payload) == (self.marker, token)]
            if marks:
                break
            assert time.monotonic() < deadline, "the marker notification did not come back"
            select.select([self.conn], [], [], 0.1)
        before = got[:marks[0]]
        self.seen += marks[0] + 1
        assert all(n.channel != self.marker for n in before), before
        return [n.channel for n in before]


def set_notify(cur, value):
    if value is None:
        cur.execute("RESET svccomm.outbox_notify")
    else:
        cur.execute("SELECT set_config('svccomm.outbox_notify', %s, false)", (value,))


def insert(cur, table, key="k"):
    cur.execute('INSERT INTO "%s" (exchange, routing_key, body) VALUES (%%s, %%s, %%s) '
                "RETURNING id" % table, ("ex", key, "{}"))
    return cur.fetchone()[0]


def test_on_notifies_off_does_not_auto_only_while_a_relay_sleeps_rows_written_either_way(
        project, outbox):
    listener = Listener(project, outbox)
    writer = project.pg()
    keys = []
    with writer.cursor() as cur:
        for sleeping in (False, True):
            relay = SleepingRelay(project, outbox) if sleeping else None
            for value in NOTIFY + AUTO + QUIET:
                set_notify(cur, value)
                key = "value:%r sleeping:%s" % (value, sleeping)
                insert(cur, outbox, key)
                keys.append(key)
                notifies = value in NOTIFY or (value in AUTO and sleeping)
                assert listener.since() == ([listener.channel] if notifies else []), key
            if relay:
                relay.wake()
                assert wake_lock_holders(outbox) == []
    assert [r[0] for r in sql('SELECT routing_key FROM "%s" ORDER BY id' % outbox)] == keys


def test_an_auto_writer_holds_the_wake_lock_shared_until_its_transaction_ends(project, outbox):
    """A writer that skipped its NOTIFY keeps a relay from taking the lock until it committed
    (the relay then claims and sees its rows); one that starts while a relay waits for the lock
    notifies, and so does its whole transaction once it has."""
    listener = Listener(project, outbox)
    writer = svc.pg_connect()
    writer.autocommit = False
    relay = project.pg()
    try:
        with writer.cursor() as cur:
            insert(cur, outbox, "quiet")
            assert wake_lock_holders(outbox) == [("ShareLock", True)]
            assert try_wake_lock(relay, outbox) is False
        writer.commit()
        assert listener.since() == []
        assert wake_lock_holders(outbox) == []
        assert try_wake_lock(relay, outbox) is True
        with writer.cursor() as cur:
            insert(cur, outbox, "loud")
        svc.pg_query(relay, "SELECT pg_advisory_unlock_all()")
        with writer.cursor() as cur:
            insert(cur, outbox, "loud too, and pending already")
        writer.commit()
        assert listener.since() == [listener.channel]
    finally:
        writer.close()
    assert project.outbox_count() == 3


def test_set_local_applies_to_one_transaction(project, outbox):
    listener = Listener(project, outbox)
    SleepingRelay(project, outbox)  # unset = auto: notify
    writer = svc.pg_connect()
    writer.autocommit = False
    try:
        with writer.cursor() as cur:
            cur.execute("SET LOCAL svccomm.outbox_notify = off")
            insert(cur, outbox, "quiet")
            insert(cur, outbox, "quiet")
        writer.commit()
        assert listener.since() == []
        with writer.cursor() as cur:
            insert(cur, outbox, "loud")
        writer.commit()
        assert listener.since() == [listener.channel]
    finally:
        writer.close()
    assert project.outbox_count() == 3


@pytest.mark.parametrize("value", BAD)
def test_a_bad_value_raises_22023_naming_the_setting_and_writes_nothing(project, outbox, value):
    listener = Listener(project, outbox)
    writer = project.pg()
    with writer.cursor() as cur:
        set_notify(cur, value)
        with pytest.raises(psycopg2.Error) as e:
            insert(cur, outbox)
    assert e.value.pgcode == "22023", e.value
    assert "svccomm.outbox_notify" in str(e.value) and repr(value) in str(e.value), e.value
    assert project.outbox_count() == 0
    assert listener.since() == []


def test_the_sql_functions_follow_the_setting(project, outbox):
    """<table>_publish_event and <table>_send_command insert into the outbox: the same trigger,
    the same setting; a bad value makes them raise 22023 and write nothing."""
    publish = '"%s_publish_event"' % outbox
    command = '"%s_send_command"' % outbox
    calls = ["SELECT %s('user', 'update.base', '{\"id\": 7}')" % publish,
             "SELECT %s('user', 'remind', '{}', now() + interval '1 hour', '{\"u\": 7}')"
             % publish,
             "SELECT %s('billing', 'charge', '{\"n\": 1}')" % command]
    listener = Listener(project, outbox)
    SleepingRelay(project, outbox)  # unset = auto: notify
    writer = project.pg()
    values = (("off", []), ("0", []), (None, [listener.channel]), ("on", [listener.channel]))
    with writer.cursor() as cur:
        for value, expected in values:
            set_notify(cur, value)
            for call in calls:
                cur.execute(call)
                assert listener.since() == expected, (value, call)
        assert project.outbox_count() == len(values) * len(calls)
        set_notify(cur, "nope")
        for call in calls:
            with pytest.raises(psycopg2.Error) as e:
                cur.execute(call)
            assert e.value.pgcode == "22023" and "svccomm.outbox_notify" in str(e.value), e.value
    assert project.outbox_count() == len(values) * len(calls)
    assert listener.since() == []


def test_the_lua_api_follows_the_setting_of_its_session(project, outbox):
    listener = Listener(project, outbox)
    SleepingRelay(project, outbox)  # unset = auto: notify
    res = lua(project, PRELUDE + """
local function publish()
  return db:transaction(function()
    return svccomm.publish_aggregate_event("user", "update.base", { id = 1 })
  end)
end
db:exec("SET svccomm.outbox_notify = off")
publish()
db:exec("RESET svccomm.outbox_notify")
publish()
""")
    assert res.returncode == 0, res.stderr
    assert project.outbox_count() == 2
    # both transactions committed before since(): the first sent nothing, the second one
    assert listener.since() == [listener.channel]


def test_a_role_in_database_setting_applies_to_its_new_sessions(project, outbox):
    """ALTER ROLE ... IN DATABASE ... SET svccomm.outbox_notify = off (the same catalog as
    ALTER DATABASE ... SET, without touching the other sessions of the database): a new session
    of that role writes without a NOTIFY; SET in the session still wins."""
    role = project.table("writer")
    password = uuid.uuid4().hex
    (db,), = sql("SELECT current_database()")
    sql('CREATE ROLE "%s" LOGIN PASSWORD %%s' % role, password)
    try:
        (seq,), = sql("SELECT pg_get_serial_sequence(%s, 'id')", '"%s"' % outbox)
        sql('GRANT SELECT, INSERT ON "%s" TO "%s"' % (outbox, role))
        sql('GRANT USAGE ON SEQUENCE %s TO "%s"' % (seq, role))
        sql('ALTER ROLE "%s" IN DATABASE "%s" SET svccomm.outbox_notify = off' % (role, db))
        listener = Listener(project, outbox)
        SleepingRelay(project, outbox)  # unset = auto: notify
        conn = psycopg2.connect(os.environ["SVCCOMM_DATABASE_URL"], user=role, password=password,
                                connect_timeout=5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW svccomm.outbox_notify")
                assert cur.fetchone() == ("off",)
                insert(cur, outbox, "quiet")
                cur.execute('SELECT "%s_publish_event"(%%s, %%s, %%s)' % outbox,
                            ("user", "quiet", "{}"))
                assert listener.since() == []
                cur.execute("SET svccomm.outbox_notify = on")
                insert(cur, outbox, "loud")
                assert listener.since() == [listener.channel]
        finally:
            conn.close()
        # the other roles' sessions are untouched
        insert_conn = project.pg()
        with insert_conn.cursor() as cur:
            insert(cur, outbox, "other role")
        assert listener.since() == [listener.channel]
    finally:
        sql('DROP OWNED BY "%s"' % role)
        sql('DROP ROLE "%s"' % role)
    assert sql("SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
               "WHERE r.rolname = %s", role) == [(0,)]
    assert project.outbox_count() == 4


def test_a_poll_mode_relay_publishes_rows_written_without_notify(project, broker):
    """The recipe of "Commit throughput and NOTIFY": writers off, the relay polling often."""
    p = project.setup_relay({"PUBLISHER_MODE": "poll", "PUBLISHER_POLL_INTERVAL": 0.05})
    ex, q = p.exchange(), p.queue("rec")
    broker.exchange(ex)
    broker.queue(q, [ex])
    table = p.table("outbox")
    relay = p.start_relay()
    listener = Listener(p, table)
    conn = svc.pg_connect()
    conn.autocommit = False
    try:
        ids = []
        with conn.cursor() as cur:
            cur.execute("SET svccomm.outbox_notify = off")
            for i in range(3):
                cur.execute('INSERT INTO "%s" (exchange, routing_key, body) VALUES '
                            "(%%s, 'quiet', %%s) RETURNING id" % table, (ex, '{"n": %d}' % i))
                ids.append(cur.fetchone()[0])
                conn.commit()
            cur.execute('SELECT "%s_publish_event"(%%s, %%s, %%s)' % table,
                        (ex, "quiet.fn", '{"n": 3}'))
            ids.append(cur.fetchone()[0])
            conn.commit()
    finally:
        conn.close()
    got = broker.collect(q, 4, timeout=10)
    assert sorted(svc.row_id(props.message_id) for _, props, _ in got) == ids, p.log(relay)
    svc.wait_until(lambda: p.outbox_count() == 0, 10, what="published rows deleted")
    assert listener.since() == []  # the relay learnt of them by polling alone
    assert p.stop(relay) == 0
