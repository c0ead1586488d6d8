"""runconsumer: a handler bug fails its message, never the worker (issue 11, findings 6, 7, 8
and the paths of finding 10).

Each bad message is retried, then dead-lettered with the reason, while the worker keeps
running and handles the next message."""
import json
import re

import pytest

import svc

HANDLER = """
local svccomm = require "svccomm"
local db = svccomm.db
local cjson = require "cjson"

-- coroutines made while the module loads (no deadline then), one per attempt
local loops = {}
for i = 1, 5 do
  loops[i] = coroutine.wrap(function() local n = 0 while true do n = n + 1 end end)
end

local bugs = {
  tostring_raises = function()
    error(setmetatable({}, {__tostring = function() error("tostring blew up") end}))
  end,
  index_raises = function()
    error(setmetatable({}, {__index = function() error("index blew up") end}))
  end,
  tostring_loops = function()
    error(setmetatable({}, {__tostring = function() while true do end end}))
  end,
  exit3 = function() os.exit(3) end,
  exit2 = function() os.exit(2) end,
  coroutine_loop = function(msg) loops[msg.attempt]() end,
  huge_json = function()
    local s = string.rep("x", 1 << 20)
    local t = {}
    for i = 1, 200 do t[i] = s end
    return cjson.encode(t) -- 200 MB of text
  end,
}

svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  local bug = bugs[body.kind]
  if bug then bug(msg) end
  db.query("INSERT INTO $TABLE (n, attempt, rk, body) VALUES ($1, $2, $3, $4)",
    body.n, msg.attempt, rk, cjson.encode(body))
end)
"""

SETTINGS = {"RETRY_DELAYS": [0.3], "MAX_ATTEMPTS": 2, "HANDLER_TIMEOUT": 1,
            "LUA_MEMORY_LIMIT_MB": 32}


def peak_rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) / 1024


def dead_letter_then_next(p, broker, kind, alive):
    """Publishes a message of `kind` then a good one: the bad one lands in the DLQ after
    MAX_ATTEMPTS, the good one is handled, `alive()` holds throughout. Returns the dead
    letter's headers."""
    broker.publish(p.exchange(), "bug", {"n": 1, "kind": kind}, message_id="bug-" + kind)
    broker.publish(p.exchange(), "ok", {"n": 2})
    svc.wait_until(lambda: not alive() or broker.count(p.queue() + ".dlq") == 1, 30,
                   what="the dead letter")
    svc.wait_until(lambda: not alive() or p.record_count() == 1, 30, what="the next message")
    assert alive(), p.log()
    (props, body), = broker.get_all(p.queue() + ".dlq")
    assert json.loads(body) == {"n": 1, "kind": kind}
    assert props.headers["x-svccomm-reason"] == "max-attempts"
    assert [r[0] for r in p.records("n")] == [2]
    log = p.log()
    assert "killed by signal" not in log and "exited with" not in log
    return props.headers


@pytest.mark.parametrize("kind, error", [
    ("tostring_raises", "tostring blew up"),
    ("index_raises", "index blew up"),
    ("tostring_loops", "took too long"),
    ("exit3", "os.exit() is not allowed in a handler"),
    ("coroutine_loop", "timed out after 1 s (HANDLER_TIMEOUT)"),
    ("huge_json", "LUA_MEMORY_LIMIT_MB"),
])
def test_a_handler_bug_dead_letters_its_message_and_the_worker_goes_on(project, broker, kind,
                                                                      error):
    p = project.setup_consumer(HANDLER, SETTINGS)
    p.start_consumer()
    headers = dead_letter_then_next(p, broker, kind, lambda: p.proc.poll() is None)
    assert error in headers["x-svccomm-error"], headers["x-svccomm-error"]
    if kind == "huge_json":
        # cjson's buffer was refused before it grew: 200 MB never allocated
        assert peak_rss_mb(p.proc.pid) < 120
    assert p.stop() == 0


def test_os_exit_2_after_consuming_began_does_not_stop_the_other_workers(project, broker):
    p = project.setup_consumer(HANDLER, SETTINGS)
    p.start_consumer("--workers", "2", wait_consuming=False)
    svc.wait_until(lambda: p.log().count("consuming '%s'" % p.queue()) >= 2, 30,
                   what="2 workers consuming")
    dead_letter_then_next(p, broker, "exit2", lambda: p.proc.poll() is None)
    assert "configuration error" not in p.log()
    assert p.stop() == 0


@pytest.mark.parametrize("settings_env", ["absolute", "default"])
def test_dead_letter_headers_name_files_relative_to_the_project(project, broker, settings_env):
    p = project.setup_consumer(svc.RECORDER, {"RETRY_DELAYS": [0.3], "MAX_ATTEMPTS": 2})
    env = {"SVCCOMM_SETTINGS": str(p.settings_path)} if settings_env == "absolute" else None
    p.start_consumer(env=env)
    broker.publish(p.exchange(), "bad", {"n": 1, "fail": True})
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") == 1, 20, what="the dead letter")
    (props, _), = broker.get_all(p.queue() + ".dlq")
    h = props.headers
    assert re.match(r"rec:apps/rec/consumers\.lua:\d+$", h["x-svccomm-handler"]), h
    err = h["x-svccomm-error"]
    assert re.match(r"apps/rec/consumers\.lua:\d+: handler failed on attempt 2", err), err
    assert "\tapps/rec/consumers.lua:" in err  # the traceback too
    assert str(p.dir) not in err and "./apps" not in err
    assert p.stop() == 0
