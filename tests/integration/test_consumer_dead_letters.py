"""runconsumer: a dead-letter queue that refuses copies does not stop the queue, outcomes are
logged only once they are true, and dead letters keep the original content type (issue 22)."""
import json
import re

import svc
from svc import RECORDER, sql

REFUSE_ALL = json.dumps({"max-length": 0, "overflow": "reject-publish"})


def set_policy(name, queue, definition):
    svc.rabbitmqctl("set_policy", "-p", "svccomm", "--apply-to", "queues", "--priority", "10",
                    name, "^%s$" % re.escape(queue), definition)


def clear_policy(name):
    svc.rabbitmqctl("clear_policy", "-p", "svccomm", name)


def test_a_dlq_that_refuses_copies_holds_the_message_and_the_queue_keeps_flowing(project, broker):
    p = project.setup_consumer(RECORDER, {"RETRY_DELAYS": [0.3, 0.6], "MAX_ATTEMPTS": 2})
    policy = p.prefix + "_refuse"
    set_policy(policy, p.queue() + ".dlq", REFUSE_ALL)
    try:
        p.start_consumer()
        broker.publish(p.exchange(), "bad", {"n": 0, "permanent": True}, message_id="doomed")
        for i in range(1, 11):
            broker.publish(p.exchange(), "good", {"n": i})
        svc.wait_until(lambda: p.record_count() == 10, 20, what="the good messages")
        # held in the longest retry queue (600 ms), it comes back and is refused again
        svc.wait_until(lambda: re.search(r"dlq_refused=[2-9]", p.log()), 20,
                       what="the message back and refused again (counted)")
        log = p.log()
        assert "refused it" in log and p.queue() + ".retry.600" in log, log
        assert re.search(r"error \[consumer\] message doomed .*refused it", log), log
        assert "reconnecting" not in log and log.count("consuming '") == 1, log
        assert "ENACK" not in log, log
        # never said "dead-lettered" while the DLQ had refused it
        assert "dead-lettered" not in log, log
        assert log.count("refused it") == 1  # once per minute, at error
        assert sorted(r[0] for r in p.records()) == list(range(1, 11))
    finally:
        clear_policy(policy)
    # the DLQ takes copies again: the held message lands there, exactly once
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == 1, 20, what="the dead letter")
    p.proc.wait_for_log(r"message doomed .*, dead-lettered: not for us", 10)
    (props, body), = broker.get_all(p.queue() + ".dlq")
    assert props.message_id == "doomed" and json.loads(body)["n"] == 0
    assert props.headers["x-svccomm-reason"] == "permanent-error"
    assert p.stop() == 0


def test_a_retry_queue_that_refuses_copies_holds_the_message_in_the_longest(project, broker):
    """A refused retry copy ended the session: the batch went back to the queue and the
    consumer reconnected, again and again."""
    p = project.setup_consumer(RECORDER, {"RETRY_DELAYS": [0.2, 0.6], "MAX_ATTEMPTS": 3})
    policy = p.prefix + "_refuse_retry"
    set_policy(policy, p.queue() + ".retry.200", REFUSE_ALL)
    try:
        p.start_consumer()
        broker.publish(p.exchange(), "once", {"n": 0, "fail_until": 2}, message_id="flaky")
        for i in range(1, 11):
            broker.publish(p.exchange(), "good", {"n": i})
        svc.wait_until(lambda: p.record_count() == 11, 20, what="all eleven handled")
        log = p.log()
        assert "the retry queue '%s.retry.200' refused it" % p.queue() in log, log
        assert "held in '%s.retry.600'" % p.queue() in log, log
        assert "reconnecting" not in log and log.count("consuming '") == 1, log
        assert dict((r[0], r[1]) for r in p.records())[0] == 2  # handled on its 2nd attempt
        assert broker.count(p.queue() + ".dlq") == 0
    finally:
        clear_policy(policy)
    assert p.stop() == 0


def test_dead_letters_keep_the_original_content_type_or_none(project, broker):
    p = project.setup_consumer(RECORDER)
    p.start_consumer()
    broker.publish(p.exchange(), "m", b'{"n": 1, oops', message_id="untyped", content_type=None)
    broker.publish(p.exchange(), "m", b"plain words", message_id="text", content_type="text/plain")
    broker.publish(p.exchange(), "m", b'{"n": 2, oops', message_id="json")
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == 3, 20, what="3 dead letters")
    dead = {props.message_id: props for props, _ in broker.get_all(p.queue() + ".dlq")}
    assert dead["untyped"].content_type is None
    assert dead["text"].content_type == "text/plain"
    assert dead["json"].content_type == "application/json"
    assert dead["untyped"].headers["x-svccomm-reason"] == "invalid-json"
    assert p.stop() == 0


def test_acked_is_logged_after_the_commit_not_before_a_commit_that_fails(project, broker):
    p = project.setup_consumer(RECORDER.replace('"#"', '"known.only"'))
    inbox = p.table("inbox")
    sql("CREATE TABLE %s (queue text NOT NULL, message_id text NOT NULL, "
        "received_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (queue, message_id))"
        % inbox)
    # the first COMMIT that carries an inbox row fails (a deferred trigger); the later ones pass
    sql("CREATE SEQUENCE %s_n OWNED BY %s.message_id" % (inbox, inbox))
    sql("CREATE FUNCTION %s_trap() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF nextval('%s_n') = 1 THEN RAISE EXCEPTION 'trap: this COMMIT fails'; END IF; "
        "RETURN NULL; END $$" % (p.prefix, inbox))
    sql("CREATE CONSTRAINT TRIGGER %s_trap AFTER INSERT ON %s DEFERRABLE INITIALLY DEFERRED "
        "FOR EACH ROW EXECUTE FUNCTION %s_trap()" % (p.prefix, inbox, p.prefix))
    p.write_settings(p.settings, INBOX=True, INBOX_TABLE=inbox)
    p.start_consumer()
    broker.publish(p.exchange(), "nobody.takes.this", {"n": 1}, message_id="u1")
    svc.wait_until(lambda: sql("SELECT count(*) FROM %s" % inbox)[0][0] == 1, 20,
                   what="the second COMMIT")
    p.proc.wait_for_log(r"message u1: .*: acked", 10)
    assert p.stop() == 0
    lines = p.log().splitlines()
    failed = [i for i, x in enumerate(lines) if "trap: this COMMIT fails" in x]
    acked = [i for i, x in enumerate(lines) if "message u1:" in x and x.endswith(": acked")]
    assert failed and len(acked) == 1, p.log()
    assert acked[0] > failed[0], p.log()  # said once, after the failed COMMIT, when true
    assert broker.count(p.queue()) == 0
