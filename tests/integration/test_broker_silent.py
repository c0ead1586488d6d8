"""A broker that stops answering (its process paused, the TCP connection open) is noticed as a
heartbeat timeout by the consumer and the relay, and nothing is lost once it resumes (issue 17,
item 5). Runs against the test servers only: it pauses the broker."""
import os
import re
import signal
import time

import svc

HANDLER = """
local svccomm = require "svccomm"
svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  svccomm.db.query("INSERT INTO $TABLE (n, attempt) VALUES ($1, $2)", body.n, msg.attempt)
end)
"""
HEARTBEAT = 2
SILENT = re.compile(r"heartbeat timeout: nothing from the broker for ([0-9.]+) s")


def broker_pid():
    """The beam process of the test node (SVCCOMM_SERVERS_NODE, else svccomm@localhost)."""
    node = os.environ.get("SVCCOMM_SERVERS_NODE", "svccomm@localhost")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/environ" % pid, "rb") as f:
                env = f.read().split(b"\0")
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"beam" in cmd and b"rabbit boot" in cmd.replace(b"\0", b" ") and \
                ("RABBITMQ_NODENAME=" + node).encode() in env:
            return int(pid)
    raise AssertionError("no beam process for node %s" % node)


def handled(p):
    return svc.sql("SELECT count(DISTINCT n) FROM %s" % p.table())[0][0]


def test_paused_broker_is_a_heartbeat_timeout_for_consumer_and_relay(project):
    p = project.setup_consumer(HANDLER, {"HEARTBEAT": HEARTBEAT})
    r = p.run("migrate", timeout=60)
    assert r.returncode == 0, r.stderr
    consumer = p.start_consumer()
    relay = p.start("runpublisher", name="runpublisher")
    relay.wait_for_log("starting", 10)
    p.outbox_insert_many(p.exchange(), 50)
    svc.wait_until(lambda: handled(p) == 50, 30, what="the first 50 handled")

    beam = broker_pid()
    os.kill(beam, signal.SIGSTOP)
    try:
        # written meanwhile: they wait in the outbox
        p.outbox_insert([{"exchange": p.exchange(), "routing_key": "ev.x",
                          "body": '{"n": %d}' % n} for n in range(51, 101)])
        time.sleep(3 * HEARTBEAT)
    finally:
        os.kill(beam, signal.SIGCONT)
    for proc in (consumer, relay):
        svc.wait_until(lambda: SILENT.search(proc.log()), 30, what="a heartbeat timeout logged")
        # the silence it measured: within about one interval, not rabbitmq-c's two
        assert float(SILENT.search(proc.log()).group(1)) < 2 * HEARTBEAT, proc.log()
    assert "is gone" not in consumer.log()
    svc.wait_until(lambda: handled(p) == 100, 60, what="all 100 handled after the pause")
    assert consumer.running() and relay.running()
