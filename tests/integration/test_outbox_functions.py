"""Publishing from other clients (issue 20): the SQL functions `svccomm migrate` installs next to
the outbox table ("<table>_publish_event", "_cancel_events", "_send_command"), called from psql
and from Python, against the real relay, consumer and PostgreSQL."""
import json
import os
import subprocess
import time

import psycopg2
import pytest

import svc
from svc import sql
from test_outbox_write import PRELUDE, lua

PAYLOAD = {"id": 7, "name": 'Ann "q" \\ \u00e9 \U0001F600 <b>', "list": ["a", 2, True],
           "nested": {"x": [1, {"y": "z"}], "empty": {}}, "n": -12.5}

RECORDER = """
local svccomm = require "svccomm"
local cjson = require "cjson"
svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  svccomm.db.query("INSERT INTO $TABLE (rk, body, info) VALUES ($1, $2, $3)", rk,
    cjson.encode(body), msg.message_id)
end)
"""


def fn(project, name):
    return '"%s_%s"' % (project.table("outbox"), name)


def psql(sql_text, **variables):
    """Runs sql_text through psql (its variables interpolated), stops at the first error."""
    args = ["psql", os.environ["SVCCOMM_DATABASE_URL"], "-X", "-q", "-t", "-A",
            "-v", "ON_ERROR_STOP=1"]
    for k, v in variables.items():
        args += ["-v", "%s=%s" % (k, v)]
    return subprocess.run(args + ["-f", "-"], input=sql_text, capture_output=True, text=True,
                          timeout=30, check=False)


@pytest.fixture
def system(project):
    """Settings for the relay and a consumer that records every event of exchange(); the
    test migrates. The migration records are removed afterwards."""
    p = project.setup_consumer(RECORDER, {"CONSUMER_COMMIT_INTERVAL": 0.1,
                                          "INBOX_TABLE": project.table("inbox")})
    yield p
    sql("DELETE FROM svccomm_migrations WHERE table_name = ANY(%s)",
        [p.table("outbox"), p.table("inbox")])


def previous_migrate(p):
    """What the previous version's migrate did: migrations 001 and 002 (the same files, with
    the table names substituted as migrate does for unqualified names), recorded in
    svccomm_migrations."""
    names = {"outbox": p.table("outbox"), "inbox": p.table("inbox")}
    conn = svc.pg_connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS svccomm_migrations (table_name text NOT NULL,"
                        " version text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),"
                        " PRIMARY KEY (table_name, version))")
            for version, kind in (("001_outbox", "outbox"), ("002_inbox", "inbox")):
                text = (svc.ROOT / "sql" / (version + ".sql")).read_text()
                for k, n in names.items():
                    text = (text.replace("{{%s_prefix}}" % k, "")
                            .replace("{{%s_name}}" % k, n)
                            .replace("{{%s}}" % k, '"%s"' % n))
                assert "{{" not in text, version
                cur.execute(text)
                cur.execute("INSERT INTO svccomm_migrations (table_name, version) "
                            "VALUES (%s, %s)", (names[kind], version))
    finally:
        conn.close()


def migrate(p):
    r = p.run("migrate", timeout=60)
    assert r.returncode == 0, r.stderr
    return r


def test_psql_python_and_lua_events_are_relayed_and_handled_alike(system):
    p = project = system
    migrate(p)
    agg = p.exchange()
    res = lua(project, PRELUDE + """
local payload = cjson.decode(os.getenv("PAYLOAD"))
payload.nested.empty = {}
print(db:transaction(function()
  return svccomm.publish_aggregate_event(os.getenv("AGG"), "from.lua", payload)
end))
""".replace('os.getenv("AGG")', svc.lua_string(agg)).replace(
        'os.getenv("PAYLOAD")', svc.lua_string(json.dumps(PAYLOAD))))
    assert res.returncode == 0, res.stderr
    lua_id = int(res.stdout.strip())
    r = psql("SELECT %s(:'agg', 'from.psql', :'payload'::jsonb);" % fn(p, "publish_event"),
             agg=agg, payload=json.dumps(PAYLOAD))
    assert r.returncode == 0, r.stderr
    psql_id = int(r.stdout.strip())
    conn = svc.pg_connect()
    try:
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute("SELECT %s(%%s, %%s, %%s::jsonb)" % fn(p, "publish_event"),
                        (agg, "from.python", json.dumps(PAYLOAD)))
            py_id = cur.fetchone()[0]
        conn.commit()
    finally:
        conn.close()
    assert lua_id < psql_id < py_id
    bodies = {rk: body for rk, body in sql("SELECT routing_key, body FROM %s" % p.table("outbox"))}

    p.start_consumer()  # bound before the relay sends: an unroutable event is dropped
    p.start("runpublisher")
    svc.wait_until(lambda: p.record_count() == 3, 30, what="the three events handled")
    handled = {rk: (json.loads(body), mid) for rk, body, mid in
               sql("SELECT rk, body, info FROM %s" % p.table())}
    ids = {"from.lua": lua_id, "from.psql": psql_id, "from.python": py_id}
    for rk, (env, mid) in handled.items():
        assert json.loads(bodies[rk]) == env  # the handler saw the row's body
        assert list(json.loads(bodies[rk]).keys()) == [
            "eventId", "eventTime", "eventType", "aggregate", "payload"]
        assert env["eventId"] == str(ids[rk])
        assert mid == "%s:%d" % (p.settings["APP_ID"], ids[rk])
        assert len(env["eventTime"]) == len("2026-01-01T00:00:00.000000Z")
        assert env["eventTime"].endswith("Z")
        assert (env["aggregate"], env["eventType"], env["payload"]) == (agg, rk, PAYLOAD)
    assert sorted(handled) == sorted(ids)


def test_scheduled_cancel_rollback_and_commands(system):
    p = system
    migrate(p)
    agg = p.exchange()
    conn = svc.pg_connect()
    conn.autocommit = False
    publish, cancel = fn(p, "publish_event"), fn(p, "cancel_events")
    try:
        with conn.cursor() as cur:
            # scheduled, two tag sets; the first is cancelled (values compared as strings)
            cur.execute("SELECT %s(%%s, 'later', '{\"n\": 1}', now() + interval '2 s', "
                        "'{\"order\": 1, \"vip\": true}')" % publish, (agg,))
            cur.execute("SELECT %s(%%s, 'later', '{\"n\": 2}', now() + interval '2 s', "
                        "'{\"order\": \"2\"}')" % publish, (agg,))
            conn.commit()
            cur.execute("SELECT %s(%%s, 'later', '{\"order\": \"1\", \"vip\": \"true\"}')"
                        % cancel, (agg,))
            assert cur.fetchone()[0] == 1
            conn.commit()
            # a rolled-back call publishes nothing
            cur.execute("SELECT %s(%%s, 'rolled.back', '{}')" % publish, (agg,))
            conn.rollback()
            # a command: arguments + meta.expired_time
            cur.execute("SELECT %s(%%s, 'charge', '{\"amount\": 5, \"meta\": {\"src\": \"x\"}}', "
                        "'2100-01-02T03:04:05.5Z')" % fn(p, "send_command"), (agg,))
            conn.commit()
    finally:
        conn.close()
    assert p.outbox_count() == 2
    (body,), = [(b,) for rk, b in sql("SELECT routing_key, body FROM %s" % p.table("outbox"))
                if rk == "charge"]
    assert json.loads(body) == {"amount": 5, "meta": {"src": "x",
                                                      "expired_time": "2100-01-02T03:04:05.500000Z"}}

    p.start_consumer()  # bound before the relay sends: an unroutable event is dropped
    p.start("runpublisher")
    svc.wait_until(lambda: p.record_count() == 2, 30, what="the command and the scheduled event")
    got = {rk: json.loads(body) for rk, body, _ in sql("SELECT rk, body, info FROM %s" % p.table())}
    assert got["later"]["payload"] == {"n": 2}
    assert got["charge"]["amount"] == 5
    time.sleep(1)
    assert p.record_count() == 2 and p.outbox_count() == 0


BAD = [
    ("publish_event", "(NULL, 'e', '{}')", "aggregate"),
    ("publish_event", "('', 'e', '{}')", "aggregate"),
    ("publish_event", "('a', '', '{}')", "event_type"),
    ("publish_event", "(repeat('a', 256), 'e', '{}')", "longer than 255 bytes"),
    ("publish_event", "('a', repeat('\u00e9', 128), '{}')", "longer than 255 bytes"),
    ("publish_event", "('a', 'e', '{}', now() - interval '1 minute')", "in the past"),
    ("publish_event", "('a', 'e', '{}', now() + interval '1 h', '[1]')", "tags"),
    ("publish_event", "('a', 'e', '{}', NULL, '{\"k\": {}}')", "tags"),
    ("cancel_events", "('a', 'e', '{}')", "non-empty"),
    ("cancel_events", "('a', 'e', NULL)", "non-empty"),
    ("send_command", "('s', 'c', '[1]')", "must be a JSON object"),
    ("send_command", "('s', 'c', '{\"meta\": 3}')", "arguments.meta"),
    ("send_command", "('s', '', '{}')", "command"),
    ("send_command", "('s', 'c', '{}', now() - interval '1 s')", "in the past"),
]


def test_bad_input_raises_22023_and_writes_nothing(project, outbox):
    conn = project.pg()
    for name, args, words in BAD:
        with pytest.raises(psycopg2.Error) as e:
            svc.pg_query(conn, "SELECT %s%s" % (fn(project, name), args))
        assert e.value.pgcode == "22023", (name, args, e.value)
        assert words in str(e.value), (name, args, e.value)
    assert project.outbox_count() == 0


def test_migration_from_the_previous_schema_keeps_the_rows(system):
    """A table made by the previous version (migrations 001 and 002; SVCCOMM_PREVIOUS_BIN runs
    a build of it instead of applying the two files) with
    rows in it: the new migrate adds the functions and the switchable NOTIFY, and old and new
    rows are relayed in id order."""
    p = system
    previous = os.environ.get("SVCCOMM_PREVIOUS_BIN")
    if previous:  # a build of the previous version, when one is at hand
        old = svc.run([previous, "migrate"], cwd=p.dir, env=p.env(), timeout=60)
        assert old.returncode == 0, old.stderr
    else:
        previous_migrate(p)
    ids = p.outbox_insert_many(p.exchange(), 3, routing_key="old.row")
    r = migrate(p)
    for version in ("003_outbox_notify_channel", "004_outbox_functions",
                    "005_outbox_notify_setting"):
        assert "applied %s" % version in r.stderr + r.stdout, r.stderr
    (new_id,), = sql("SELECT %s(%%s, 'new.row', '{\"a\": 1}')" % fn(p, "publish_event"),
                     p.exchange())
    assert new_id > max(ids)
    assert [r[0] for r in p.outbox_rows("id")] == ids + [new_id]
    p.start_consumer()  # bound before the relay sends: an unroutable event is dropped
    p.start("runpublisher")
    svc.wait_until(lambda: p.record_count() == 4, 30, what="old and new rows handled")
    assert [r[0] for r in sql("SELECT rk FROM %s ORDER BY id" % p.table())] == \
        ["old.row"] * 3 + ["new.row"]


def test_the_functions_write_the_wire_format_of_svccomm_wire_format(project):
    """svccomm.wire_format = 'django' (session, role or database) makes the functions write the
    Python library's bodies, as WIRE_FORMAT = "django" does for the Lua API; the default is
    svccomm's envelope; any other value is refused."""
    p = project
    p.write_settings(INBOX_TABLE=p.table("inbox"))
    migrate(p)
    try:
        r = psql("SET svccomm.wire_format = 'django';"
                 "SELECT %s('orders', 'order.created', '{\"a\": 1}');"
                 "SELECT %s('billing', 'charge', '{\"n\": 2}', now() + interval '1 hour');"
                 "RESET svccomm.wire_format;"
                 "SELECT %s('orders', 'order.created', '{\"a\": 1}');"
                 % (fn(p, "publish_event"), fn(p, "send_command"), fn(p, "publish_event")))
        assert r.returncode == 0, r.stderr
        dj_id, cmd_id, sv_id = (int(x) for x in r.stdout.split())
        rows = dict(sql("SELECT id, body FROM %s" % p.table("outbox")))
        dj, cmd, sv = (json.loads(rows[i]) for i in (dj_id, cmd_id, sv_id))
        assert sorted(dj) == ["aggregate", "eventId", "event_time", "event_type", "payload"]
        assert dj["eventId"] == dj_id and dj["event_type"] == "order.created"
        assert len(dj["event_time"]) == len("2026-12-01T10:00:00.123Z")
        assert sorted(cmd["meta"]) == ["expiredTime"] and cmd["meta"]["expiredTime"].endswith("Z")
        assert sorted(sv) == ["aggregate", "eventId", "eventTime", "eventType", "payload"]
        assert sv["eventId"] == str(sv_id)
        r = psql("SET svccomm.wire_format = 'pickle'; SELECT %s('orders', 'x', '{}');"
                 % fn(p, "publish_event"))
        assert r.returncode != 0 and "svccomm.wire_format" in r.stderr, r.stderr
    finally:
        sql("DELETE FROM svccomm_migrations WHERE table_name = ANY(%s)",
            [p.table("outbox"), p.table("inbox")])
