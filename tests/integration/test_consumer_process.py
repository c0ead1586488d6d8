"""runconsumer: shutdown, crashes and workers (issue 3, scenarios 11, 8, 13)."""
import os
import signal
import time

import svc
from svc import RECORDER


def test_sigterm_during_a_2s_handler_finishes_acks_and_exits_0(project, broker):
    p = project.setup_consumer(RECORDER)
    p.start_consumer()
    broker.publish(p.exchange(), "slow", {"n": 1, "sleep": 2})
    broker.publish(p.exchange(), "slow", {"n": 2})  # prefetched, not started: goes back
    time.sleep(0.7)  # the handler is inside pg_sleep
    t0 = time.time()
    rc = p.stop(signum=signal.SIGTERM)
    assert rc == 0, p.log()
    assert time.time() - t0 >= 1.0  # it waited for the handler
    assert [r[0] for r in p.records()] == [1]  # committed
    assert broker.count(p.queue()) == 1  # message 2 returned unhandled; message 1 acked
    assert "stopped" in p.log()


def test_kill_9_mid_handler_redelivers_and_partial_work_is_absent(project, broker):
    p = project.setup_consumer(RECORDER)
    p.start_consumer()
    broker.publish(p.exchange(), "slow", {"n": 1, "sleep": 3})
    time.sleep(1.0)
    p.stop(signum=signal.SIGKILL)
    assert p.record_count() == 0  # the partial row was never committed
    svc.wait_until(lambda: broker.count(p.queue()) == 1, 10, what="the message back in the queue")
    p.start_consumer()
    svc.wait_until(lambda: p.record_count() == 1, 20, what="the redelivered message handled")
    (n, attempt, rk, body, info), = p.records()
    assert n == 1
    assert '"redelivered":true' in info
    assert p.stop() == 0
    assert broker.count(p.queue()) == 0


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return sorted(out)


def test_four_workers_handle_5000_and_a_killed_worker_is_replaced(project, broker):
    p = project.setup_consumer(RECORDER, {"PREFETCH_COUNT": 50})
    p.start_consumer("--workers", "4", wait_consuming=False)
    svc.wait_until(lambda: p.log().count("consuming '%s'" % p.queue()) >= 4, 30, what="4 workers")
    kids = children(p.proc.pid)
    assert len(kids) == 4
    for i in range(5000):
        broker.publish(p.exchange(), "w", {"n": i}, persistent=False)
    svc.wait_until(lambda: p.record_count() >= 1000, 60, what="work under way")
    os.kill(kids[0], signal.SIGKILL)
    svc.wait_until(lambda: len(children(p.proc.pid)) == 4 and kids[0] not in children(p.proc.pid),
                   30, what="the killed worker replaced")
    svc.wait_until(lambda: p.log().count("consuming '%s'" % p.queue()) >= 5, 30, what="it consumes")
    svc.wait_until(lambda: p.record_count() >= 5000 and broker.count(p.queue()) == 0, 90,
                   what="all handled")
    got = {r[0] for r in p.records("n")}
    assert got == set(range(5000))  # duplicates possible after the kill, losses not
    assert "killed by signal 9" in p.log()
    assert p.stop() == 0
    assert children(p.proc.pid) == [] if p.proc.poll() is None else True
