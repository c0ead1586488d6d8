"""Per-aggregate order of events written by consumer handlers and by ordinary writers (issue 17
item 2): both take a per-aggregate sequence number under a row lock and publish in the same
transaction; the relay, started late, drains the backlog in id order; the events it sends must
come out in sequence order per aggregate."""
import json
import random
import threading

import pytest

import svc
from svc import sql

AGGREGATES = 4
HANDLED = 240
WRITTEN = 240

HANDLER = """
local svccomm = require "svccomm"
local db = svccomm.db

svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  local n = math.tointeger(body.n)
  local r = db.query("UPDATE $COUNTERS SET seq = seq + 1 WHERE agg = $1 RETURNING seq", body.agg)
  svccomm.publish_aggregate_event { aggregate = body.agg, event_type = "seq",
    payload = { seq = math.tointeger(r[1].seq), src = "handler" } }
  db.query("INSERT INTO $TABLE (n, rk) VALUES ($1, $2)", n, rk)
end)
"""


def ordinary_writer(outbox, counters, aggs, n, errors, use_function):
    """Commits n events, each with its aggregate's next sequence number, the way any SQL
    client writes the outbox: nextval at insert, or the outbox's publish function."""
    conn = svc.pg_connect()
    conn.autocommit = False
    rnd = random.Random(7)
    try:
        with conn.cursor() as cur:
            for _ in range(n):
                agg = rnd.choice(aggs)
                cur.execute("UPDATE %s SET seq = seq + 1 WHERE agg = %%s RETURNING seq" % counters,
                            (agg,))
                seq = cur.fetchone()[0]
                if use_function:
                    cur.execute('SELECT "%s_publish_event"(%%s, %%s, %%s)' % outbox,
                                (agg, "seq", json.dumps({"seq": seq, "src": "writer"})))
                    conn.commit()
                    continue
                cur.execute(
                    "INSERT INTO %s (id, exchange, routing_key, body) "
                    "SELECT n.id, %%s, 'seq', '{\"eventId\":\"' || n.id || '\",\"eventType\":\"seq\","
                    "\"aggregate\":' || to_json(%%s::text) || ',\"payload\":' || %%s || '}' "
                    "FROM (SELECT nextval(pg_get_serial_sequence(%%s, 'id')) AS id) n"
                    % outbox, (agg, agg, json.dumps({"seq": seq, "src": "writer"}), outbox))
                conn.commit()
    except Exception as e:  # reported by the test
        errors.append(e)
    finally:
        conn.close()


@pytest.mark.parametrize("writer_kind", ["insert", "function"])
def test_handler_and_writer_events_keep_per_aggregate_order(project, broker, writer_kind):
    """writer_kind: the ordinary writer inserts rows itself, or calls the SQL function of
    issue 20 (mixed Lua and SQL writers)."""
    counters = project.table("counters")
    outbox = project.table("outbox")
    aggs = [project.exchange("agg%d" % i) for i in range(AGGREGATES)]
    handler = HANDLER.replace("$COUNTERS", counters)
    p = project.setup_consumer(handler, {"PREFETCH_COUNT": 50, "CONSUMER_COMMIT_INTERVAL": 0.2})
    r = p.run("migrate", timeout=60)
    assert r.returncode == 0, r.stderr
    sql("CREATE TABLE %s (agg text PRIMARY KEY, seq bigint NOT NULL)" % counters)
    for a in aggs:
        sql("INSERT INTO %s VALUES (%%s, 0)" % counters, a)
    p.start_consumer()

    errors = []
    writer = threading.Thread(target=ordinary_writer,
                              args=(outbox, counters, aggs, WRITTEN, errors, writer_kind == "function"))
    writer.start()
    rnd = random.Random(3)
    for i in range(HANDLED):
        broker.publish(p.exchange(), "go", {"n": i, "agg": rnd.choice(aggs)})
    writer.join(120)
    assert not errors, errors
    svc.wait_until(lambda: p.record_count() == HANDLED, 60, what="every message handled")
    assert p.stop() == 0
    assert p.outbox_count() == HANDLED + WRITTEN

    # the relay drains the backlog in id order
    for a in aggs:
        broker.exchange(a)
    sink = project.queue("sink")
    broker.queue(sink, bind_to=aggs)
    p.setup_relay()
    p.start_relay()
    got = broker.collect(sink, HANDLED + WRITTEN, timeout=60)

    last, violations, seen = {}, [], set()
    for method, _props, body in got:
        env = json.loads(body)
        agg, seq = method.exchange, env["payload"]["seq"]
        if (agg, seq) in seen:
            continue  # a duplicate (at least once) is not a reordering
        seen.add((agg, seq))
        if seq < last.get(agg, 0):
            violations.append((agg, env["eventId"], seq, last[agg]))
        last[agg] = max(seq, last.get(agg, 0))
    assert len(seen) == HANDLED + WRITTEN
    srcs = {json.loads(b)["payload"]["src"] for _m, _p, b in got}
    assert srcs == {"handler", "writer"}
    assert violations == [], "%d per-aggregate order violations, first: %s" % (
        len(violations), violations[:5])
    sql("DELETE FROM svccomm_migrations WHERE table_name = %s", outbox)
