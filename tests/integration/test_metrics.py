"""METRICS_ADDRESS: /metrics counts a known workload exactly, /healthz and /readyz follow the
process, and an address that cannot be used stops the start (issue 13)."""
import os
import re
import signal
import socket
import urllib.error
import urllib.request

import svc
from svc import RECORDER

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(port, path):
    """(status, body) of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10) as r:
            return r.status, r.read().decode(), r.headers.get("Content-Type")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers.get("Content-Type")


def parse(text):
    """{(name, frozenset(labels)): value} of a text exposition; checks every line's syntax."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def scrape(port):
    status, body, ctype = get(port, "/metrics")
    assert status == 200, body
    assert ctype.startswith("text/plain; version=0.0.4"), ctype
    return parse(body)


def value(samples, name, **labels):
    """The sum of name's samples whose labels include these (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def delta(before, after, name, **labels):
    return value(after, name, **labels) - value(before, name, **labels)


def test_consumer_counts_a_known_workload_exactly(project, broker):
    port = free_port()
    p = project.setup_consumer(RECORDER, {"METRICS_ADDRESS": "127.0.0.1:%d" % port})
    p.start_consumer()
    q = p.queue()
    before = scrape(port)
    assert value(before, "svccomm_build_info") == 1
    assert value(before, "process_start_time_seconds") > 1.7e9
    for i in range(100):
        broker.publish(p.exchange(), "ok", {"n": i})
    for i in range(3):
        broker.publish(p.exchange(), "bad", {"n": 1000 + i, "permanent": True})
    svc.wait_until(lambda: p.record_count() == 100, 30, what="100 handled")
    svc.wait_until(lambda: value(scrape(port), "svccomm_consumer_messages_total",
                                 outcome="dead_lettered") == 3, 30, what="3 dead letters counted")
    svc.wait_until(lambda: value(scrape(port), "svccomm_consumer_in_flight_messages") == 0, 10,
                   what="the last batch acked")
    after = scrape(port)
    assert delta(before, after, "svccomm_consumer_received_total", queue=q) == 103
    assert delta(before, after, "svccomm_consumer_messages_total", queue=q, outcome="ok") == 100
    assert delta(before, after, "svccomm_consumer_messages_total", outcome="dead_lettered") == 3
    assert delta(before, after, "svccomm_consumer_messages_total", outcome="retried") == 0
    assert delta(before, after, "svccomm_consumer_dead_letters_total", queue=q,
                 reason="permanent-error") == 3
    assert delta(before, after, "svccomm_consumer_handler_failures_total") == 3
    assert delta(before, after, "svccomm_consumer_handler_duration_seconds_count") == 103
    assert delta(before, after, "svccomm_consumer_handler_duration_seconds_bucket",
                 le="+Inf") == 103
    # every message, the dead-lettered ones too, was acked in a committed batch
    assert delta(before, after, "svccomm_consumer_batch_size_messages_sum") == 103
    assert delta(before, after, "svccomm_consumer_commit_duration_seconds_count") == \
        delta(before, after, "svccomm_consumer_batch_size_messages_count") > 0
    node = re.search(r"@([^/]+)", p.settings["BROKER_CONNECTION_URL"]).group(1)
    assert value(after, "svccomm_amqp_connected", node=node) == 1
    assert value(after, "svccomm_postgres_connected") == 1
    assert value(after, "svccomm_consumer_consuming", queue=q) == 1
    assert value(after, "svccomm_lua_memory_bytes") > 0
    assert get(port, "/healthz")[0] == 200
    assert get(port, "/readyz")[0] == 200
    assert get(port, "/nothing")[0] == 404
    assert p.stop() == 0


def test_readyz_turns_503_while_rabbitmq_is_stopped_and_200_after(project):
    port = free_port()
    p = project.setup_consumer(RECORDER, {"METRICS_ADDRESS": "127.0.0.1:%d" % port})
    p.start_consumer()
    assert get(port, "/readyz")[0] == 200
    reconnects = value(scrape(port), "svccomm_amqp_reconnects_total")
    try:
        svc.stop_rabbitmq_app()
        svc.wait_until(lambda: get(port, "/readyz")[0] == 503, 30, what="/readyz 503")
        status, body, _ = get(port, "/readyz")
        assert "RabbitMQ not connected" in body
        assert get(port, "/healthz")[0] == 200  # alive: it is reconnecting, not stuck
        assert value(scrape(port), "svccomm_amqp_connected") == 0
    finally:
        svc.start_rabbitmq_app()
    svc.wait_until(lambda: get(port, "/readyz")[0] == 200, 60, what="/readyz 200 again")
    assert value(scrape(port), "svccomm_amqp_reconnects_total") == reconnects + 1
    assert p.stop() == 0


def test_unusable_metrics_address_is_a_configuration_error(project):
    p = project.setup_consumer(RECORDER)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        for cmd in ("runconsumer", "runpublisher"):
            r = p.run(cmd, env={"SVCCOMM_METRICS_ADDRESS": "127.0.0.1:%d" % port})
            assert r.returncode == 2, r.stderr
            assert "METRICS_ADDRESS" in r.stderr and "Address already in use" in r.stderr
    finally:
        taken.close()
    for bad in ("localhost", "127.0.0.1:0", "127.0.0.1:99999", ":9464", "a:b:9464"):
        r = p.run("runconsumer", env={"SVCCOMM_METRICS_ADDRESS": bad})
        assert r.returncode == 2, (bad, r.stderr)
        assert "METRICS_ADDRESS" in r.stderr, r.stderr
    r = p.run("runconsumer", env={"SVCCOMM_METRICS_ADDRESS": "no-such-host.invalid:9464"})
    assert r.returncode == 2, r.stderr
    assert "METRICS_ADDRESS" in r.stderr and "no-such-host.invalid" in r.stderr


def test_relay_counts_published_confirmed_and_returned_by_exchange(project, broker):
    port = free_port()
    p = project.setup_relay({"METRICS_ADDRESS": "127.0.0.1:%d" % port,
                             "PUBLISHER_UNROUTABLE": "drop"})
    routed, nowhere = p.exchange("routed"), p.exchange("nowhere")
    broker.exchange(routed)
    broker.exchange(nowhere)
    broker.queue(p.queue("in"), bind_to=[routed])
    p.start_relay()
    svc.wait_until(lambda: get(port, "/readyz")[0] == 200, 30, what="the relay ready")
    before = scrape(port)
    assert value(before, "svccomm_relay_partitions_held") > 0
    p.outbox_insert_many(routed, 50)
    p.outbox_insert_many(nowhere, 4)
    svc.wait_until(lambda: p.outbox_count() == 0, 30, what="every row sent or dropped")
    svc.wait_until(lambda: broker.count(p.queue("in")) == 50, 30, what="50 in the queue")
    after = scrape(port)
    for ex, published, confirmed, returned in ((routed, 50, 50, 0), (nowhere, 4, 0, 4)):
        assert delta(before, after, "svccomm_relay_events_total", exchange=ex,
                     outcome="published") == published
        assert delta(before, after, "svccomm_relay_events_total", exchange=ex,
                     outcome="confirmed") == confirmed
        assert delta(before, after, "svccomm_relay_events_total", exchange=ex,
                     outcome="returned") == returned
        assert delta(before, after, "svccomm_relay_events_total", exchange=ex,
                     outcome="nacked") == 0
    assert delta(before, after, "svccomm_relay_confirm_latency_seconds_count") == 54
    assert delta(before, after, "svccomm_relay_claim_duration_seconds_count") > 0
    assert value(after, "svccomm_relay_parked_total") == 0
    assert value(after, "svccomm_postgres_connected") == 1
    assert value(after, "svccomm_amqp_connected") == 1
    assert get(port, "/healthz")[0] == 200


def test_relay_backlog_and_oldest_due_age(project):
    port = free_port()
    p = project.setup_relay({"METRICS_ADDRESS": "127.0.0.1:%d" % port})
    p.start_relay()
    svc.wait_until(lambda: get(port, "/readyz")[0] == 200, 30, what="the relay ready")
    # with the broker stopped the relay cannot publish: due rows stay in the table
    svc.stop_rabbitmq_app()
    try:
        svc.wait_until(lambda: get(port, "/readyz")[0] == 503, 30, what="/readyz 503")
        svc.sql("INSERT INTO %s (exchange, routing_key, body, send_after) SELECT 'x', 'k', "
                "'{}', now() - interval '1 hour' FROM generate_series(1, 7)"
                % p.table("outbox"))
        svc.wait_until(lambda: value(scrape(port), "svccomm_relay_backlog_rows") == 7, 10,
                       what="backlog 7")
        assert value(scrape(port), "svccomm_relay_oldest_due_age_seconds") >= 3600
    finally:
        svc.start_rabbitmq_app()
    svc.wait_until(lambda: get(port, "/readyz")[0] == 200, 60, what="/readyz 200 again")


def test_supervisor_serves_the_sum_of_its_workers_and_keeps_a_dead_ones_counts(project, broker):
    port = free_port()
    p = project.setup_consumer(RECORDER, {"METRICS_ADDRESS": "127.0.0.1:%d" % port,
                                          "PREFETCH_COUNT": 10})
    proc = p.start("runconsumer", "--workers", "2")
    proc.wait_for_log("metrics on http", 10)
    svc.wait_until(lambda: value(scrape(port), "svccomm_consumer_consuming") == 2, 30,
                   what="both workers consuming")
    assert get(port, "/readyz")[0] == 200
    assert value(scrape(port), "svccomm_build_info") == 1  # the supervisor's, once
    for i in range(100):
        broker.publish(p.exchange(), "ok", {"n": i})
    svc.wait_until(lambda: p.record_count() == 100, 30, what="100 handled")
    svc.wait_until(lambda: value(scrape(port), "svccomm_consumer_messages_total",
                                 outcome="ok") == 100, 10, what="100 counted")
    s = scrape(port)
    assert value(s, "svccomm_consumer_received_total") == 100
    assert value(s, "svccomm_consumer_batch_size_messages_sum") == 100
    # a worker is killed: its counts stay in the sum, its replacement starts from zero
    pid = int(re.search(r"worker 1 started \(pid (\d+)\)", proc.log()).group(1))
    os.kill(pid, signal.SIGKILL)
    proc.wait_for_log(r"worker 1 \(pid %d\) killed by signal 9" % pid, 10)
    assert value(scrape(port), "svccomm_consumer_messages_total", outcome="ok") == 100
    svc.wait_until(lambda: value(scrape(port), "svccomm_consumer_consuming") == 2, 60,
                   what="the replacement consuming")
    for i in range(10):
        broker.publish(p.exchange(), "ok", {"n": 100 + i})
    svc.wait_until(lambda: p.record_count() == 110, 30, what="110 handled")
    svc.wait_until(lambda: value(scrape(port), "svccomm_consumer_messages_total",
                                 outcome="ok") == 110, 10, what="110 counted")
    assert value(scrape(port), "svccomm_consumer_received_total") == 110
    assert p.stop(proc) == 0


def test_healthz_turns_503_when_a_workers_loop_stops_turning(project):
    """A stopped worker (SIGSTOP) is a loop that no longer turns: after the bound (60 s +
    HANDLER_TIMEOUT) the supervisor's /healthz says 503 and names it; SIGCONT heals it."""
    port = free_port()
    p = project.setup_consumer(RECORDER, {"METRICS_ADDRESS": "127.0.0.1:%d" % port,
                                          "HANDLER_TIMEOUT": 1})
    proc = p.start("runconsumer", "--workers", "2")
    proc.wait_for_log("metrics on http", 10)
    svc.wait_until(lambda: get(port, "/readyz")[0] == 200, 30, what="both workers ready")
    pid = int(re.search(r"worker 2 started \(pid (\d+)\)", proc.log()).group(1))
    os.kill(pid, signal.SIGSTOP)
    try:
        assert get(port, "/healthz")[0] == 200  # not yet past the bound
        svc.wait_until(lambda: get(port, "/healthz")[0] == 503, 90, interval=1,
                       what="/healthz 503")
        assert "main loop stuck" in get(port, "/healthz")[1]
    finally:
        os.kill(pid, signal.SIGCONT)
    svc.wait_until(lambda: get(port, "/healthz")[0] == 200, 30, what="/healthz 200 again")
    assert p.stop(proc) == 0
