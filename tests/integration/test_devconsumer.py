"""devconsumer (issue 14, item 1): an app file that changes is loaded into a new Lua state
and swapped in between two messages on the same broker connection, with no message lost or
handled twice; a save that does not load keeps the old handler and says where it failed."""
import re
import threading
import time

import svc

VERSIONED = """
local svccomm = require "svccomm"
svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  svccomm.db.query("INSERT INTO $TABLE (n, info) VALUES ($1, $2)", body.n, "VERSION")
end)
"""

RELOADED = "apps reloaded in"
REFUSED = "the previous code keeps running"


def write_handler(p, version, extra=""):
    code = VERSIONED.replace("$EXCHANGE", p.exchange()).replace("$TABLE", p.table())
    p.write_app("rec", code.replace("VERSION", version) + extra)


def consumer_connections(p):
    """(connected_at, name) of the broker connections of p's consumer."""
    out = svc.rabbitmqctl("list_connections", "connected_at", "name", "client_properties")
    return sorted(" ".join(line.split()[:4]) for line in out.splitlines() if p.queue() in line)


def start_dev(p):
    proc = p.start("devconsumer")
    proc.wait_for_log(re.escape("consuming '%s'" % p.queue()), 30)
    assert proc.running(), proc.log()
    return proc


def info_of(p, n):
    svc.wait_until(lambda: any(r[0] == n for r in p.records("n, info")), 20, what="message %d" % n)
    return [r[1] for r in p.records("n, info") if r[0] == n]


def test_twenty_reloads_under_a_stream_keep_the_connection_and_every_message_once(project, broker):
    p = project.setup_consumer(VERSIONED.replace("VERSION", "v0"), {"PREFETCH_COUNT": 20})
    write_handler(p, "v0")
    proc = start_dev(p)
    before = consumer_connections(p)
    assert before, "the consumer's connections are not listed"
    sent = [0]
    done = threading.Event()

    def stream():  # about 200 msg/s until told to stop
        b = svc.Broker()
        try:
            while not done.is_set():
                b.publish(p.exchange(), "ev", {"n": sent[0]}, persistent=False)
                sent[0] += 1
                time.sleep(0.005)
        finally:
            b.close()

    th = threading.Thread(target=stream)
    th.start()
    try:
        for i in range(1, 21):
            write_handler(p, "v%d" % i)
            svc.wait_until(lambda: proc.log().count(RELOADED) >= i, 20, what="reload %d" % i)
    finally:
        done.set()
        th.join()
    total = sent[0]
    assert total > 100, "the stream did not run during the reloads"
    svc.wait_until(lambda: p.record_count() >= total and broker.count(p.queue()) == 0, 30,
                   what="every message handled")
    ns = sorted(r[0] for r in p.records("n"))
    assert ns == list(range(total)), "lost or handled twice"
    # the next message runs the code of the last save
    broker.publish(p.exchange(), "ev", {"n": total})
    assert info_of(p, total) == ["v20"]
    assert consumer_connections(p) == before, "the broker connection was replaced"
    assert proc.log().count(RELOADED) == 20, proc.log()
    assert proc.running()
    assert p.stop(proc) == 0


def test_a_broken_save_or_a_duplicate_route_keeps_the_old_handler(project, broker):
    p = project.setup_consumer(VERSIONED.replace("VERSION", "v1"))
    write_handler(p, "v1")
    proc = start_dev(p)
    before = consumer_connections(p)
    broker.publish(p.exchange(), "ev", {"n": 1})
    assert info_of(p, 1) == ["v1"]

    write_handler(p, "v2", extra="\nlocal x = = 1\n")  # a syntax error
    svc.wait_until(lambda: proc.log().count(REFUSED) >= 1, 20, what="the refused reload")
    assert re.search(r"apps/rec/consumers\.lua:\d+", proc.log()), proc.log()
    broker.publish(p.exchange(), "ev", {"n": 2})
    assert info_of(p, 2) == ["v1"]

    dup = ('\nsvccomm.message_router.consumer("%s", "#", function() end)\n' % p.exchange())
    write_handler(p, "v3", extra=dup)  # the same route twice
    svc.wait_until(lambda: proc.log().count(REFUSED) >= 2, 20, what="the refused duplicate")
    refused = proc.log().split(REFUSED)[-1]
    assert "apps/rec/consumers.lua:" in refused, proc.log()
    broker.publish(p.exchange(), "ev", {"n": 3})
    assert info_of(p, 3) == ["v1"]

    write_handler(p, "v4")  # fixed: taken
    svc.wait_until(lambda: RELOADED in proc.log(), 20, what="the reload")
    broker.publish(p.exchange(), "ev", {"n": 4})
    assert info_of(p, 4) == ["v4"]
    assert consumer_connections(p) == before
    assert proc.running()
    assert p.stop(proc) == 0


def test_a_settings_change_restarts_devconsumer_once_it_validates(project, broker):
    p = project.setup_consumer(VERSIONED.replace("VERSION", "v1"), {"PREFETCH_COUNT": 20})
    write_handler(p, "v1")
    proc = start_dev(p)
    good = p.settings_path.read_text()
    p.write_settings_source(good + "\nPREFETCH_COUNT = 'many'\n")  # fails validation
    svc.wait_until(lambda: REFUSED in proc.log(), 20, what="the refused settings")
    assert "PREFETCH_COUNT" in proc.log().split(REFUSED)[-1], proc.log()
    broker.publish(p.exchange(), "ev", {"n": 1})
    assert info_of(p, 1) == ["v1"]
    p.write_settings(p.settings, PREFETCH_COUNT=7)
    svc.wait_until(lambda: proc.log().count("consuming '%s' (prefetch 7" % p.queue()) == 1, 30,
                   what="consuming again with the new settings")
    broker.publish(p.exchange(), "ev", {"n": 2})
    assert info_of(p, 2) == ["v1"]
    assert proc.running()  # exec keeps the pid
    assert p.stop(proc) == 0


def test_devpublisher_restarts_when_settings_lua_changes_and_ignores_a_broken_save(project,
                                                                                   broker):
    p = project.setup_relay({"PUBLISHER_BATCH_SIZE": 100})
    ex, q = p.exchange("relayed"), p.queue("relayed")
    broker.exchange(ex)
    broker.queue(q, bind_to=[ex])
    proc = p.start("devpublisher")
    proc.wait_for_log("batch 100,", 10)
    p.outbox_insert_many(ex, 50)
    good = p.settings_path.read_text()
    p.write_settings_source(good + "\nPUBLISHER_BATCH_SIZE = = 3\n")  # does not load
    proc.wait_for_log("does not validate", 20)
    assert "starting again" not in proc.log()
    p.write_settings(p.settings, PUBLISHER_BATCH_SIZE=77)
    proc.wait_for_log("batch 77,", 30)  # the same process, exec'd with the new settings
    assert "starting again with the same command line" in proc.log()
    p.outbox_insert_many(ex, 50)
    svc.wait_until(lambda: p.outbox_count() == 0 and broker.count(q) == 100, 30,
                   what="all 100 rows relayed")
    assert proc.running()
    assert p.stop(proc) == 0


def test_development_defaults_and_a_deleted_app_that_keeps_the_old_code(project, broker):
    """Without LOG_LEVEL and RETRY_DELAYS in settings.lua, devconsumer logs at debug and
    retries after 1, 2 and 5 s; deleting an app's folder is refused (its routes would vanish
    silently) and the old code keeps running."""
    import shutil
    p = project.setup_consumer(VERSIONED.replace("VERSION", "v0"))
    p.write_settings(p.settings, RETRY_DELAYS=None, LOG_LEVEL=None)
    ex, table = p.exchange(), p.table()
    p.write_app("rec", 'local svccomm = require "svccomm"\n'
                'svccomm.message_router.consumer("%s", "ok.*", function(rk, body)\n'
                '  svccomm.db.query("INSERT INTO %s (n, info) VALUES ($1, \'v0\')", body.n)\n'
                'end)\n' % (ex, table))
    p.write_app("flaky", 'require("svccomm").message_router.consumer("%s", "fail.*", '
                'function() error("boom") end)\n' % ex)
    proc = start_dev(p)
    assert re.search(r" debug \[", proc.log()), proc.log()
    broker.publish(p.exchange(), "fail.x", {"n": 1})
    proc.wait_for_log(r"retry in 1000 ms", 20)
    shutil.rmtree(p.dir / "apps" / "flaky")
    proc.wait_for_log(re.escape(REFUSED) + ".*app 'flaky' is gone", 20)
    broker.publish(p.exchange(), "ok.y", {"n": 2})
    assert info_of(p, 2) == ["v0"]
    assert proc.log().count(RELOADED) == 0
    assert p.stop() == 0
