"""runconsumer: the database's own failures are not the message's (issue 17, items 1 and 3).
Runs against the test servers only: it makes the database read-only."""
import time

import pytest

import svc
from svc import sql

FLOW = """
local svccomm = require "svccomm"
svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  svccomm.db.query("INSERT INTO $TABLE (n, attempt) VALUES ($1, $2)", body.n, msg.attempt)
end)
"""


def set_read_only(conn, on):
    cur = conn.cursor()
    cur.execute("ALTER SYSTEM SET default_transaction_read_only = %s" % ("on" if on else "off"))
    cur.execute("SELECT pg_reload_conf()")


@pytest.mark.parametrize("inbox", [False, True], ids=["inbox-off", "inbox-on"])
def test_read_only_database_requeues_without_counting_attempts(project, broker, inbox):
    p = project.setup_consumer(FLOW, {"RETRY_DELAYS": [0.1, 0.1], "MAX_ATTEMPTS": 3,
                                      "RECONNECT_MAX_DELAY": 1, "PREFETCH_COUNT": 10})
    if inbox:
        table = p.table("inbox")
        sql("CREATE TABLE %s (queue text NOT NULL, message_id text NOT NULL, "
            "received_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (queue, message_id))"
            % table)
        p.write_settings(p.settings, INBOX=True, INBOX_TABLE=table)
    p.start_consumer()
    admin = project.pg()
    n = 0
    try:
        set_read_only(admin, True)
        for _ in range(30):  # about 15 s of flow against a read-only database
            for _ in range(5):
                n += 1
                broker.publish(p.exchange(), "flow", {"n": n}, message_id="m-%d" % n)
            time.sleep(0.5)
    finally:
        set_read_only(admin, False)
    svc.wait_until(lambda: sql("SELECT count(DISTINCT n) FROM %s" % p.table())[0][0] == n, 60,
                   what="all %d handled once the database is writable" % n)
    assert broker.count(p.queue() + ".dlq") == 0
    log = p.log()
    assert "read-only" in log and "no attempt counted" in log, log
    assert "retry in" not in log  # nothing went through the retry queues either
    # once per message: no attempt was spent on the outage
    assert sql("SELECT max(attempt) FROM %s" % p.table())[0][0] == 1
    assert p.proc.running()
    assert p.stop() == 0
