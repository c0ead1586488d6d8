"""JSON numbers reach handlers as users expect (issue 19): integers that fit in int64 as Lua
integers, exactly, through the consumer, a bigint column and the outbox round trip."""
import svc

BIG = 9007199254740993  # 2^53 + 1: a double cannot hold it


def big_table(p):
    name = p.table("big")
    svc.sql("CREATE TABLE %s (seq bigserial, id bigint, kind text)" % name)
    return name


def big_rows(p, name):
    return svc.sql("SELECT id, kind FROM %s ORDER BY seq" % name)


HANDLER = """
local svccomm = require "svccomm"
local db = svccomm.db
svccomm.message_router.consumer("$EXCHANGE", "in", function(rk, body)
  db.query("INSERT INTO $BIG (id, kind) VALUES ($1, $2)", body.id,
    math.type(body.id) .. " " .. math.type(body.n) .. " user:" .. body.n)
end)
"""


def test_big_integer_id_reaches_the_handler_exactly_and_a_bigint_column(project, broker):
    p = project.setup_consumer(HANDLER.replace("$BIG", project.table("big")))
    big = big_table(p)
    p.start_consumer()
    broker.publish(p.exchange(), "in", b'{"id": 9007199254740993, "n": 42}')
    svc.wait_until(lambda: len(big_rows(p, big)) == 1, 20, what="the message handled")
    assert big_rows(p, big) == [(BIG, "integer integer user:42")]
    assert p.stop() == 0


ROUND_TRIP = """
local svccomm = require "svccomm"
local db = svccomm.db
svccomm.message_router.consumer("$EXCHANGE", "in", function(rk, body)
  db.query("INSERT INTO $BIG (id, kind) VALUES ($1, 'in')", body.id)
  svccomm.publish_aggregate_event { aggregate = "$AGG", event_type = "out",
    payload = { id = body.id, min = body.min } }
end)
svccomm.message_router.consumer("$AGG", "out", svccomm.event_consumer(function(payload, meta)
  db.query("INSERT INTO $BIG (id, kind) VALUES ($1, $2)", payload.id,
    "out " .. math.type(payload.id) .. " " .. string.format("%d", payload.min))
end))
"""


def test_bigint_id_survives_handler_outbox_relay_consumer(project, broker):
    agg = project.exchange("agg")
    code = ROUND_TRIP.replace("$BIG", project.table("big")).replace("$AGG", agg)
    p = project.setup_consumer(code, settings={
        "EXCHANGES": [project.exchange(), agg], "BINDS": [[project.exchange(), "in"], [agg, "out"]]})
    r = p.run("migrate", timeout=60)
    assert r.returncode == 0, r.stderr
    big = big_table(p)
    consumer = p.start_consumer()
    relay = p.start("runpublisher")
    broker.publish(p.exchange(), "in",
                   b'{"id": 9007199254740993, "min": -9223372036854775808}')
    svc.wait_until(lambda: len(big_rows(p, big)) == 2, 30, what="the event consumed")
    assert big_rows(p, big) == [(BIG, "in"), (BIG, "out integer -9223372036854775808")]
    assert p.stop(relay) == 0
    assert p.stop(consumer) == 0


PYTHON_EVENT = b'{"eventId": 5, "payload": {"case": "x", "userId": 7, "firstName": "Ann"}, ' \
    b'"aggregate": "pyevents", "event_time": "2026-12-01T01:51:19.138Z", "event_type": "plain.evt"}'

PY_HANDLERS = """
local svccomm = require "svccomm"
local db = svccomm.db
svccomm.message_router.consumer("$EXCHANGE", "plain.evt", function(rk, body)
  db.query("INSERT INTO $BIG (id, kind) VALUES ($1, $2)", body.eventId,
    "raw " .. math.type(body.eventId) .. " " .. math.type(body.payload.userId))
end)
svccomm.message_router.consumer("$EXCHANGE", "big.evt", svccomm.event_consumer(function(payload, meta)
  db.query("INSERT INTO $BIG (id, kind) VALUES ($1::int8, 'event ' || $1)", meta.event_id)
end))
"""


def test_python_library_event_arrives_with_an_integer_event_id(project, broker):
    p = project.setup_consumer(PY_HANDLERS.replace("$BIG", project.table("big")))
    big = big_table(p)
    p.start_consumer()
    # the bytes the Python library 2.6 puts on the wire (/work/shared/wire-python-2.6.md)
    broker.publish(p.exchange(), "plain.evt", PYTHON_EVENT, content_type="text/json")
    broker.publish(p.exchange(), "big.evt",
                   PYTHON_EVENT.replace(b'"eventId": 5', b'"eventId": 9007199254740993'),
                   content_type="text/json")
    svc.wait_until(lambda: len(big_rows(p, big)) == 2, 20, what="both events handled")
    assert sorted(big_rows(p, big)) == [(5, "raw integer integer"),
                                        (BIG, "event %d" % BIG)]
    assert p.stop() == 0
