"""svccomm.log from a handler: svccomm's line format, level filter, worker and message id
(issue 21, item 2)."""
import re

import svc

LOGGING = """
local svccomm = require "svccomm"

svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  svccomm.log.debug("not shown at level info", { order = body.order })
  svccomm.log.info("order stored", { order = body.order, note = "two words", evil = "a\\nb",
                                      items = { "x", "y" }, paid = true })
  svccomm.log.warning("stock low")
  print("plain print " .. body.order)
end)
"""


def test_handler_lines_carry_level_worker_message_id_and_fields(project, broker):
    p = project.setup_consumer(LOGGING, use_db=False)
    p.start_consumer("--workers", "2")
    broker.publish(p.exchange(), "order.created", {"order": "o17"}, message_id="mid-17")
    proc = p.proc
    proc.wait_for_log("plain print o17", 20)
    log = proc.log()
    line = re.search(r"^\S+Z info worker [12] \[handler\] order stored (.*)$", log, re.M)
    assert line, log
    assert line.group(1) == ('message_id=mid-17 evil=a\\nb items="[\\"x\\",\\"y\\"]" '
                             'note="two words" order=o17 paid=true'), log
    assert re.search(r"^\S+Z warning worker [12] \[handler\] stock low message_id=mid-17$", log,
                     re.M), log
    assert "not shown" not in log
    assert p.stop() == 0


def test_log_level_debug_shows_debug_lines(project, broker):
    p = project.setup_consumer(LOGGING, {"LOG_LEVEL": "debug"}, use_db=False)
    p.start_consumer()
    broker.publish(p.exchange(), "x", {"order": "o3"}, message_id="mid-3")
    p.proc.wait_for_log("plain print o3", 20)
    assert re.search(r"^\S+Z debug \[handler\] not shown at level info message_id=mid-3 order=o3$",
                     p.log(), re.M), p.log()
    assert p.stop() == 0
