"""Logs for operators (issue 13, item 3): LOG_FORMAT = "json" writes one JSON object per line
with ts, level, component, msg and the structured fields; text lines stay one line per event
(libpq's multi-line errors included); an unroutable event dropped by the relay is a warning
naming its exchange and routing key; no password reaches a line in either format."""
import json
import os
import re
from urllib.parse import urlsplit

import svc
from svc import sql

HANDLER = """
local svccomm = require "svccomm"
local db = svccomm.db

svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  if body.fail then
    error("boom on attempt " .. msg.attempt .. "\\nsecond line")
  end
  if body.permanent then
    svccomm.permanent_error("not for us: " .. body.n)
  end
  if body.bad_sql then
    db.query("INSERT INTO $TABLE (n) VALUES ($1)", "not a number")
  end
  db.query("INSERT INTO $TABLE (n, attempt, rk) VALUES ($1, $2, $3)", body.n, msg.attempt, rk)
  svccomm.log.info("order stored", { order = body.n, evil = "a\\nb\\27[31m", msg = "forged" })
end)
"""

JSON_ENV = {"SVCCOMM_LOG_FORMAT": "json", "SVCCOMM_LOG_LEVEL": "debug"}


def passwords():
    """The passwords of the servers' URLs (the tests must have some to look for)."""
    pw = [urlsplit(os.environ[k]).password for k in ("SVCCOMM_BROKER_URL", "SVCCOMM_DATABASE_URL")]
    assert all(pw), "the servers' URLs carry passwords"
    return pw


def json_lines(log):
    """Every line of log parsed as a JSON object (a line that does not parse fails the test)."""
    out = []
    for line in log.splitlines():
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise AssertionError("not a JSON line: %r (%s)" % (line, e)) from None
        assert isinstance(obj, dict), line
        for key in ("ts", "level", "component", "msg"):
            assert isinstance(obj.get(key), str), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", obj["ts"]), line
        assert obj["level"] in ("debug", "info", "warning", "error"), line
        out.append(obj)
    return out


def no_secret(log):
    for pw in passwords():
        assert pw not in log


def test_consumer_json_lines_parse_and_carry_the_fields(project, broker):
    p = project.setup_consumer(HANDLER, {"RETRY_DELAYS": [0.2], "MAX_ATTEMPTS": 2})
    p.start_consumer(env=JSON_ENV, wait_consuming=False)
    svc.wait_until(lambda: "consuming" in p.log(), 30, what="consuming")
    ex, q = p.exchange(), p.queue()
    broker.publish(ex, "order.ok", {"n": 1}, message_id='m-ok\n"forged"\x1b')
    broker.publish(ex, "order.fail", {"n": 2, "fail": True}, message_id="m-fail")
    broker.publish(ex, "order.perm", {"n": 3, "permanent": True}, message_id="m-perm")
    broker.publish(ex, "order.sql", {"n": 4, "bad_sql": True}, message_id="m-sql")
    svc.wait_until(lambda: broker.count(q + ".dlq") == 3, 30, what="three dead letters")
    svc.wait_until(lambda: '"dead_lettered":3,' in p.log(), 20,
                   what="a stats line that counts the dead letters")
    assert p.stop() == 0
    log = p.log()
    lines = json_lines(log)
    no_secret(log)

    def find(pred, what):
        got = [o for o in lines if pred(o)]
        assert got, "no %s line in:\n%s" % (what, log)
        return got

    # every message carries its queue, exchange, routing key, message id and attempt
    received = find(lambda o: o["msg"].startswith("message ") and "received" in o["msg"],
                    "received")
    ok = [o for o in received if o["routing_key"] == "order.ok"][0]
    assert ok["level"] == "debug" and ok["component"] == "consumer"
    assert ok["message_id"] == 'm-ok\n"forged"\x1b'  # escaped on the line, intact once parsed
    assert (ok["queue"], ok["exchange"], ok["attempt"]) == (q, ex, 1)
    assert '\\n\\"forged\\"\\u001b' in log
    handled = find(lambda o: "handled by" in o["msg"], "handled")
    assert handled[0]["message_id"] == ok["message_id"] and handled[0]["handler"].startswith("rec:")

    # a failing handler: retried once, then dead-lettered, with handler and error
    retry = find(lambda o: o.get("message_id") == "m-fail" and "retry in" in o["msg"], "retry")
    assert len(retry) == 1
    r = retry[0]
    assert r["level"] == "warning" and r["attempt"] == 1 and r["retry_in_ms"] == 200
    assert r["routing_key"] == "order.fail" and r["exchange"] == ex
    assert r["handler"].startswith("rec:") and "boom on attempt 1" in r["error"]
    dead = {o["message_id"]: o for o in find(lambda o: "dead-lettered" in o["msg"], "dead letter")}
    assert set(dead) == {"m-fail", "m-perm", "m-sql"}, log
    assert dead["m-fail"]["reason"] == "max-attempts" and dead["m-fail"]["attempt"] == 2
    assert "boom on attempt 2" in dead["m-fail"]["error"]
    assert dead["m-perm"]["reason"] == "permanent-error"
    assert "not for us: 3" in dead["m-perm"]["error"]
    # the database refused the handler's statement: its error is the line's error field
    assert dead["m-sql"]["reason"] == "max-attempts"
    assert "invalid input syntax" in dead["m-sql"]["error"], dead["m-sql"]
    for o in dead.values():
        assert o["level"] == "warning" and o["queue"] == q and o["handler"].startswith("rec:")

    # the handler's own line (svccomm.log) is JSON too, its fields members, "msg" kept apart
    mine = find(lambda o: o["component"] == "handler" and o["msg"] == "order stored", "handler")
    assert mine[0]["message_id"] == ok["message_id"]
    assert (mine[0]["order"], mine[0]["evil"], mine[0]["msg_"]) == ("1", "a\nb\x1b[31m", "forged")

    # the stats line: numbers, in the shared format
    stats = find(lambda o: o["msg"] == "stats", "stats")[-1]
    assert stats["component"] == "consumer" and stats["level"] == "info"
    assert (stats["received"], stats["ok"], stats["dead_lettered"]) == (6, 1, 3), stats
    assert isinstance(stats["rate_per_s"], (int, float))
    assert sql("SELECT n FROM %s" % p.table()) == [(1,)]


def test_consumer_text_stats_line_has_the_shared_format(project, broker):
    p = project.setup_consumer(HANDLER)
    p.start_consumer()
    broker.publish(p.exchange(), "order.ok", {"n": 1})
    p.proc.wait_for_log(r"\[consumer\] stats received=1 ok=1 ", 20)
    assert p.stop() == 0
    assert re.search(r"^\S+Z info \[consumer\] stats received=1 ok=1 retried=0 dead_lettered=0 "
                     r"unrouted=0 duplicates=0 skipped=0 dlq_refused=0 rate_per_s=[\d.]+$",
                     p.log(), re.M), p.log()


def test_relay_json_lines_unroutable_park_and_publish(make_project, broker):
    s = svc.suffix()
    ex, lost, q = "logs_ok_" + s, "logs_noroute_" + s, "logs_q_" + s
    broker.exchange(ex)
    broker.exchange(lost)
    broker.queue(q, [ex])
    p = make_project().setup_relay({"PUBLISHER_UNROUTABLE": "drop"})
    ids = p.outbox_insert([
        {"exchange": ex, "routing_key": "ev.one", "body": '"one"'},
        {"exchange": lost, "routing_key": "ev.nobody\nforged", "body": '"lost"'},
        {"exchange": "x" * 300, "routing_key": "a", "body": '"long name"'},
    ])
    relay = p.start("runpublisher", env=JSON_ENV)
    svc.wait_until(lambda: p.outbox_count("parked_at IS NULL") == 0, 20, what="rows settled")
    svc.wait_until(lambda: '"msg":"stats"' in p.log(relay), 20, what="a stats line")
    assert p.stop(relay) == 0
    log = p.log(relay)
    lines = json_lines(log)
    no_secret(log)

    drop = [o for o in lines if o["msg"].startswith("unroutable event dropped")]
    assert len(drop) == 1, log
    d = drop[0]
    assert d["level"] == "warning"
    assert (d["exchange"], d["routing_key"], d["event_id"]) == (lost, "ev.nobody\nforged", ids[1])
    assert "NO_ROUTE" in d["error"]

    pub = [o for o in lines if o["msg"].startswith("event ") and "published" in o["msg"]]
    one = [o for o in pub if o["event_id"] == ids[0]]
    assert one and one[0]["exchange"] == ex and one[0]["routing_key"] == "ev.one", log
    assert one[0]["message_id"] == "pubtest:%d" % ids[0]

    park = [o for o in lines if "parked" in o["msg"] and o.get("event_id") == ids[2]]
    assert len(park) == 1 and park[0]["level"] == "error" and "255" in park[0]["error"], log

    stats = [o for o in lines if o["msg"] == "stats"][-1]
    assert stats["component"] == "publisher"
    assert (stats["confirmed"], stats["returned"], stats["parked"]) == (1, 1, 1), stats
    assert isinstance(stats["oldest_due_s"], (int, float)) and stats["backlog"] == 0


def test_relay_text_unroutable_warning_names_exchange_and_routing_key(make_project, broker):
    s = svc.suffix()
    lost = "logs_noroute_" + s
    broker.exchange(lost)
    p = make_project().setup_relay({"PUBLISHER_UNROUTABLE": "drop"})
    (row,) = p.outbox_insert([{"exchange": lost, "routing_key": "ev.nobody", "body": "1"}])
    relay = p.start_relay()
    svc.wait_until(lambda: p.outbox_count() == 0, 15, what="the row dropped")
    relay.wait_for_log(r"\[publisher\] stats published=1 confirmed=\d+ returned=1 ", 20)
    assert p.stop(relay) == 0
    want = (r'^\S+Z warning \[publisher\] unroutable event dropped \(PUBLISHER_UNROUTABLE = '
            r'"drop"\): 312 NO_ROUTE \(exchange "%s", routing key "ev.nobody"\), outbox row %d$'
            % (re.escape(lost), row))
    assert re.search(want, p.log(relay), re.M), p.log(relay)


def refused_database_url():
    """The test database's URL (password included) on a port where nothing listens: libpq's
    error for it spans two lines ("... Connection refused" and "Is the server running...")."""
    u = urlsplit(os.environ["SVCCOMM_DATABASE_URL"])
    return u._replace(netloc="%s:%s@127.0.0.1:1" % (u.username, u.password)).geturl()


def test_libpq_two_line_error_is_one_text_line_and_one_json_line(make_project):
    for fmt in ("text", "json"):
        p = make_project().setup_relay()
        p.write_settings(p.settings, DATABASE_URL=refused_database_url())
        relay = p.start("runpublisher", env={"SVCCOMM_LOG_FORMAT": fmt})
        relay.wait_for_log("Is the server running", 20)
        p.stop(relay)
        log = p.log(relay)
        no_secret(log)
        lines = [x for x in log.splitlines() if "Connection refused" in x]
        assert lines, log
        # the second line of libpq's message is on the same line, after " | "
        assert all("Connection refused | Is the server running" in x for x in lines), log
        assert not any(x.lstrip().startswith("Is the server running") for x in log.splitlines())
        if fmt == "json":
            objs = json_lines(log)
            assert any("Connection refused | Is the server" in o["msg"] for o in objs), log
        else:
            assert all(re.match(r"\S+Z (warning|error) \[publisher\] ", x) for x in lines), log


def test_bad_log_format_is_a_configuration_error(project):
    project.write_settings(LOG_FORMAT="xml")
    r = project.run("check")
    assert r.returncode == 2
    assert "LOG_FORMAT" in r.stderr and '"json"' in r.stderr, r.stderr
    project.write_settings(LOG_FORMAT="json")
    r = project.run("check", env={"SVCCOMM_LOG_FORMAT": "yaml"})
    assert r.returncode == 2
    assert "LOG_FORMAT (from SVCCOMM_LOG_FORMAT)" in r.stderr, r.stderr


COMMIT_TRAP = """
local svccomm = require "svccomm"
local db = svccomm.db
svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  db.query("INSERT INTO $TABLE (n, attempt) VALUES ($1, $2)", body.n, msg.attempt)
  if not msg.redelivered then
    -- violates a deferred constraint: PostgreSQL refuses the COMMIT with ERROR and DETAIL
    db.query("INSERT INTO $TABLE_trap (id) VALUES (1)")
  end
end)
"""


def test_failed_commit_with_detail_is_one_line_in_both_formats(make_project, broker):
    for fmt in ("text", "json"):
        p = make_project().setup_consumer(COMMIT_TRAP)
        trap = p.table() + "_trap"
        sql("CREATE TABLE %s (id int, CONSTRAINT %s_u UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)"
            % (trap, trap))
        sql("INSERT INTO %s VALUES (1)" % trap)
        p.start_consumer(env={"SVCCOMM_LOG_FORMAT": fmt})
        broker.publish(p.exchange(), "x", {"n": 1})
        svc.wait_until(lambda: p.record_count() == 1, 20, what="the redelivered message")
        assert p.stop() == 0
        log = p.log()
        no_secret(log)
        lines = [x for x in log.splitlines() if "duplicate key value" in x]
        assert lines, log
        # libpq's "ERROR: ...\nDETAIL: Key (id)=(1) already exists." on one line
        assert all(re.search(r"duplicate key value violates unique constraint \\?\"%s_u\\?\" "
                             r"\| DETAIL:  Key \(id\)=\(1\) already exists\." % trap, x)
                   for x in lines), log
        assert not any(x.startswith("DETAIL") for x in log.splitlines()), log
        if fmt == "json":
            back = [o for o in json_lines(log) if "go back to the queue" in o["msg"]]
            assert back and back[0]["queue"] == p.queue(), log
            assert back[0]["error"].startswith("COMMIT: ERROR:  duplicate key value"), back
