"""runconsumer: what a sender cannot forge (issue 11, finding 3). The x-svccomm-exchange,
x-svccomm-routing-key and x-svccomm-attempt headers svccomm puts on its retry copies are
believed only with a valid x-svccomm-signature; anyone else's are ignored."""
import json
import time

import svc
from svc import RECORDER

# Two exchanges: the public one is bound to the queue, the private one has its own handler
# (it would be bound to the queue by a deployment; a sender can only publish to the public one).
TWO_EXCHANGES = """
local svccomm = require "svccomm"
local db = svccomm.db

local function recorder(tag)
  return function(rk, body, msg)
    db.query("INSERT INTO $TABLE (n, attempt, rk, info) VALUES ($1, $2, $3, $4)",
      body.n or -1, msg.attempt, rk, tag)
  end
end

svccomm.message_router.consumer("$EXCHANGE", "#", recorder("public"))
svccomm.message_router.consumer("$PRIVATE", "#", recorder("PRIVATE"))
"""


def test_forged_origin_headers_do_not_reach_a_private_handler(project, broker):
    private = project.exchange("private")
    public = project.exchange()
    p = project.setup_consumer(TWO_EXCHANGES.replace("$PRIVATE", private),
                               {"EXCHANGES": [public, private], "BINDS": [[public, "#"]]})
    p.start_consumer()
    forged = {"x-svccomm-exchange": private, "x-svccomm-routing-key": "admin.delete"}
    broker.publish(public, "note", {"n": 1}, headers=forged, message_id="forged-1")
    # a signature of the right shape does not help either
    broker.publish(public, "note", {"n": 2}, message_id="forged-2",
                   headers=dict(forged, **{"x-svccomm-signature": "0" * 64,
                                           "x-svccomm-attempt": "2"}))
    svc.wait_until(lambda: p.record_count() == 2, 20, what="both messages handled")
    time.sleep(0.5)
    rows = p.records("n, attempt, rk, info")
    assert sorted(rows) == [(1, 1, "note", "public"), (2, 1, "note", "public")], rows
    assert "PRIVATE" not in [r[3] for r in rows]
    assert broker.count(p.queue() + ".dlq") == 0
    assert p.stop() == 0


def test_a_forged_attempt_does_not_skip_the_retries(project, broker):
    p = project.setup_consumer(RECORDER, {"RETRY_DELAYS": [0.3], "MAX_ATTEMPTS": 3})
    p.start_consumer()
    broker.publish(p.exchange(), "bad.job", {"n": 1, "fail": True}, message_id="forged-attempt",
                   headers={"x-svccomm-attempt": 1000})
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == 1, 20, what="the dead letter")
    time.sleep(1.0)
    log = p.log()
    assert log.count("failed in") == 3, log  # MAX_ATTEMPTS deliveries, counted from 1
    assert "attempt 1," in log and "attempt 3," in log
    (props, body), = broker.get_all(p.queue() + ".dlq")
    h = props.headers
    assert h["x-svccomm-attempts"] == "3"
    assert h["x-svccomm-exchange"] == p.exchange()
    assert h["x-svccomm-routing-key"] == "bad.job"
    assert len(h["x-svccomm-signature"]) == 64
    assert json.loads(body) == {"n": 1, "fail": True}
    assert p.proc.poll() is None


def test_a_dead_letter_moved_back_keeps_its_origin_but_not_with_another_body(project, broker):
    """A copy svccomm signed (here a dead letter moved back into QUEUE by hand) is still routed
    by its original exchange and routing key; the same headers on another body are not."""
    private = project.exchange("private")
    public = project.exchange()
    p = project.setup_consumer(TWO_EXCHANGES.replace("$PRIVATE", private),
                               {"EXCHANGES": [public, private],
                                "BINDS": [[public, "#"], [private, "only.this"]],
                                "UNROUTED": "dead-letter"})
    p.start_consumer()
    broker.publish(private, "only.this", b'{"n": 7, oops', message_id="bad-json")
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == 1, 20, what="the dead letter")
    (props, body), = broker.get_all(p.queue() + ".dlq")
    h = dict(props.headers)
    assert (h["x-svccomm-exchange"], h["x-svccomm-routing-key"]) == (private, "only.this")
    assert h["x-svccomm-reason"] == "invalid-json"

    # moved back as it is: believed (still invalid JSON, dead-lettered again with its origin)
    broker.publish("", p.queue(), body, headers=h, message_id="moved-back")
    # the same headers on another body: ignored, routed as what it is (nothing takes "")
    broker.publish("", p.queue(), b'{"n": 8}', headers=h, message_id="other-body")
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == 2, 20, what="two dead letters")
    dead = {pr.message_id: pr.headers for pr, _ in broker.get_all(p.queue() + ".dlq")}
    assert dead["moved-back"]["x-svccomm-exchange"] == private
    assert dead["moved-back"]["x-svccomm-routing-key"] == "only.this"
    assert dead["moved-back"]["x-svccomm-reason"] == "invalid-json"
    assert dead["other-body"]["x-svccomm-exchange"] == ""
    assert dead["other-body"]["x-svccomm-routing-key"] == p.queue()
    assert dead["other-body"]["x-svccomm-reason"] == "unrouted"
    assert p.record_count() == 0
    assert p.stop() == 0


class _RawKey(str):
    """A routing key pika sends as the given bytes (pika itself only sends UTF-8)."""

    def __new__(cls, raw):
        key = super().__new__(cls, raw.decode("latin-1"))
        key.raw = raw
        return key

    def encode(self, *args, **kwargs):
        return self.raw


def test_a_routing_key_that_is_not_utf8_is_dead_lettered_before_the_router(project, broker):
    p = project.setup_consumer(RECORDER)
    p.start_consumer()
    broker.publish(p.exchange(), _RawKey(b"user.\xff\xfe"), {"n": 1}, message_id="bad-key")
    broker.publish(p.exchange(), "user.ok", {"n": 2}, message_id="fine")
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == 1, 20, what="the dead letter")
    svc.wait_until(lambda: p.record_count() == 1, 20, what="the next message")
    (props, body), = broker.get_all(p.queue() + ".dlq")
    assert props.message_id == "bad-key"
    assert props.headers["x-svccomm-reason"] == "invalid-routing"
    assert "routing key: invalid UTF-8 at byte 5" in props.headers["x-svccomm-error"]
    assert json.loads(body) == {"n": 1}
    assert [r[:3] for r in p.records()] == [(2, 1, "user.ok")]
    assert p.stop() == 0
