"""A 3-node RabbitMQ cluster with a quorum queue loses a node under load, twice (issue 15):
the relay's node is killed (kill -9 of its Erlang VM) while writers commit 20,000 events,
started again, then the consumer's node is killed. Nothing committed is lost, nothing rolled
back goes out, duplicates stay within the relay's confirm window plus the consumer's
prefetch per worker, and neither process needs a restart.

The cluster is `scripts/servers.sh cluster` (ports 5680-5682): started by this module when it
does not run (one to three minutes on a loaded machine), kept for the session, and stopped
at the end of the session only when this module started it."""
import os
import re
import shlex
import subprocess
import threading
import time

import pika
import psycopg2
import pytest

import svc

N_WRITERS = 2
TX_PER_WRITER = 100
ROWS_PER_TX = 100
COMMITTED = N_WRITERS * TX_PER_WRITER * ROWS_PER_TX  # 20,000
ROLLED_BACK_BASE = 1_000_000  # n of the rows written by transactions that roll back
WINDOW = 500  # PUBLISHER_WINDOW
PREFETCH = 100  # PREFETCH_COUNT
WORKERS = 2

HANDLER = """
local svccomm = require "svccomm"
svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  svccomm.db.query("INSERT INTO $TABLE (n) VALUES ($1)", body.n)
end)
"""


def servers_sh(*args, timeout=600):
    return subprocess.run(["bash", str(svc.SERVERS_SH), "cluster", *args], capture_output=True,
                          text=True, timeout=timeout)


def cluster_env():
    env = {}
    for line in servers_sh("env").stdout.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            env[key] = value
    return env


@pytest.fixture(scope="session")
def cluster(servers):
    """The 3-node cluster runs; its variables (SVCCOMM_CLUSTER_*) as a dict."""
    started = False
    if servers_sh("status").returncode != 0:
        r = servers_sh("start", timeout=900)
        assert r.returncode == 0, r.stdout + r.stderr
        started = True
    yield cluster_env()
    if started:
        servers_sh("stop")


def ctl(env, node, *args):
    """rabbitmqctl on cluster node `node` (1..3); its stdout."""
    cmd = shlex.split(env["SVCCOMM_CLUSTER_RABBITMQCTL_%d" % node])
    r = subprocess.run(cmd + ["-q", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def node_of_port(env, port):
    for i in (1, 2, 3):
        if env["SVCCOMM_CLUSTER_URL_%d" % i].split("@", 1)[1].startswith("localhost:%d/" % port):
            return i
    raise AssertionError("no cluster node on port %d" % port)


def node_in_use(env, proc):
    """The cluster node (1..3) the process connected to last, from its log line."""
    ports = re.findall(r"using broker node localhost:(\d+) ", proc.log())
    assert ports, proc.log()
    return node_of_port(env, int(ports[-1]))


def members_online(env, node, queue):
    """How many members of the quorum queue are online, seen from `node`."""
    for line in ctl(env, node, "list_queues", "-p", "svccomm", "name", "online",
                    "--no-table-headers").splitlines():
        name, _, online = line.partition("\t")
        if name == queue:
            return len([m for m in online.strip("[]").split(",") if m.strip()])
    return 0


class Writers:
    """N_WRITERS threads committing TX_PER_WRITER transactions of ROWS_PER_TX outbox rows each
    (bodies {"n": unique}); every 10th transaction is preceded by one that writes 20 rows and
    rolls back. The writers pause after `hold_at` committed rows until release() is called,
    so rows are still being written when the second node dies."""

    def __init__(self, table, exchange, hold_at):
        self.table, self.exchange = table, exchange
        self.committed = 0
        self.lock = threading.Lock()
        self.hold_at = hold_at
        self.go = threading.Event()
        self.errors = []
        self.threads = [threading.Thread(target=self.run, args=(w,), daemon=True)
                        for w in range(N_WRITERS)]

    def start(self):
        for t in self.threads:
            t.start()

    def release(self):
        self.go.set()

    def join(self, timeout):
        for t in self.threads:
            t.join(timeout)
        return not any(t.is_alive() for t in self.threads)

    def insert(self, cur, first, count):
        cur.execute("INSERT INTO %s (exchange, routing_key, body) SELECT %%s, 'ev', "
                    "'{\"n\":' || g || '}' FROM generate_series(%%s, %%s) g"
                    % self.table, (self.exchange, first, first + count - 1))

    def run(self, w):
        try:
            conn = psycopg2.connect(os.environ["SVCCOMM_DATABASE_URL"], connect_timeout=5)
            cur = conn.cursor()
            for tx in range(TX_PER_WRITER):
                if tx % 10 == 5:
                    self.insert(cur, ROLLED_BACK_BASE + (w * TX_PER_WRITER + tx) * 20, 20)
                    conn.rollback()
                self.insert(cur, (w * TX_PER_WRITER + tx) * ROWS_PER_TX + 1, ROWS_PER_TX)
                conn.commit()
                with self.lock:
                    self.committed += ROWS_PER_TX
                    hold = self.committed >= self.hold_at
                if hold:
                    self.go.wait(300)
                time.sleep(0.1)  # a steady flow rather than one burst
            conn.close()
        except Exception as e:  # reported by the test
            self.errors.append(repr(e))


def handled(table):
    return svc.sql("SELECT count(DISTINCT n) FROM %s" % table)[0][0]


def delete_on_cluster(env, prefix):
    """Removes the queues and exchanges whose names start with prefix from the cluster."""
    for node in (1, 2, 3):
        try:
            queues = ctl(env, node, "list_queues", "-p", "svccomm", "name", "--no-table-headers")
            exchanges = ctl(env, node, "list_exchanges", "-p", "svccomm", "name",
                            "--no-table-headers")
        except AssertionError:
            continue
        conn = pika.BlockingConnection(pika.URLParameters(env["SVCCOMM_CLUSTER_URL_%d" % node]))
        ch = conn.channel()
        for q in queues.split():
            if q.startswith(prefix):
                ch.queue_delete(q)
        for ex in exchanges.split():
            if ex.startswith(prefix):
                ch.exchange_delete(ex)
        conn.close()
        return


def test_node_loss_under_load_loses_nothing(cluster, project):
    env = cluster
    urls = [env["SVCCOMM_CLUSTER_URL_%d" % i] for i in (1, 2, 3)]
    p = project
    ex, queue, outbox = p.exchange(), p.queue(), p.table("outbox")
    relay_settings = {"BROKER_CONNECTION_URL": urls, "PUBLISHER_WINDOW": WINDOW}
    p.setup_relay(relay_settings)  # the outbox table
    # the consumer tries the nodes from the third on: the two kills hit one process each
    p.setup_consumer(HANDLER, {
        "BROKER_CONNECTION_URL": urls[2:] + urls[:2],
        "QUEUE_ARGUMENTS": {"x-queue-type": "quorum"},
        "PREFETCH_COUNT": PREFETCH,
    })
    table = p.table()
    try:
        consumer = p.start_consumer("--workers", str(WORKERS))
        svc.wait_until(lambda: consumer.log().count("consuming '%s'" % queue) >= WORKERS, 60,
                       what="both workers consuming")
        p.write_settings(dict(svc.RELAY_SETTINGS, **relay_settings))
        relay = p.start_relay()
        writers = Writers(outbox, ex, hold_at=COMMITTED * 3 // 5)
        writers.start()

        # 1. the relay's node dies mid-flow, then comes back
        svc.wait_until(lambda: handled(table) >= 2000, 120, interval=0.2, what="2,000 handled")
        relay_node = node_in_use(env, relay)
        r = servers_sh("kill-node", str(relay_node))
        assert r.returncode == 0, r.stderr
        survivor = 1 + relay_node % 3
        svc.wait_until(lambda: node_in_use(env, relay) != relay_node, 60,
                       what="the relay on another node")
        r = servers_sh("start-node", str(relay_node))
        assert r.returncode == 0, r.stderr
        svc.wait_until(lambda: members_online(env, survivor, queue) == 3, 120, interval=1,
                       what="the quorum queue's 3 members online")

        # 2. then the consumer's node, while the rest of the events are being written
        writers.release()
        svc.wait_until(lambda: handled(table) >= COMMITTED * 3 // 5 + 1000, 120, interval=0.2,
                       what="the flow going again")
        cons_node = node_in_use(env, consumer)
        r = servers_sh("kill-node", str(cons_node))
        assert r.returncode == 0, r.stderr
        # (the consumer connects to another node at once; while its retry queues and
        # dead-letter queue are classic queues, which live on the node that declared them and
        # cannot be declared while it is down, consuming resumes once that node is back)
        svc.wait_until(lambda: node_in_use(env, consumer) != cons_node, 60,
                       what="the consumer on another node")
        r = servers_sh("start-node", str(cons_node))
        assert r.returncode == 0, r.stderr

        assert writers.join(300), "the writers did not finish"
        assert writers.errors == []
        svc.wait_until(lambda: handled(table) >= COMMITTED, 300, interval=0.5,
                       what="every committed event handled")
        svc.wait_until(lambda: svc.sql("SELECT count(*) FROM %s" % outbox)[0][0] == 0, 60,
                       interval=0.5, what="the outbox emptied (every row confirmed)")

        total, distinct, lo, hi, rolled = svc.sql(
            "SELECT count(*), count(DISTINCT n), min(n), max(n), "
            "count(*) FILTER (WHERE n >= %s) FROM %s" % (ROLLED_BACK_BASE, table))[0]
        duplicates = total - distinct
        print("cluster: %d committed, %d handled, %d duplicate(s); relay node %d and consumer "
              "node %d killed" % (COMMITTED, distinct, duplicates, relay_node, cons_node))
        assert rolled == 0  # no rolled-back event was published
        assert (distinct, lo, hi) == (COMMITTED, 1, COMMITTED)  # lost 0
        # each loss re-sends at most the relay's unconfirmed window and hands back at most
        # the consumer's unacked messages (prefetch per worker)
        assert duplicates <= 2 * (WINDOW + PREFETCH * WORKERS), duplicates
        assert relay.running() and consumer.running()  # recovered by themselves
        assert consumer.log().count("consuming '%s'" % queue) >= 2 * WORKERS
        assert p.stop(relay) == 0
        assert p.stop(consumer) == 0
    finally:
        if servers_sh("status").returncode != 0:  # a node this test killed stays down
            servers_sh("start", timeout=900)
        delete_on_cluster(env, p.prefix)
