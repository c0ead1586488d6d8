"""SIGHUP (issue 21, item 5): runconsumer --workers replaces its workers one at a time,
runconsumer alone execs itself again, runpublisher reads its settings again. Under a steady
stream no message is lost or handled twice, and a changed handler file is in effect after."""
import os
import re
import signal
import time

import svc

VERSIONED = """
local svccomm = require "svccomm"
svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  svccomm.db.query("INSERT INTO $TABLE (n, info) VALUES ($1, $2)", body.n, "VERSION")
end)
"""


def write_handler(p, version):
    code = VERSIONED.replace("$EXCHANGE", p.exchange()).replace("$TABLE", p.table())
    p.write_app("rec", code.replace("VERSION", version))


def stream(broker, p, start, stop, pause=0.005):
    for i in range(start, stop):
        broker.publish(p.exchange(), "ev", {"n": i}, persistent=False)
        time.sleep(pause)


def assert_each_handled_once(p, broker, total):
    svc.wait_until(lambda: p.record_count() >= total and broker.count(p.queue()) == 0, 60,
                   what="every message handled")
    ns = [r[0] for r in p.records("n")]
    assert sorted(ns) == list(range(total)), "lost or handled twice"


def test_sighup_replaces_workers_one_at_a_time_without_loss_or_duplicates(project, broker):
    p = project.setup_consumer(VERSIONED.replace("VERSION", "v1"), {"PREFETCH_COUNT": 20})
    write_handler(p, "v1")
    proc = p.start_consumer("--workers", "2", wait_consuming=False)
    svc.wait_until(lambda: proc.log().count("consuming '%s'" % p.queue()) >= 2, 30, what="2 workers")
    stream(broker, p, 0, 100)
    write_handler(p, "v2")
    os.kill(proc.pid, signal.SIGHUP)
    stream(broker, p, 100, 200)
    proc.wait_for_log("all 2 worker\\(s\\) replaced", 30)
    os.kill(proc.pid, signal.SIGHUP)  # a second round, still under the stream
    stream(broker, p, 200, 300)
    svc.wait_until(lambda: proc.log().count("all 2 worker(s) replaced") == 2, 30,
                   what="the second round")
    stream(broker, p, 300, 350)
    assert_each_handled_once(p, broker, 350)
    log = proc.log()
    # one at a time: the second worker is replaced only after the first replacement consumes
    first = log.index("worker 1 replaced")
    assert log.index("replacing worker 2") > first, log
    assert proc.running()
    after = [r[1] for r in p.records("n, info") if r[0] >= 300]
    assert after and set(after) == {"v2"}, after
    assert p.stop() == 0


def test_sighup_without_workers_execs_again_with_the_new_handler(project, broker):
    p = project.setup_consumer(VERSIONED.replace("VERSION", "v1"), {"PREFETCH_COUNT": 20})
    write_handler(p, "v1")
    proc = p.start_consumer()
    stream(broker, p, 0, 100)
    write_handler(p, "v2")
    os.kill(proc.pid, signal.SIGHUP)
    stream(broker, p, 100, 200)
    svc.wait_until(lambda: proc.log().count("consuming '%s'" % p.queue()) >= 2, 30,
                   what="consuming again after the exec")
    stream(broker, p, 200, 250)
    assert_each_handled_once(p, broker, 250)
    assert proc.running()  # the same process (exec keeps the pid)
    assert "starting again with the same command line" in proc.log()
    assert {r[1] for r in p.records("n, info") if r[0] >= 200} == {"v2"}
    assert p.stop() == 0


def test_sighup_makes_runpublisher_read_its_settings_again(project):
    p = project.setup_relay({"PUBLISHER_BATCH_SIZE": 100})
    ex = p.exchange("relayed")
    ch = p.amqp()
    ch.exchange_declare(ex, "topic", durable=True)
    q = p.queue("relayed")
    ch.queue_declare(q, durable=False)
    ch.queue_bind(q, ex, "#")
    proc = p.start_relay()
    proc.wait_for_log("batch 100,", 10)
    p.outbox_insert_many(ex, 50)
    p.write_settings(p.settings, PUBLISHER_BATCH_SIZE=77)
    os.kill(proc.pid, signal.SIGHUP)
    proc.wait_for_log("batch 77,", 30)
    p.outbox_insert_many(ex, 50)
    svc.wait_until(lambda: p.outbox_count() == 0 and ch.queue_declare(q, passive=True)
                   .method.message_count == 100, 30, what="all 100 rows relayed")
    assert proc.running()
    assert p.stop() == 0


def test_sighup_with_a_broken_handler_keeps_the_old_workers_serving(project, broker):
    p = project.setup_consumer(VERSIONED.replace("VERSION", "v1"), {"PREFETCH_COUNT": 20})
    write_handler(p, "v1")
    proc = p.start_consumer("--workers", "2", wait_consuming=False)
    svc.wait_until(lambda: proc.log().count("consuming '%s'" % p.queue()) >= 2, 30, what="2 workers")
    p.write_app("rec", "this is not Lua")
    os.kill(proc.pid, signal.SIGHUP)
    proc.wait_for_log("do not load", 30)
    stream(broker, p, 0, 50)  # worker 2 still runs v1
    svc.wait_until(lambda: p.record_count() >= 50, 30, what="the old worker serving")
    assert proc.running()
    write_handler(p, "v2")  # the waiting replacement picks it up at its next try
    proc.wait_for_log("all 2 worker\\(s\\) replaced", 60)
    stream(broker, p, 50, 80)
    assert_each_handled_once(p, broker, 80)
    assert {r[1] for r in p.records("n, info") if r[0] >= 50} == {"v2"}
    assert p.stop() == 0
