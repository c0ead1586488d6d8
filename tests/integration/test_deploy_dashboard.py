"""deploy/grafana/svccomm.json: every PromQL expression names metrics that a running consumer or
relay really exposes, and every metric they expose has a panel and a row in the README's
metrics table (issue 13, items 1 and 5)."""
import json
import re
from pathlib import Path

import svc
from svc import RECORDER
from test_metrics import free_port, get, scrape

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "svccomm.json"

# PromQL words that are not metric names (functions are recognised by the "(" after them)
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
            "or", "unless", "offset", "inf", "nan"}


def exprs(dashboard):
    out = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"]))
    walk(dashboard["panels"])
    return out


def metric_names(expr):
    """The metric names one PromQL expression selects."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)           # string literals
    e = re.sub(r"\{[^}]*\}", " ", e)                         # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)                        # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        word, rest = m.group(0), e[m.end():]
        if word.lower() in KEYWORDS or re.match(r"\s*\(", rest):
            continue
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] == "."):
            continue  # the exponent or suffix of a number
        names.add(word)
    return names


def test_metric_names_are_extracted_from_promql():
    assert metric_names('histogram_quantile(0.95, sum by (le, queue) '
                        '(rate(a_bucket{job=~"$job", x="y{z}"}[5m])))') == {"a_bucket"}
    assert metric_names("time() - process_start_time_seconds{job=~\"$job\"}") == \
        {"process_start_time_seconds"}
    assert metric_names("sum(rate(a_sum[1m])) / sum without (x) (rate(a_count[1m]))") == \
        {"a_sum", "a_count"}
    assert metric_names("up == bool 1e3") == {"up"}


def test_every_dashboard_query_names_a_metric_of_a_real_scrape(make_project, broker):
    dashboard = json.loads(DASHBOARD.read_text())
    queries = exprs(dashboard)
    assert len(queries) >= 20

    # a consumer that handled a message and dead-lettered one (so every series exists)
    consumer = make_project()
    cport = free_port()
    consumer.setup_consumer(RECORDER, {"METRICS_ADDRESS": "127.0.0.1:%d" % cport})
    consumer.start_consumer()
    broker.publish(consumer.exchange(), "ok", {"n": 1})
    broker.publish(consumer.exchange(), "bad", {"n": 2, "permanent": True})
    svc.wait_until(lambda: get(cport, "/metrics")[1].count(
        'svccomm_consumer_dead_letters_total{') == 1, 30, what="the dead letter counted")

    # a relay that published a row
    relay = make_project()
    rport = free_port()
    relay.setup_relay({"METRICS_ADDRESS": "127.0.0.1:%d" % rport})
    ex = relay.exchange("ev")
    broker.exchange(ex)
    broker.queue(relay.queue("in"), bind_to=[ex])
    relay.start_relay()
    relay.outbox_insert_many(ex, 1)
    svc.wait_until(lambda: relay.outbox_count() == 0, 30, what="the row published")

    exposed = {name for name, _ in scrape(cport)} | {name for name, _ in scrape(rport)}
    used = set()
    for title, expr in queries:
        names = metric_names(expr)
        assert names, "panel %r: no metric in %r" % (title, expr)
        missing = names - exposed
        assert not missing, "panel %r: %s not exposed (%s)" % (title, sorted(missing), expr)
        used |= names
    # and the other way round: every metric family exposed has a panel
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in exposed}
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert families - shown == set()
    # the README's table lists exactly the metrics exposed
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Metrics", 1)[1].split("\n### ", 1)[0]
    listed = set(re.findall(r"^\| `([a-z_:]+)` \|", section, re.M))
    assert listed == families
