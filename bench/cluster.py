#!/usr/bin/python3
"""svccomm scale-out benchmark: several relays, several consumer workers, and a 3-node quorum
queue vs one node.

    bench/cluster.py [--count N] [--workers N] [--svccomm PATH] [--cap SECONDS] [--repeat K]
                     [--no-scale]

First, on the single local node and a quorum queue (unless --no-scale): 1, 2 and 3 relays on
one outbox whose N rows go to 12 exchanges (relays share the outbox by exchange), and 1, 2 and
4 consumer workers with a no-op handler and with the transactional handler (INSERT + outbox
event); ratios to the first of each group.

Runs, in one go, the relay (N outbox rows -> broker, pipelined confirms, rows deleted) and the
consumer (N preloaded messages, a no-op handler) on a quorum queue, first against the single
local node (scripts/servers.sh), then against the 3-node cluster (scripts/servers.sh cluster,
started when it does not run and stopped afterwards only then; svccomm gets the three URLs as
its BROKER_CONNECTION_URL list and connects to the first). Prints the rates and the
cluster / single-node ratios of this run, and writes bench/results/cluster.md and cluster.json.
The pieces (projects, timing, preloading, rates) are bench/run.py's.

Needs /usr/bin/python3 with pika and psycopg2 (Debian python3-pika, python3-psycopg2).
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402  (bench/run.py)

SERVERS = os.path.join(R.ROOT, "scripts", "servers.sh")
QTYPE = "quorum"


def cluster_sh(*args, check=True):
    return subprocess.run(["bash", SERVERS, "cluster", *args], capture_output=True, text=True,
                          check=check)


def cluster_env():
    env = {}
    for line in cluster_sh("env").stdout.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            k, v = words[1].split("=", 1)
            env[k] = v
    return env


def measure(b, label, n, workers, extra):
    """One relay run and one consumer run; {"relay": rate, "consumer": rate} (messages/s)."""
    b.declared.clear()  # svccomm declares its queue on this broker once
    R.log("%s: relay, %d rows" % (label, n))
    relay = b.run_relay("cluster-" + label, QTYPE, n, extra=extra)
    R.log("  %.0f msg/s%s" % (relay["rate"], R.run_note(relay)))
    R.log("%s: consumer, %d messages, %d worker(s)" % (label, n, workers))
    cons = b.run_consumer("cluster-" + label, QTYPE, n, kind="noop", workers=workers,
                          extra=extra)
    R.log("  %.0f msg/s%s" % (cons["rate"], R.run_note(cons)))
    return {"relay": relay, "consumer": cons}


def scale_out(b, n, repeat):
    """Relays 1/2/3 and consumer workers 1/2/4 on the single node, each point `repeat` times in
    rounds (k = 1, 2, 3, then again), so load drift spreads over every k alike;
    {name: [(k, {"rate": median, "rates": [...]})]}."""
    points = [("relays", k, lambda k=k: b.run_relay("scale-r%d" % k, QTYPE, n, relays=k,
                                                    exchanges=12)) for k in (1, 2, 3)]
    for kind, key in (("noop", "workers no-op"), ("tx", "workers insert+outbox")):
        points += [(key, w, lambda w=w, kind=kind: b.run_consumer(
            "scale-%s-w%d" % (kind, w), QTYPE, n, kind=kind, workers=w)) for w in (1, 2, 4)]
    rates = {}
    for i in range(repeat):
        for key, k, fn in points:
            R.log("single node, round %d/%d: %s, k=%d, %d messages" % (i + 1, repeat, key, k, n))
            r = fn()
            R.log("  %.0f msg/s" % r["rate"])
            rates.setdefault((key, k), []).append(r["rate"])
    out = {}
    for key, k, _ in points:
        rs = rates[(key, k)]
        out.setdefault(key, []).append((k, {"rate": R.median(rs), "rates": rs}))
    return out


def delete_bench_queues(env):
    """The queues this run made on the cluster (svccomm's retry queues and DLQ too)."""
    ctl = shlex.split(env["SVCCOMM_CLUSTER_RABBITMQCTL_1"])
    names = subprocess.run(ctl + ["-q", "list_queues", "-p", "svccomm", "name",
                                  "--no-table-headers"], capture_output=True, text=True).stdout
    conn = R.pika.BlockingConnection(R.pika.URLParameters(env["SVCCOMM_CLUSTER_URL_1"]))
    try:
        ch = conn.channel()
        for q in names.split():
            if q.startswith(("bench.relay.", "bench.cons.")):
                ch.queue_delete(q)
    finally:
        conn.close()


def markdown(res, opts, total):
    out = ["# svccomm scaled out: relays, consumer workers, a 3-node RabbitMQ cluster", "",
           "`bench/cluster.py --count %d --workers %d` (%.0f s in all). Quorum queue, 300-byte "
           "events; rates without start-up; every ratio from this one run."
           % (opts.count, opts.workers, total), ""]
    if res.get("scale"):
        out += ["Single node: each rate is the median of %d rounds (k = 1, 2, 3/4, then again)."
                % opts.repeat, "",
                "| Single node | k = 1 (msg/s) | k = 2 | k = 3 or 4 | Ratios to k = 1 |",
                "|---|---:|---:|---:|---|"]
        for key, what in (("relays", "relays (k), N rows over 12 exchanges"),
                          ("workers no-op", "consumer workers (k), no-op handler"),
                          ("workers insert+outbox", "consumer workers (k), INSERT + outbox event")):
            runs = res["scale"][key]
            base = runs[0][1]["rate"]
            out.append("| %s | %s | %s |" % (
                what, " | ".join("%.0f" % r["rate"] for _, r in runs),
                " / ".join("%d: %.2f" % (k, r["rate"] / base if base else float("nan"))
                           for k, r in runs)))
        out.append("")
    out += ["| Run | Single node (msg/s) | 3-node cluster (msg/s) | Ratio cluster / single |",
            "|---|---:|---:|---:|"]
    for key, name in (("relay", "relay (runpublisher)"),
                      ("consumer", "consumer (no-op handler, %d worker(s))" % opts.workers)):
        s, c = res["single"][key]["rate"], res["cluster"][key]["rate"]
        out.append("| %s | %.0f | %.0f | %.2f |" % (name, s, c, c / s if s else float("nan")))
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=20000, help="rows / messages per run (20000)")
    ap.add_argument("--workers", type=int, default=1, help="consumer workers (1)")
    ap.add_argument("--svccomm", default=os.path.join(R.ROOT, "build", "svccomm"),
                    help="the svccomm binary (default build/svccomm)")
    ap.add_argument("--cap", type=float, default=30, help="seconds after which a run stops and "
                    "reports the rate so far (30)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of the relays and workers points (median; default 3)")
    ap.add_argument("--no-scale", action="store_true",
                    help="only the cluster comparison, not the relays and workers")
    o = ap.parse_args()
    opts = SimpleNamespace(svccomm=os.path.abspath(o.svccomm), cap=o.cap, count=o.count,
                           workers=o.workers, repeat=o.repeat)
    b = R.Bench(opts)
    t0 = time.monotonic()
    started = False
    res = {}
    try:
        b.setup()
        b.migrate()
        single_url, single_broker = b.broker_url, b.broker
        if not o.no_scale:
            res["scale"] = scale_out(b, o.count, o.repeat)
        res["single"] = measure(b, "single", o.count, o.workers, None)

        if cluster_sh("status", check=False).returncode != 0:
            R.log("cluster not running: scripts/servers.sh cluster start (1-3 minutes)")
            cluster_sh("start")
            started = True
        env = cluster_env()
        urls = [env["SVCCOMM_CLUSTER_URL_%d" % i] for i in (1, 2, 3)]
        # the benchmark's own clients and the raw preloader talk to node 1, svccomm gets all
        b.broker_url, b.broker = urls[0], R.Broker(urls[0])
        try:
            res["cluster"] = measure(b, "cluster", o.count, o.workers,
                                     {"BROKER_CONNECTION_URL": urls})
        finally:
            b.broker.close()
            delete_bench_queues(env)
            b.broker_url, b.broker = single_url, single_broker
    finally:
        R.Proc.stop_all()
        total = time.monotonic() - t0
        if "cluster" in res:
            md = markdown(res, opts, total)
            os.makedirs(R.RESULTS, exist_ok=True)
            with open(os.path.join(R.RESULTS, "cluster.md"), "w") as f:
                f.write(md)
            with open(os.path.join(R.RESULTS, "cluster.json"), "w") as f:
                json.dump({"command": ["bench/cluster.py"] + sys.argv[1:], "meta": b.meta,
                           "total_seconds": total, "runs": res}, f, indent=1, default=str)
            print()
            print(md)
        if b.env is not None:
            b.cleanup()
        if started:
            cluster_sh("stop", check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
