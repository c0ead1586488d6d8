"""`svccomm checkconsumer` and `checkpublisher --json` (issue 13): health checks from the
command line for hosts without HTTP probes, against the real servers."""
import json

import svc
from svc import RECORDER


def check(project, *args):
    return project.run("checkconsumer", *args)


def test_healthy_while_the_consumer_runs_then_unhealthy_without_it(project, broker):
    p = project.setup_consumer(RECORDER)
    p.start_consumer()
    r = check(p)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("consumer healthy: queue %s: 0 ready, 1 consumer(s); %s.dlq: 0 "
                               "dead letter(s)\n" % (p.queue(), p.queue()))
    r = check(p, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "queue": p.queue(), "healthy": True, "queue_exists": True, "ready": 0, "consumers": 1,
        "dlq": p.queue() + ".dlq", "dlq_exists": True, "dead_letters": 0, "problems": []}
    assert p.stop() == 0
    r = check(p)
    assert r.returncode == 1
    assert r.stdout.startswith("consumer unhealthy: ")
    assert "  0 consumer(s), at least 1 wanted\n" in r.stdout
    assert check(p, "--min-consumers", "0").returncode == 0


def test_ready_and_dead_letter_thresholds(project, broker):
    p = project.setup_consumer(RECORDER, {"RETRY_DELAYS": [0.2], "MAX_ATTEMPTS": 2})
    p.start_consumer()
    broker.publish(p.exchange(), "x", {"n": 1, "permanent": True}, message_id="dead1")
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == 1, 20, what="the dead letter")
    assert p.stop() == 0
    for i in range(3):
        broker.publish(p.exchange(), "x", {"n": 10 + i})
    svc.wait_until(lambda: broker.count(p.queue()) == 3, 10, what="3 ready")
    r = check(p, "--min-consumers", "0", "--max-ready", "2", "--max-dlq", "0", "--json")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert (out["healthy"], out["ready"], out["dead_letters"]) == (False, 3, 1)
    assert out["problems"] == ["3 message(s) ready, at most 2 allowed",
                               "1 dead letter(s), at most 0 allowed"]
    r = check(p, "--min-consumers", "0", "--max-ready", "3", "--max-dlq", "1")
    assert r.returncode == 0, r.stdout
    # it only looks: the messages are all still there
    assert broker.count(p.queue()) == 3 and broker.count(p.queue() + ".dlq") == 1


def test_a_missing_queue_is_unhealthy_and_an_unreachable_broker_is_unknown(project):
    p = project
    p.write_settings(QUEUE=p.queue("never_declared"))
    r = check(p, "--json")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["queue_exists"] is False and out["dlq_exists"] is False
    assert out["problems"] == ["queue %s does not exist" % p.queue("never_declared")]
    r = p.run("checkconsumer", "--json",
              env={"SVCCOMM_BROKER_URL": "amqp://svccomm:secret@127.0.0.1:1/svccomm"})
    assert r.returncode == 3
    out = json.loads(r.stdout)
    assert out["healthy"] is None and out["error"]
    assert "cannot check" in r.stderr and "secret" not in r.stdout + r.stderr


def test_checkpublisher_json_counts_parked_rows(project, outbox):
    p = project
    r = p.run("checkpublisher", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["healthy"] is True and out["parked"] == 0 and out["table"] == outbox
    p.outbox_insert([{"exchange": "e", "routing_key": "k", "body": "{}",
                      "parked_at": "2026-01-01T00:00:00Z", "last_error": "x"}])
    r = p.run("checkpublisher", "--json")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert (out["healthy"], out["parked"], out["max_parked"]) == (False, 1, 0)
    r = p.run("checkpublisher", "--json", "--max-parked", "1")
    assert r.returncode == 0 and json.loads(r.stdout)["healthy"] is True
    r = p.run("checkpublisher", "--json",
              env={"SVCCOMM_DATABASE_URL": "postgresql://svccomm:secret@127.0.0.1:1/x"})
    assert r.returncode == 3
    out = json.loads(r.stdout)
    assert out["healthy"] is None and "secret" not in out["error"]
