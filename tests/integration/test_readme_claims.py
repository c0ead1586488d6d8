"""The README's claims that did not hold (issue 22): inbox retention keeps pace, poll-mode
schedules run on time, a leaked Lua state is replaced, table arguments refuse unknown keys,
`check --connect`, NOTIFY channels per schema."""
import os
import re
import time

import svc
from svc import RECORDER, sql


def make_inbox(p, **settings):
    inbox = p.table("inbox")
    sql("CREATE TABLE %s (queue text NOT NULL, message_id text NOT NULL, "
        "received_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (queue, message_id))"
        % inbox)
    sql("CREATE INDEX ON %s (received_at)" % inbox)
    p.write_settings(p.settings, INBOX=True, INBOX_TABLE=inbox, **settings)
    return inbox


def test_inbox_cleanup_removes_25000_expired_rows_in_a_short_run(project, broker):
    """Cleanup once removed at most 20,000 rows a minute: 5,000 of these were left after the
    first pass, and the inbox outgrew it above ~333 msg/s."""
    p = project.setup_consumer(RECORDER)
    inbox = make_inbox(p, INBOX_RETENTION=3600)
    sql("INSERT INTO %s (queue, message_id, received_at) SELECT %%s, 'old-' || g, "
        "now() - interval '2 hours' FROM generate_series(1, 25000) g" % inbox, p.queue())
    sql("INSERT INTO %s (queue, message_id) VALUES (%%s, 'recent')" % inbox, p.queue())
    p.start_consumer()
    broker.publish(p.exchange(), "a", {"n": 1}, message_id="m1")
    svc.wait_until(lambda: sql("SELECT count(*) FROM %s" % inbox)[0][0] == 2, 15,
                   what="every expired inbox row removed")
    assert p.record_count() == 1
    assert p.stop() == 0


def test_poll_mode_sends_a_scheduled_row_on_time(project, broker):
    """With PUBLISHER_POLL_INTERVAL = 30 a row scheduled after the last poll went out at the
    next poll, up to 30 s late."""
    p = project.setup_relay({"PUBLISHER_MODE": "poll", "PUBLISHER_POLL_INTERVAL": 30})
    ex = "agg_" + svc.suffix()
    q = "q_" + svc.suffix()
    broker.exchange(ex)
    broker.queue(q, [ex])
    p.start_relay()
    time.sleep(1.0)  # the first poll is over
    due = sql("INSERT INTO %s (exchange, routing_key, body, send_after) VALUES "
              "(%%s, 'ev', '{}', now() + interval '2 seconds') "
              "RETURNING extract(epoch from send_after)" % p.table("outbox"), ex)[0][0]
    got = broker.collect(q, 1, timeout=12, settle=0)
    late = time.time() - float(due)
    assert len(got) == 1, p.log()
    assert late < 6, "sent %.1f s after due" % late
    assert p.stop() == 0


LEAKER = """
local svccomm = require "svccomm"
svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  if body.leak then -- a handler bug: keeps everything it ever saw in a global list
    local n = 0
    while true do n = n + 1; LEAK = { LEAK, "x" .. n } end
  end
  local work = string.rep("y", 256 * 1024) .. body.n -- what any handler needs: some memory
  svccomm.db.query("INSERT INTO $TABLE (n, attempt, rk) VALUES ($1, $2, $3)", body.n, msg.attempt, rk)
end)
"""


def test_lua_state_that_leaked_to_the_memory_limit_is_replaced(project, broker):
    """A state that leaked to LUA_MEMORY_LIMIT_MB was kept: every later message failed with
    the memory error and was dead-lettered."""
    p = project.setup_consumer(LEAKER, settings={"LUA_MEMORY_LIMIT_MB": 16, "MAX_ATTEMPTS": 1})
    proc = p.start_consumer()
    broker.publish(p.exchange(), "a", {"leak": True, "n": 0})
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == 1, 20, what="the leak dead-lettered")
    for n in (1, 2, 3):
        broker.publish(p.exchange(), "a", {"n": n})
    svc.wait_until(lambda: p.record_count() == 3 or broker.count(p.queue() + ".dlq") > 1, 20,
                   what="the good messages settled")
    assert sorted(r[0] for r in p.records()) == [1, 2, 3]
    assert broker.count(p.queue() + ".dlq") == 1  # only the leaking one
    assert "Lua state replaced" in proc.log()
    assert p.stop() == 0


def test_a_lua_state_that_cannot_be_rebuilt_stops_the_worker_and_loses_nothing(project, broker):
    """When the apps no longer load (broken on disk since the start), a replaced state would
    have no handlers: the worker stops (exit 1) and the messages wait in the queue."""
    p = project.setup_consumer(LEAKER, settings={"LUA_MEMORY_LIMIT_MB": 16, "MAX_ATTEMPTS": 1})
    proc = p.start_consumer()
    p.write_app("rec", "this is not Lua (")
    broker.publish(p.exchange(), "a", {"leak": True, "n": 0})
    assert proc.wait(30) == 1, proc.log()
    assert "the Lua state could not be rebuilt" in proc.log()
    broker.publish(p.exchange(), "a", {"n": 1})
    svc.wait_until(lambda: broker.count(p.queue()) == 1, 10, what="the good message waiting")
    assert broker.count(p.queue() + ".dlq") == 1  # only the leaking one
    assert p.record_count() == 0


def test_check_connect_reports_migrations_inbox_and_broker_objects(project, broker):
    """`check` contacted no server: a database never migrated or a missing queue showed only
    at the first start of runconsumer."""
    p = project
    ex = p.exchange("orders")
    inbox = p.table("inbox")
    p.write_settings(EXCHANGES=[ex], BINDS=[[ex, "#"]], INBOX=True, INBOX_TABLE=inbox)
    assert p.run("check").returncode == 0  # offline by default: no server contacted
    r = p.run("check", "--connect")
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"migrations: \d+ not applied \(001_outbox, 002_inbox.*\): run `svccomm "
                     r"migrate`", r.stdout), r.stdout
    assert "queue '%s': missing: declared by runconsumer at start" % p.queue() in r.stdout
    assert "exchange '%s': missing: declared by runconsumer at start" % ex in r.stdout
    assert p.run("migrate").returncode == 0
    sql("INSERT INTO %s (queue, message_id, received_at) SELECT 'q', 'm' || g, "
        "now() - interval '1 hour' FROM generate_series(1, 50) g" % inbox)
    sql("ANALYZE %s" % inbox)
    broker.exchange(ex)
    broker.queue(p.queue(), [ex])
    r = p.run("check", "--connect")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "migrations: up to date" in r.stdout
    assert "inbox: about 50 rows, oldest 36" in r.stdout  # 3600 s and a little
    assert "queue '%s': exists" % p.queue() in r.stdout
    assert "exchange '%s': exists" % ex in r.stdout
    r = p.run("check", "--connect", env={"SVCCOMM_DATABASE_URL": "postgresql://svccomm@127.0.0.1:1/x"})
    assert r.returncode == 3 and "database: cannot connect" in r.stdout


def test_check_connect_fails_when_do_not_declare_lacks_the_queue(project):
    p = project
    p.write_settings(DO_NOT_DECLARE=True, DATABASE_URL=None)
    r = p.run("check", "--connect")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "missing: DO_NOT_DECLARE is set, runconsumer will refuse to start" in r.stdout


def listen_for(channels, action):
    """The (channel, payload) notifications that `action()` causes on `channels`."""
    import select
    listener = svc.pg_connect()
    listener.autocommit = True
    try:
        for ch in channels:
            svc.pg_query(listener, 'LISTEN "%s"' % ch)
        action()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            select.select([listener], [], [], 0.2)
            listener.poll()
        return sorted({(n.channel, n.payload) for n in listener.notifies})
    finally:
        listener.close()


def test_same_table_name_in_two_schemas_notify_different_channels(project, broker):
    """The NOTIFY channel was the bare table name: a.t and b.t woke each other's relay."""
    p = project
    s1, s2, name = p.table("s1"), p.table("s2"), "outbox"
    for s in (s1, s2):
        p.write_settings(dict(svc.RELAY_SETTINGS, OUTBOX_TABLE="%s.%s" % (s, name)))
        assert p.run("migrate").returncode == 0
    # svccomm.outbox_notify = on: notify although no relay sleeps on the wake lock (006)
    got = listen_for([name, "%s.%s" % (s1, name), "%s.%s" % (s2, name)], lambda: sql(
        "SET svccomm.outbox_notify = on; INSERT INTO %s.%s (exchange, routing_key, body) "
        "VALUES ('x', 'k', '{}')" % (s2, name)))
    assert got == [("%s.%s" % (s2, name), "")]
    # the relay of s1 listens on its own channel: with a 30 s poll, a row goes out at once
    ex = "agg_" + svc.suffix()
    q = "q_" + svc.suffix()
    broker.exchange(ex)
    broker.queue(q, [ex])
    p.write_settings(dict(svc.RELAY_SETTINGS, OUTBOX_TABLE="%s.%s" % (s1, name),
                          PUBLISHER_POLL_INTERVAL=30))
    relay = p.start_relay()
    relay.wait_for_log("relay for table", 10)
    time.sleep(1.0)
    sql("INSERT INTO %s.%s (exchange, routing_key, body) VALUES (%%s, 'k', '{}')" % (s1, name), ex)
    assert len(broker.collect(q, 1, timeout=8, settle=0)) == 1, p.log()
    assert "falling back to polling" not in p.log()
    assert p.stop() == 0


def test_misspelt_payload_key_fails_the_handler_and_writes_no_event(project, broker):
    """publish_aggregate_event{paylod = ...} once published an event with payload {}."""
    p = project.setup_consumer("""
        local svccomm = require "svccomm"
        svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
          svccomm.publish_aggregate_event { aggregate = "user", event_type = "seen", paylod = body }
        end)
        """, settings={"MAX_ATTEMPTS": 1}, use_db=False)
    p.write_settings(p.settings, DATABASE_URL=os.environ["SVCCOMM_DATABASE_URL"])
    assert p.run("migrate").returncode == 0
    p.start_consumer()
    broker.publish(p.exchange(), "a", {"n": 1})
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == 1, 20, what="dead-lettered")
    (props, body), = broker.get_all(p.queue() + ".dlq")
    assert "unknown key paylod (did you mean payload?)" in props.headers["x-svccomm-error"]
    assert p.outbox_count() == 0
    assert p.stop() == 0
