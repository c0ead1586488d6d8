"""An exchange deleted under a running system (relay and consumer up, a writer committing)
loses nothing with the default settings: the relay keeps the events that came back unroutable,
the consumer declares its exchanges and bindings again, and every event arrives (issue 17)."""
import threading
import time

import svc
from svc import RECORDER, RELAY_SETTINGS


def test_exchange_deleted_under_load_loses_no_event(project, broker):
    p = project.setup_consumer(RECORDER, dict(RELAY_SETTINGS))  # PUBLISHER_UNROUTABLE: default
    assert "PUBLISHER_UNROUTABLE" not in p.settings
    r = p.run("migrate", timeout=60)
    assert r.returncode == 0, r.stderr
    p.start_consumer()
    relay = p.start_relay()
    total, deleted = 300, threading.Event()

    def writer():
        conn = svc.pg_connect()
        try:
            for i in range(1, total + 1):
                svc.pg_query(conn, "INSERT INTO %s (exchange, routing_key, body) VALUES "
                             "(%%s, 'ev', %%s)" % p.table("outbox"),
                             (p.exchange(), '{"n": %d}' % i))
                if i == total // 3:
                    deleted.wait(10)
                time.sleep(0.01)
        finally:
            conn.close()

    w = threading.Thread(target=writer)
    w.start()
    svc.wait_until(lambda: p.record_count() >= total // 3 - 20, 30, what="events flowing")
    broker.ch.exchange_delete(p.exchange())  # takes the consumer's binding with it
    deleted.set()
    w.join(60)
    svc.wait_until(lambda: p.record_count() >= total, 60, what="every event handled")
    got = sorted(r[0] for r in p.records("n"))
    assert set(got) == set(range(1, total + 1)), sorted(set(range(1, total + 1)) - set(got))
    svc.wait_until(lambda: p.outbox_count() == 0, 10, what="the outbox empty")
    assert "dropped" not in p.log(relay)
    assert p.stop(relay) == 0
