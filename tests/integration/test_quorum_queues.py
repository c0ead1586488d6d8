"""runconsumer on quorum queues: the retry queues and the DLQ follow the main queue's type
(quorum retry queues dead-letter back at least once), a failing message is retried then
dead-lettered through them, a quorum x-delivery-limit does not cut MAX_ATTEMPTS short, and a
queue that exists with other arguments is a settings error naming the key (issue 15)."""
import re

import svc
from svc import RECORDER

QUORUM = {"x-queue-type": "quorum"}


def queue_info(name):
    """(type, arguments text) of a queue, from rabbitmqctl list_queues."""
    out = svc.rabbitmqctl("list_queues", "-p", "svccomm", "--no-table-headers", "--quiet",
                          "name", "type", "arguments")
    for line in out.splitlines():
        cols = line.split("\t")
        if cols[0] == name:
            return cols[1], cols[2]
    raise AssertionError("queue %s not listed:\n%s" % (name, out))


def test_retry_queues_and_dlq_follow_a_quorum_queue(project, broker):
    p = project.setup_consumer(RECORDER, {"QUEUE_ARGUMENTS": dict(
        QUORUM, **{"x-quorum-initial-group-size": 1})})
    q = p.queue()
    out = p.run("check").stdout
    assert "retries:  %s.retry.<ms> (x-dead-letter-strategy=at-least-once, x-overflow=reject-publish, " \
        "x-queue-type=quorum, x-quorum-initial-group-size=1)\n" % q in out, out
    assert "dlq:      %s.dlq (x-queue-type=quorum, x-quorum-initial-group-size=1)\n" % q in out, out
    p.start_consumer()
    assert queue_info(q)[0] == "quorum"
    dlq_type, dlq_args = queue_info(q + ".dlq")
    assert dlq_type == "quorum", dlq_args
    assert "x-quorum-initial-group-size" in dlq_args, dlq_args
    for ms in (300, 600):
        rtype, rargs = queue_info("%s.retry.%d" % (q, ms))
        assert rtype == "quorum", rargs
        assert re.search(r"x-dead-letter-strategy.*at-least-once", rargs), rargs
        assert re.search(r"x-overflow.*reject-publish", rargs), rargs
        assert re.search(r"x-message-ttl.*%d" % ms, rargs), rargs
    # a message failing every time: attempts 1, 2, 3 (MAX_ATTEMPTS) through the quorum retry
    # queues, then the quorum DLQ; one that fails once is handled on its second attempt
    broker.publish(p.exchange(), "bad", {"n": 1, "fail": True}, message_id="doomed")
    broker.publish(p.exchange(), "flaky", {"n": 2, "fail_until": 2}, message_id="flaky")
    svc.wait_until(lambda: broker.count(q + ".dlq") == 1, 30, what="the dead letter")
    p.proc.wait_for_log(r"message doomed .*attempt 3.*dead-lettered", 10)
    log = p.log()
    for attempt in (1, 2, 3):
        assert re.search(r"message doomed .*attempt %d" % attempt, log), log
    (props, body), = broker.get_all(q + ".dlq")
    assert props.message_id == "doomed"
    assert props.headers["x-svccomm-reason"] == "max-attempts"
    assert [(r[0], r[1]) for r in p.records()] == [(2, 2)]
    assert p.stop() == 0


def test_classic_queue_keeps_classic_retry_queues_and_explicit_settings_win(project, broker):
    p = project.setup_consumer(RECORDER, {
        "DEAD_LETTER_QUEUE_ARGUMENTS": dict(QUORUM),
        "RETRY_QUEUE_ARGUMENTS": {"x-queue-type": "classic"},
    })
    p.start_consumer()
    q = p.queue()
    assert queue_info(q)[0] == "classic"
    assert queue_info(q + ".dlq")[0] == "quorum"
    assert queue_info(q + ".retry.300")[0] == "classic"
    assert p.stop() == 0


def test_a_delivery_limit_below_max_attempts_does_not_cut_retries_short(project, broker):
    """Retries are copies (the original is acked), so a quorum queue's delivery count of a
    failing message never passes 1: x-delivery-limit counts only redeliveries (requeues)."""
    p = project.setup_consumer(RECORDER, {
        "QUEUE_ARGUMENTS": dict(QUORUM, **{"x-delivery-limit": 1}), "MAX_ATTEMPTS": 4,
        "RETRY_DELAYS": [0.2]})
    p.start_consumer()
    broker.publish(p.exchange(), "flaky", {"n": 7, "fail_until": 4}, message_id="flaky")
    svc.wait_until(lambda: p.record_count() == 1, 30, what="handled on attempt 4")
    assert [(r[0], r[1]) for r in p.records()] == [(7, 4)]
    assert broker.count(p.queue() + ".dlq") == 0
    assert p.stop() == 0


def test_an_existing_queue_of_another_type_is_a_settings_error(project, broker):
    p = project.setup_consumer(RECORDER)
    broker.queue(p.queue())  # classic, made by someone else
    p.write_settings(p.settings, QUEUE_ARGUMENTS=QUORUM)
    proc = p.start_consumer(wait_consuming=False)
    assert proc.wait(30) == 2, proc.log()
    log = proc.log()
    assert "declaring queue '%s'" % p.queue() in log, log
    assert "PRECONDITION_FAILED" in log and "QUEUE_ARGUMENTS" in log, log
    # the same for the retry queues: classic ones exist, the settings now ask for quorum
    q = p.queue()
    p.write_settings(p.settings, QUEUE_ARGUMENTS=None)
    proc = p.start_consumer()
    assert p.stop(proc) == 0
    p.write_settings(p.settings, RETRY_QUEUE_ARGUMENTS=QUORUM)
    proc = p.start_consumer(wait_consuming=False)
    assert proc.wait(30) == 2, proc.log()
    assert re.search(r"declaring queue '%s\.retry\.300'.*RETRY_QUEUE_ARGUMENTS"
                     % re.escape(q), proc.log()), proc.log()


def test_classic_retry_queues_and_dlq_of_an_older_version_are_kept_with_a_warning(project, broker):
    """A quorum QUEUE whose retry queues and DLQ were declared classic (before they followed
    QUEUE_ARGUMENTS) keeps working: they are used as they are, with a warning."""
    p = project.setup_consumer(RECORDER, {"QUEUE_ARGUMENTS": QUORUM,
                                          "RETRY_QUEUE_ARGUMENTS": {},
                                          "DEAD_LETTER_QUEUE_ARGUMENTS": {}})
    proc = p.start_consumer()
    assert p.stop(proc) == 0
    q = p.queue()
    assert queue_info(q + ".dlq")[0] == "classic"
    p.write_settings(p.settings, RETRY_QUEUE_ARGUMENTS=None, DEAD_LETTER_QUEUE_ARGUMENTS=None)
    proc = p.start_consumer()
    log = proc.log()
    assert "queue '%s.dlq' exists with other arguments" % q in log, log
    assert "used as it is" in log and "DEAD_LETTER_QUEUE_ARGUMENTS" in log, log
    assert "queue '%s.retry.300' exists with other arguments" % q in log, log
    broker.publish(p.exchange(), "bad", {"n": 1, "fail": True}, message_id="doomed")
    svc.wait_until(lambda: broker.count(q + ".dlq") == 1, 30, what="the dead letter")
    assert queue_info(q + ".dlq")[0] == "classic"
    assert queue_info(q + ".retry.300")[0] == "classic"
    assert p.stop(proc) == 0
