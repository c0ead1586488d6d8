"""`svccomm dlq stats|list|replay|purge` (issue 13): the consumer's dead-letter queue for the
operator, against the real servers, while the consumer runs."""
import json
import textwrap

import svc
from svc import RECORDER

BROKEN = """
local svccomm = require "svccomm"
svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  error("handler broken for n=" .. tostring(body.n))
end)
"""


def dlq(project, *args, timeout=60):
    return project.run("dlq", *args, timeout=timeout)


def fix_handler(p):
    """Replace the broken app by the recorder (as a deploy would) and restart the consumer."""
    assert p.stop() == 0
    code = textwrap.dedent(RECORDER).replace("$EXCHANGE", p.exchange()).replace(
        "$TABLE", p.table())
    p.write_app("rec", code)
    return p.start_consumer()


def make_dead_letters(p, broker, n):
    """n messages that the broken handler fails MAX_ATTEMPTS times: n dead letters."""
    p.setup_consumer(BROKEN, {"RETRY_DELAYS": [0.2], "MAX_ATTEMPTS": 2})
    p.start_consumer()
    for i in range(1, n + 1):
        broker.publish(p.exchange(), "order.placed", {"n": i}, message_id="m%d" % i,
                       headers={"h": "v%d" % i})
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == n, 30, what="the dead letters")


def test_replay_brings_every_dead_letter_back_to_its_handler_exactly_once(project, broker):
    p = project
    make_dead_letters(p, broker, 5)
    r = dlq(p, "stats", "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["queue"] == p.queue() + ".dlq" and st["messages"] == 5
    assert st["sampled"] == 5 and sum(st["reasons"].values()) == 5
    fix_handler(p)
    r = dlq(p, "replay", "--all")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "replayed 5 dead letter(s) from %s, 0 kept there" % (
        p.queue() + ".dlq")
    assert sorted(l.split()[1] for l in r.stdout.splitlines()[:-1]) == \
        ["m%d" % i for i in range(1, 6)]
    assert broker.count(p.queue() + ".dlq") == 0
    # a message published after the replay is handled after every copy: once it is in, a
    # duplicate copy would be in too
    broker.publish(p.exchange(), "order.placed", {"n": 99}, message_id="sentinel")
    svc.wait_until(lambda: [99] in [list(r) for r in p.records("n")], 20, what="the sentinel")
    # each handled once, as a first attempt, with its own headers and routing key
    recs = [r for r in p.records("n, attempt, rk, info") if r[0] != 99]
    assert sorted(r[0] for r in recs) == [1, 2, 3, 4, 5]
    assert all(r[1] == 1 and r[2] == "order.placed" for r in recs)
    assert sorted((json.loads(r[3])["mid"], json.loads(r[3])["h"]) for r in recs) == \
        [("m%d" % i, "v%d" % i) for i in range(1, 6)]
    assert p.proc.running()


def test_list_shows_reason_handler_error_attempts_origin_and_body(project, broker):
    p = project
    make_dead_letters(p, broker, 2)
    r = dlq(p, "list", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["queue"] == p.queue() + ".dlq"
    letters = out["letters"]
    assert [l["message_id"] for l in letters] == ["m1", "m2"]
    l1 = letters[0]
    assert l1["attempts"] == 2 and l1["reason"]
    assert "handler broken for n=1" in l1["error"]
    assert l1["handler"] and "rec" in l1["handler"]
    assert (l1["exchange"], l1["routing_key"]) == (p.exchange(), "order.placed")
    assert l1["signed"] is True and l1["body_truncated"] is False
    assert json.loads(l1["body_excerpt"]) == {"n": 1}
    r = dlq(p, "list", "--limit", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("#1 message_id=m1 reason=")
    assert "origin: exchange %s routing key order.placed (signed)" % p.exchange() in r.stdout
    assert "#2" not in r.stdout
    # listing leaves them where they were
    assert broker.count(p.queue() + ".dlq") == 2


def test_replay_of_one_id_leaves_the_others(project, broker):
    p = project
    make_dead_letters(p, broker, 3)
    fix_handler(p)
    r = dlq(p, "replay", "--id", "m2", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["replayed"] == 1 and out["letters"] == [
        {"message_id": "m2", "exchange": p.exchange(), "routing_key": "order.placed",
         "replayed": True, "why": None}]
    svc.wait_until(lambda: p.record_count() == 1, 20, what="m2 handled")
    assert [r[0] for r in p.records("n")] == [2]
    assert broker.count(p.queue() + ".dlq") == 2
    r = dlq(p, "replay", "--id", "nope")
    assert r.returncode == 1
    assert "no dead letter with message_id 'nope'" in r.stderr
    assert broker.count(p.queue() + ".dlq") == 2


def test_a_forged_dead_letter_is_listed_but_never_replayed(project, broker):
    p = project
    p.setup_consumer(RECORDER)
    p.start_consumer()
    # someone publishes straight into the DLQ with made-up origin headers
    broker.publish("", p.queue() + ".dlq", {"n": 9}, message_id="forged",
                   headers={"x-svccomm-exchange": "amq.topic", "x-svccomm-routing-key": "x",
                            "x-svccomm-reason": "handler-error"})
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == 1, 10, what="the forged letter")
    r = dlq(p, "list", "--json")
    (l,) = json.loads(r.stdout)["letters"]
    assert l["message_id"] == "forged" and l["signed"] is False
    r = dlq(p, "replay", "--all")
    assert r.returncode == 1
    assert "kept forged: not signed by svccomm" in r.stdout
    assert broker.count(p.queue() + ".dlq") == 1


def test_purge_needs_yes(project, broker):
    p = project
    make_dead_letters(p, broker, 2)
    r = dlq(p, "purge")
    assert r.returncode == 2
    assert "--yes" in r.stderr
    assert broker.count(p.queue() + ".dlq") == 2
    r = dlq(p, "purge", "--yes", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"purged": 2}
    assert broker.count(p.queue() + ".dlq") == 0


def test_replay_to_a_missing_exchange_keeps_every_letter(project, broker):
    p = project
    make_dead_letters(p, broker, 3)
    assert p.stop() == 0
    # the broker closes the channel of each copy (404): nothing confirmed, nothing acked
    r = dlq(p, "replay", "--all", "--to-exchange", "no_such_exchange_" + svc.suffix())
    assert r.returncode == 1
    assert r.stdout.count("kept m") == 3 and "unroutable" in r.stdout
    assert r.stdout.splitlines()[-1].startswith("replayed 0 dead letter(s)")
    assert broker.count(p.queue() + ".dlq") == 3


def test_replay_with_the_broker_gone_midway_loses_nothing(project, broker):
    p = project
    make_dead_letters(p, broker, 3)
    assert p.stop() == 0
    # the broker stops taking publishes (memory alarm): the first copy waits for its confirm,
    # then the broker drops every connection while it waits
    svc.rabbitmqctl("set_vm_memory_high_watermark", "0")
    try:
        proc = p.start("dlq", "replay", "--all", name="replay")

        def replay_blocked():
            out = svc.rabbitmqctl("list_connections", "-q", "client_properties", "state")
            return any("(replay)" in line and line.rstrip().endswith("blocked")
                       for line in out.splitlines())
        svc.wait_until(replay_blocked, 20, interval=0.5, what="the replay's publish blocked")
        svc.stop_rabbitmq_app()  # every connection goes, the copy unconfirmed
        code = proc.wait(60)
    finally:
        svc.start_rabbitmq_app()
        svc.rabbitmqctl("set_vm_memory_high_watermark", "0.4")
    log = proc.log()
    assert code == 1, log
    assert "stopped after 0 replayed" in log, log
    ch = p.amqp()
    # nothing was acked: all three are in the DLQ; the copy in flight may have been taken
    # before the broker went (at-least-once), no other
    assert svc.queue_depth(ch, p.queue() + ".dlq") == 3
    assert svc.queue_depth(ch, p.queue()) <= 1
    # and a replay after that brings them all back
    r = dlq(p, "replay", "--all")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1].startswith("replayed 3 dead letter(s)")
    assert svc.queue_depth(ch, p.queue() + ".dlq") == 0


def test_a_replay_killed_midway_duplicates_at_most_the_letter_in_flight(project, broker):
    p = project
    n = 300
    p.setup_consumer(RECORDER, {"RETRY_DELAYS": [0.2], "MAX_ATTEMPTS": 2})
    p.start_consumer()
    for i in range(1, n + 1):
        broker.publish(p.exchange(), "x", {"n": i, "permanent": True}, message_id="k%d" % i)
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == n, 60, what="the dead letters")
    assert p.stop() == 0
    proc = p.start("dlq", "replay", "--all", name="replay")
    proc.wait_for_log(r"replayed k1 ", 30)
    proc.kill()
    proc.wait(30)
    replayed = proc.log().count("replayed k")
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") + broker.count(p.queue()) >= n, 20,
                   what="every letter in the DLQ or replayed")
    in_dlq, copies = broker.count(p.queue() + ".dlq"), broker.count(p.queue())
    assert copies >= replayed  # every letter said replayed is in the queue
    assert in_dlq + copies in (n, n + 1), (in_dlq, copies, replayed)  # at most one twice


def test_dlq_of_a_queue_that_never_ran_is_reported(project):
    project.write_settings(QUEUE=project.queue("never"))
    r = dlq(project, "stats")
    assert r.returncode == 1
    assert "no queue '%s.dlq'" % project.queue("never") in r.stderr
