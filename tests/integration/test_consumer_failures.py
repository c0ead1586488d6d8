"""runconsumer: failures never loop and never crash (issue 3, scenarios 2, 3, 4, 6)."""
import json
import time

import svc
from svc import RECORDER, sql


def test_fails_twice_then_handled_on_third_attempt_after_the_delays(project, broker):
    p = project.setup_consumer(RECORDER, {"RETRY_DELAYS": [0.5, 1.0], "MAX_ATTEMPTS": 4})
    p.start_consumer()
    t0 = time.time()
    broker.publish(p.exchange(), "job", {"n": 7, "fail_until": 3}, message_id="job-7",
                   headers={"h": "kept"})
    svc.wait_until(lambda: p.record_count() == 1, 20, what="the third attempt to succeed")
    elapsed = time.time() - t0
    n, attempt, rk, _, info = p.records()[0]
    assert (n, attempt, rk) == (7, 3, "job")  # routed by the original routing key
    assert json.loads(info)["h"] == "kept"    # headers survive the retries
    assert elapsed >= 1.4                     # 0.5 s + 1.0 s held by the broker
    assert broker.count(p.queue() + ".dlq") == 0
    log = p.log()
    assert log.count("failed in") == 2
    assert "retry in 500 ms" in log and "retry in 1000 ms" in log
    assert p.stop() == 0


def test_always_failing_message_lands_once_in_the_dlq_without_hot_loop(project, broker):
    p = project.setup_consumer(RECORDER, {"RETRY_DELAYS": [0.3], "MAX_ATTEMPTS": 3})
    p.start_consumer()
    broker.publish(p.exchange(), "bad.job", {"n": 1, "fail": True}, message_id="doomed")
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == 1, 20, what="the dead letter")
    time.sleep(2.0)  # would show a hot loop: deliveries keep coming
    assert p.log().count("failed in") == 3  # exactly MAX_ATTEMPTS deliveries
    dead = broker.get_all(p.queue() + ".dlq")
    assert len(dead) == 1
    props, body = dead[0]
    h = props.headers
    assert json.loads(body) == {"n": 1, "fail": True}
    assert props.message_id == "doomed"
    assert h["x-svccomm-reason"] == "max-attempts"
    assert h["x-svccomm-attempts"] == "3"
    assert h["x-svccomm-exchange"] == p.exchange()
    assert h["x-svccomm-routing-key"] == "bad.job"
    assert h["x-svccomm-handler"].startswith("rec:") and "consumers.lua" in h["x-svccomm-handler"]
    assert "handler failed on attempt 3" in h["x-svccomm-error"]
    assert "traceback" in h["x-svccomm-error"]
    assert broker.count(p.queue()) == 0
    assert p.record_count() == 0
    assert p.proc.poll() is None


def test_permanent_error_goes_straight_to_the_dlq(project, broker):
    p = project.setup_consumer(RECORDER, {"RETRY_DELAYS": [0.3], "MAX_ATTEMPTS": 5})
    p.start_consumer()
    broker.publish(p.exchange(), "x", {"n": 1, "permanent": True})
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == 1, 20, what="the dead letter")
    (props, _), = broker.get_all(p.queue() + ".dlq")
    assert props.headers["x-svccomm-reason"] == "permanent-error"
    assert props.headers["x-svccomm-attempts"] == "1"
    assert "not for us" in props.headers["x-svccomm-error"]
    # logged once the broker confirmed the copy: the line may follow the queue count
    p.proc.wait_for_log("dead-lettered", 10)
    assert p.log().count("failed in") == 1


def test_malformed_input_is_dead_lettered_with_reason_and_serving_continues(project, broker):
    p = project.setup_consumer(RECORDER, {"MAX_MESSAGE_BYTES": 100000, "MAX_JSON_DEPTH": 64})
    p.start_consumer()
    broker.publish(p.exchange(), "m", b'{"n": 1, oops', message_id="invalid-json")
    broker.publish(p.exchange(), "m", b'{"n": "\xff\xfe"}', message_id="invalid-utf8")
    broker.publish(p.exchange(), "m", b"[" * 10000 + b"]" * 10000, message_id="too-deep")
    broker.publish(p.exchange(), "m", b'{"pad": "' + b"x" * 200000 + b'"}', message_id="too-big")
    broker.publish(p.exchange(), "m", {"n": 5}, message_id="fine")
    svc.wait_until(lambda: p.record_count() == 1, 20, what="the good message")
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == 4, 20, what="4 dead letters")
    dead = {props.message_id: (props.headers, body) for props, body in
            broker.get_all(p.queue() + ".dlq")}
    assert dead["invalid-json"][0]["x-svccomm-reason"] == "invalid-json"
    assert "invalid JSON" in dead["invalid-json"][0]["x-svccomm-error"]
    assert dead["invalid-json"][1] == b'{"n": 1, oops'
    assert dead["invalid-utf8"][0]["x-svccomm-reason"] == "invalid-utf8"
    assert dead["invalid-utf8"][1] == b'{"n": "\xff\xfe"}'
    assert dead["too-deep"][0]["x-svccomm-reason"] == "too-deep"
    assert dead["too-big"][0]["x-svccomm-reason"] == "too-large"
    assert "200011 bytes" in dead["too-big"][0]["x-svccomm-error"]
    # never buffered whole: a 4 KiB prefix, and the size
    assert dead["too-big"][1] == (b'{"pad": "' + b"x" * 200000)[:4096]
    assert dead["too-big"][0]["x-svccomm-body-truncated"] == "200011"
    for headers, _ in dead.values():
        assert headers["x-svccomm-exchange"] == p.exchange()
        assert headers["x-svccomm-routing-key"] == "m"
    assert p.proc.poll() is None
    assert broker.count(p.queue()) == 0
    assert p.stop() == 0


COMMIT_TRAP = """
local svccomm = require "svccomm"
local db = svccomm.db
svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  db.query("INSERT INTO $TABLE (n, attempt, info) VALUES ($1, $2, $3)", body.n, msg.attempt,
    tostring(msg.redelivered))
  if not msg.redelivered then
    -- violates a deferred constraint: the failure shows only at COMMIT
    db.query("INSERT INTO $TABLE_trap (id) VALUES (1)")
  end
end)
"""


def test_failed_commit_is_not_acked_and_the_message_comes_back(project, broker):
    p = project.setup_consumer(COMMIT_TRAP)
    trap = p.table() + "_trap"
    sql("CREATE TABLE %s (id int, CONSTRAINT %s_u UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)"
        % (trap, trap))
    sql("INSERT INTO %s VALUES (1)" % trap)
    p.start_consumer()
    broker.publish(p.exchange(), "x", {"n": 1})
    svc.wait_until(lambda: p.record_count() == 1, 20, what="the redelivered message to commit")
    time.sleep(0.5)
    rows = p.records("n, attempt, info")
    assert rows == [(1, 1, "true")]  # only the redelivery's work is there
    assert sql("SELECT count(*) FROM %s" % trap)[0][0] == 1
    assert "COMMIT" in p.log()
    assert broker.count(p.queue()) == 0
    assert broker.count(p.queue() + ".dlq") == 0
    assert p.stop() == 0
