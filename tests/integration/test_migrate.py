"""`svccomm migrate` against the real local PostgreSQL, inspected with psycopg2.

Each test migrates into its own schema (<prefix>_s, dropped by the project's cleanup), so the
bookkeeping table svccomm_migrations, the tables, indexes, trigger and function are all the
test's own. The outbox and inbox tables carry the prefix too, so the NOTIFY channel (the bare
outbox table name) is unique to the test.
"""
import hashlib
import os
import re
import select
import subprocess
import time

import pytest

import svc

OUTBOX_COLUMNS = [
    # name, type, nullable, default (None: no default; else a substring of it)
    ("id", "bigint", "NO", "nextval("),
    ("created_at", "timestamp with time zone", "NO", "clock_timestamp()"),
    ("send_after", "timestamp with time zone", "NO", "now()"),
    ("exchange", "text", "NO", None),
    ("routing_key", "text", "NO", None),
    ("body", "text", "NO", None),
    ("message_id", "text", "YES", None),
    ("correlation_id", "text", "YES", None),
    ("headers", "jsonb", "YES", None),
    ("tags", "jsonb", "YES", None),
    ("attempts", "integer", "NO", "0"),
    ("last_error", "text", "YES", None),
    ("parked_at", "timestamp with time zone", "YES", None),
]

INBOX_COLUMNS = [
    ("queue", "text", "NO", None),
    ("message_id", "text", "NO", None),
    ("received_at", "timestamp with time zone", "NO", "now()"),
]


class Names:
    def __init__(self, project):
        self.schema = project.table("s")
        self.outbox = project.table("outbox")
        self.inbox = project.table("inbox")


@pytest.fixture
def names(project):
    n = Names(project)
    project.write_settings(OUTBOX_TABLE="%s.%s" % (n.schema, n.outbox),
                           INBOX_TABLE="%s.%s" % (n.schema, n.inbox))
    return n


def q(project, sql, params=None):
    return svc.pg_query(project.pg(), sql, params)


def migrate_ok(project, names, applied=None):
    """Runs migrate; with applied=N, checks it says it applied N (0: nothing to apply)."""
    r = project.run("migrate")
    assert r.returncode == 0, r.stderr
    tables = "outbox %s.%s and inbox %s.%s" % (names.schema, names.outbox, names.schema,
                                               names.inbox)
    done = "migrated: nothing to apply, %s are up to date\n" % tables
    if applied is None:
        assert r.stdout == done or re.fullmatch(r"migrated: applied [1-9][0-9]* migrations? to "
                                                + re.escape(tables) + "\n", r.stdout), r.stdout
    elif applied == 0:
        assert r.stdout == done
    else:
        assert r.stdout == "migrated: applied %d migration%s to %s\n" % (
            applied, "" if applied == 1 else "s", tables)
        assert "up to date" not in r.stdout + r.stderr
    return r


def columns(project, schema, table):
    rows = q(project, """
        SELECT column_name, data_type, is_nullable, column_default
          FROM information_schema.columns
         WHERE table_schema = %s AND table_name = %s
         ORDER BY ordinal_position""", (schema, table))
    return rows


def assert_columns(rows, expected):
    assert [r[:3] for r in rows] == [e[:3] for e in expected]
    for (name, _, _, default), (_, _, _, want) in zip(rows, expected):
        if want is None:
            assert default is None, (name, default)
        else:
            assert default is not None and want in default, (name, default)


def indexes(project, schema, table):
    return dict(q(project, "SELECT indexname, indexdef FROM pg_indexes "
                           "WHERE schemaname = %s AND tablename = %s", (schema, table)))


def assert_one_correct_schema(project, n):
    """Tables, indexes, trigger, function and bookkeeping exactly as sql/00*.sql define
    them, each exactly once."""
    assert_columns(columns(project, n.schema, n.outbox), OUTBOX_COLUMNS)
    assert_columns(columns(project, n.schema, n.inbox), INBOX_COLUMNS)

    ob = indexes(project, n.schema, n.outbox)
    assert sorted(ob) == sorted([n.outbox + "_pkey", n.outbox + "_due_idx",
                                 n.outbox + "_tags_idx"])
    assert ob[n.outbox + "_pkey"].endswith("USING btree (id)")
    assert ob[n.outbox + "_due_idx"].endswith(
        "USING btree (send_after, id) WHERE (parked_at IS NULL)")
    assert ob[n.outbox + "_tags_idx"].endswith(
        "USING gin (tags jsonb_path_ops) WHERE (tags IS NOT NULL)")
    ib = indexes(project, n.schema, n.inbox)
    assert sorted(ib) == sorted([n.inbox + "_pkey", n.inbox + "_received_at_idx"])
    assert ib[n.inbox + "_pkey"].endswith("USING btree (queue, message_id)")
    assert ib[n.inbox + "_received_at_idx"].endswith("USING btree (received_at)")

    # One trigger: AFTER INSERT, FOR EACH STATEMENT, calling <schema>.<outbox>_notify().
    triggers = q(project, """
        SELECT t.tgname, t.tgtype, p.proname, pn.nspname
          FROM pg_trigger t
          JOIN pg_class c ON c.oid = t.tgrelid
          JOIN pg_namespace cn ON cn.oid = c.relnamespace
          JOIN pg_proc p ON p.oid = t.tgfoid
          JOIN pg_namespace pn ON pn.oid = p.pronamespace
         WHERE cn.nspname = %s AND c.relname = %s AND NOT t.tgisinternal""",
                 (n.schema, n.outbox))
    # tgtype bits: 1 ROW, 2 BEFORE, 4 INSERT, 8 DELETE, 16 UPDATE
    assert triggers == [(n.outbox + "_notify", 4, n.outbox + "_notify", n.schema)]

    # Every table of the schema is known, and each migration is recorded once.
    tables = sorted(r[0] for r in q(project, "SELECT tablename FROM pg_tables WHERE "
                                             "schemaname = %s", (n.schema,)))
    assert tables == sorted([n.outbox, n.inbox, "svccomm_migrations"])
    recorded = q(project, 'SELECT table_name, version FROM "%s".svccomm_migrations '
                          "ORDER BY version" % n.schema)
    assert recorded == [("%s.%s" % (n.schema, n.outbox), "001_outbox"),
                        ("%s.%s" % (n.schema, n.inbox), "002_inbox"),
                        ("%s.%s" % (n.schema, n.outbox), "003_outbox_notify_channel"),
                        ("%s.%s" % (n.schema, n.outbox), "004_outbox_functions"),
                        ("%s.%s" % (n.schema, n.outbox), "005_outbox_notify_setting"),
                        ("%s.%s" % (n.schema, n.outbox), "006_outbox_notify_auto")]


def assert_one_notification_per_transaction(project, n):
    """The trigger works: two rows inserted in one transaction wake a sleeping relay once, on
    the channel named after the schema and the outbox table (003; 001 used the bare name)."""
    channel = "%s.%s" % (n.schema, n.outbox)
    if len(channel.encode()) > 63:  # over PostgreSQL's channel limit
        channel = "svccomm_" + hashlib.md5(channel.encode()).hexdigest()
    listener = project.pg()
    svc.pg_query(listener, 'LISTEN "%s"' % n.outbox)
    svc.pg_query(listener, 'LISTEN "%s"' % channel)
    # as a sleeping relay: holds the wake lock (006), so writers in the default mode notify
    svc.pg_query(listener, "SELECT pg_advisory_lock(1937138551, hashtext(%s))", (channel,))
    writer = svc.pg_connect()
    try:
        writer.autocommit = False
        with writer.cursor() as cur:
            for key in ("a", "b"):
                cur.execute('INSERT INTO "%s"."%s" (exchange, routing_key, body) '
                            "VALUES ('ex', %%s, '{}')" % (n.schema, n.outbox), (key,))
        writer.commit()
    finally:
        writer.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not listener.notifies:
        select.select([listener], [], [], 0.2)
        listener.poll()
    time.sleep(0.3)
    listener.poll()
    assert [(x.channel, x.payload) for x in listener.notifies] == [(channel, "")]


def test_migrate_twice_leaves_one_correct_schema(project, names):
    migrate_ok(project, names)
    assert_one_correct_schema(project, names)
    migrate_ok(project, names)
    assert_one_correct_schema(project, names)
    assert_one_notification_per_transaction(project, names)


def test_migrate_says_what_it_applied_and_only_then_up_to_date(project, names):
    r = migrate_ok(project, names, applied=6)
    assert "applied 001_outbox" in r.stderr and "applied 002_inbox" in r.stderr, r.stderr
    r = migrate_ok(project, names, applied=0)
    assert "applied" not in r.stdout + r.stderr
    q(project, 'DROP TABLE "%s"."%s"' % (names.schema, names.inbox))
    q(project, "DELETE FROM \"%s\".svccomm_migrations WHERE version = '002_inbox'"
      % names.schema)
    migrate_ok(project, names, applied=1)


def test_migrate_keeps_existing_rows(project, names):
    migrate_ok(project, names)
    q(project, 'INSERT INTO "%s"."%s" (exchange, routing_key, body) VALUES (%%s, %%s, %%s)'
      % (names.schema, names.outbox), ("user", "update.base", '{"x":1}'))
    migrate_ok(project, names)
    rows = q(project, 'SELECT exchange, routing_key, body, attempts FROM "%s"."%s"'
             % (names.schema, names.outbox))
    assert rows == [("user", "update.base", '{"x":1}', 0)]


def test_four_migrations_at_once_all_succeed_and_leave_one_correct_schema(project, names):
    env = project.env()
    procs = [subprocess.Popen([svc.svccomm_bin(), "migrate"], cwd=project.dir, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = [(p.wait(60), *p.communicate()) for p in procs]
    for code, out, err in results:
        assert code == 0, err
        assert out.startswith("migrated: "), out
    assert_one_correct_schema(project, names)
    assert_one_notification_per_transaction(project, names)


def test_migrate_upgrades_a_database_that_has_only_the_first_migration(project, names):
    migrate_ok(project, names)
    q(project, 'DROP TABLE "%s"."%s"' % (names.schema, names.inbox))
    q(project, "DELETE FROM \"%s\".svccomm_migrations WHERE version = '002_inbox'"
      % names.schema)
    migrate_ok(project, names)
    assert_one_correct_schema(project, names)


@pytest.mark.parametrize("key", ["OUTBOX_TABLE", "INBOX_TABLE"])
def test_injected_table_name_is_refused_with_2_and_no_sql_runs(project, key):
    victim = project.table("victim")
    q(project, 'CREATE TABLE "%s" (x int)' % victim)
    bad = '%s"; DROP TABLE %s; --' % (project.table("outbox"), victim)
    project.write_settings({key: bad})
    r = project.run("migrate")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    shown = bad if len(bad) <= 60 else bad[:57] + "..."  # long values are cut in messages
    assert r.stderr == (
        'svccomm: ./settings.lua: %s: expected a table name ([A-Za-z_][A-Za-z0-9_]*, at most 63 '
        'characters, optionally schema.table), got "%s"\n' % (key, shown.replace('"', '\\"')))
    # The victim is intact, and nothing with the test's prefix was created besides it.
    mine = q(project, "SELECT relname FROM pg_class WHERE left(relname, %s) = %s",
             (len(project.prefix), project.prefix))
    assert mine == [(victim,)]
    assert q(project, "SELECT nspname FROM pg_namespace WHERE left(nspname, %s) = %s",
             (len(project.prefix), project.prefix)) == []
    assert q(project, "SELECT count(*) FROM pg_class WHERE relname LIKE %s",
             ('%' + project.prefix + '%"%',)) == [(0,)]


def test_migrate_without_database_url_exits_2(project):
    project.write_settings(DATABASE_URL=None)
    r = project.run("migrate")
    assert r.returncode == 2
    assert r.stderr == ("svccomm migrate: ./settings.lua: DATABASE_URL: required by migrate, "
                        "not set\n")


def test_migrate_uses_the_database_url_env_override(project, names):
    # The file points at a port where nothing listens; the environment wins.
    project.write_settings(DATABASE_URL="postgresql://svccomm@127.0.0.1:1/svccomm",
                           OUTBOX_TABLE="%s.%s" % (names.schema, names.outbox),
                           INBOX_TABLE="%s.%s" % (names.schema, names.inbox))
    r = project.run("migrate", env={"SVCCOMM_DATABASE_URL": os.environ[
        "SVCCOMM_DATABASE_URL"]})
    assert r.returncode == 0, r.stderr
    assert_one_correct_schema(project, names)


def test_unreachable_database_is_a_runtime_failure_with_the_password_masked(project):
    project.write_settings(DATABASE_URL="postgresql://svccomm:pw-s3cret@127.0.0.1:1/svccomm")
    r = project.run("migrate")
    assert r.returncode == 1
    assert r.stderr.startswith("svccomm migrate: cannot connect to "
                               "postgresql://svccomm:****@127.0.0.1:1/svccomm: ")
    assert "s3cret" not in r.stderr + r.stdout
