"""The benchmark harness (bench/run.py): interleaved ceiling/svccomm pairs and what it reports.

No timing is asserted: these tests check that the harness measures what it says it measures
(pair count, medians, spreads, CPU per message), not how fast anything is."""

import importlib.util
import json
import os
import subprocess

import pytest

import svc

RUN_PY = svc.ROOT / "bench" / "run.py"


def load_run_py():
    spec = importlib.util.spec_from_file_location("bench_run", RUN_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def result(rate, cpu=5.0, rss=1000):
    return {"rate": rate, "cpu_us_per_msg": cpu, "rss_peak_kib": rss, "startup_s": 0.1}


def test_pairs_summary_median_range_and_spread():
    b = load_run_py()
    s = b.summarize_pairs([(100.0, result(80, cpu=4, rss=900)), (200.0, result(150, cpu=6, rss=1200)),
                           (100.0, result(90, cpu=5, rss=1000))])
    assert s["ratio"] == pytest.approx(0.80)  # ratios 0.80, 0.75, 0.90
    assert (s["ratio_min"], s["ratio_max"]) == (pytest.approx(0.75), pytest.approx(0.90))
    assert s["rate"] == 90 and s["ceiling_median"] == 100.0
    assert s["rss_peak_kib"] == 1200 and s["cpu_us_per_msg"] == 5
    assert not s["spread"]
    assert len(s["pairs"]) == 3
    wide = b.summarize_pairs([(100.0, result(50)), (100.0, result(80)), (100.0, result(81))])
    assert wide["spread"] and "spread" in b.fmt_ratio(wide)
    assert b.fmt_ratio(s).startswith("0.80 (0.75–0.90, 3 pairs)")


def test_quick_run_reports_interleaved_pairs(servers, tmp_path):
    """A small real run: each relay and consumer row carries --repeat pairs, its ratio is the
    median of the pairs' ratios, and the CPU per message is measured."""
    res = subprocess.run(
        ["/usr/bin/python3", str(RUN_PY), "--quick", "--only", "relay,consumer", "--count", "600",
         "--repeat", "3", "--queue-types", "quorum", "--svccomm", svc.svccomm_bin()],
        capture_output=True, text=True, timeout=600, cwd=svc.ROOT)
    out = json.loads((svc.ROOT / "bench" / "results" / "latest.json").read_text())
    rows = [r for sec in ("relay", "consumer") for r in out["sections"][sec]["rows"]]
    assert not [r for r in rows if r.get("failed")], res.stdout[-3000:] + res.stderr[-3000:]
    assert res.returncode == 0, res.stderr[-3000:]
    paired = [r for r in rows if r.get("pairs")]
    assert sorted(r["name"] for r in paired) == ["consumer insert+outbox quorum",
                                                "consumer no-op quorum", "relay quorum"]
    for r in paired:
        ratios = sorted(p["ratio"] for p in r["pairs"])
        assert len(ratios) == 3
        assert r["ratio"] == pytest.approx(ratios[1])
        assert r["ratio_min"] == pytest.approx(ratios[0])
        assert r["ratio_max"] == pytest.approx(ratios[2])
        assert all(p["ceiling"] > 0 and p["rate"] > 0 for p in r["pairs"])
        assert r["extra"]["cpu_us_per_msg"] >= 0  # clock ticks: a small run may read 0
        assert "µs/msg" in r["settings"]
    md = (svc.ROOT / "bench" / "results" / "latest.md").read_text()
    assert "3 pairs)" in md


def test_metrics_section_compares_with_and_without_the_listener(servers):
    """The metrics section runs the relay and the no-op consumer without and with
    METRICS_ADDRESS (scraped while they run) and reports the ratio and both CPU figures."""
    res = subprocess.run(
        ["/usr/bin/python3", str(RUN_PY), "--quick", "--only", "metrics", "--count", "600",
         "--repeat", "1", "--svccomm", svc.svccomm_bin()],
        capture_output=True, text=True, timeout=600, cwd=svc.ROOT)
    out = json.loads((svc.ROOT / "bench" / "results" / "latest.json").read_text())
    rows = out["sections"]["metrics"]["rows"]
    assert not [r for r in rows if r.get("failed")], res.stdout[-3000:] + res.stderr[-3000:]
    assert sorted(r["name"] for r in rows) == [
        "consumer no-op with METRICS_ADDRESS / without", "relay with METRICS_ADDRESS / without"]
    for r in rows:
        assert r["ratio"] > 0 and len(r["pairs"]) == 1
        # CPU time comes in clock ticks (10 ms): a run this small may read 0
        assert r["extra"]["cpu_off_us_per_msg"] >= 0 and r["extra"]["cpu_us_per_msg"] >= 0
        assert "CPU per message without" in r["settings"]
def test_stage_trace_reads_id_ranges():
    b = load_run_py()
    assert b.parse_id_ranges("3-5,9,11-12") == [3, 4, 5, 9, 11, 12]
    assert b.parse_id_ranges("7,8...") == [7, 8]
    assert b.parse_id_ranges("") == []


def test_small_latency_run_reports_stages(servers, tmp_path):
    """A small real latency run: besides the end-to-end rows, each rate has a stages row with
    p50/p99 of every stage since the commit, read from the relay's and the consumer's debug
    lines for every event of the run."""
    res = subprocess.run(
        ["/usr/bin/python3", str(RUN_PY), "--only", "latency", "--queue-types", "quorum",
         "--lat-seconds", "1,1", "--svccomm", svc.svccomm_bin()],
        capture_output=True, text=True, timeout=600, cwd=svc.ROOT)
    out = json.loads((svc.ROOT / "bench" / "results" / "latest.json").read_text())
    rows = out["sections"]["latency"]["rows"]
    assert not [r for r in rows if r.get("failed")], res.stdout[-3000:] + res.stderr[-3000:]
    assert res.returncode == 0, res.stderr[-3000:]
    stages = {r["name"]: r for r in rows if r["name"].startswith("stages ")}
    assert sorted(stages) == ["stages 2000/s quorum", "stages 50/s quorum"]
    for r in stages.values():
        ex = r["extra"]
        assert ex["traced"] == ex["events"] > 0
        for st in ("claim", "publish", "confirm", "deliver", "handler"):
            assert set(ex["stages"][st]) >= {"p50", "p99"}
            assert st in r["settings"]
        assert {"in commit", "no cpu", "relay no cpu"} <= set(ex["stages"])
    md = (svc.ROOT / "bench" / "results" / "latest.md").read_text()
    assert "stages 2000/s quorum" in md and "since commit, p50/p99 ms" in md
    # the floors measured in the same run: the broker alone (bench/raw_latency) at each rate,
    # and the C writers alone with and without the outbox NOTIFY
    by_name = {r["name"]: r for r in rows}
    for rate in (50, 2000):
        raw = by_name["broker alone %d/s quorum" % rate]
        assert raw["extra"]["events"] == rate and raw["extra"]["confirmed"] == rate
        assert 0 < raw["extra"]["p50"] <= raw["extra"]["p99"] <= raw["extra"]["max"]
    for label in ("NOTIFY on", "NOTIFY off"):
        w = by_name["writers alone 2000/s, %s" % label]
        assert w["extra"]["events"] == w["extra"]["planned"] == 2000 and w["value"] > 0
    end = by_name["end-to-end 2000/s quorum"]
    assert end["extra"]["events"] == 2000  # every event the C writers committed was handled
