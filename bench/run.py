#!/usr/bin/python3
"""svccomm benchmark: relay and consumer throughput against raw ceilings measured in the same run.

    bench/run.py [--quick] [--only SECTION[,SECTION...]] [--svccomm PATH] [--queue-types LIST]
                 [--main-type TYPE] [--count N] [--mem-messages N] [--scale-count N] [--repeat K]
                 [--lat-seconds A,B] [--lat-handler query|exec] [--no-lat-stages]

The relay and consumer rows are measured as K interleaved pairs (ceiling, svccomm, ceiling,
svccomm, ...) and report the median ratio with its min-max; see bench/README.md.

Sections (in this order): ceilings, relay, consumer, metrics, latency, memory, scaling. Each section
prints its duration; a section that fails prints "FAILED: reason" in the table and the run goes
on. The ceilings always run when a section that needs a ratio is selected.

Uses the project's local servers (scripts/servers.sh; started when not running), the ceiling
programs of bench/ (built into build-bench/ when missing) and the svccomm binary (default
build/svccomm). Writes bench/results/latest.md and bench/results/latest.json, and the logs of
every svccomm process to bench/results/logs/.

Needs /usr/bin/python3 with pika and psycopg2 (Debian python3-pika, python3-psycopg2).
"""

import argparse
import bisect
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import pika
import psycopg2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
RESULTS = os.path.join(BENCH, "results")
LOGS = os.path.join(RESULTS, "logs")
BUILD_BENCH = os.path.join(ROOT, "build-bench")

SECTIONS = ["ceilings", "relay", "consumer", "metrics", "latency", "memory", "scaling"]
QUEUE_TYPES = ["v1", "v2", "quorum"]
OUTBOX = "bench_outbox"  # the relay's table in the benchmark (never the application's)
SINK = "bench_sink"  # rows written by the transactional handler
LAT = "bench_lat"  # receive times written by the latency handler

MiB = 1024 * 1024

# The stages of an event, in order: the writer's COMMIT returned, the relay's claim returned,
# the relay published it, the relay read its confirm, the consumer took the delivery, the
# handler was entered. confirm is off the delivery path (the broker delivers before or while it
# confirms); the steps below split the path to the handler.
STAGES = ["commit", "claim", "publish", "confirm", "deliver", "handler"]
STEPS = {"commit>claim": ("commit", "claim"), "claim>publish": ("claim", "publish"),
         "publish>deliver": ("publish", "deliver"), "deliver>handler": ("deliver", "handler"),
         "publish>confirm": ("publish", "confirm")}


class BenchError(Exception):
    """A measurement that could not be made; the text goes into the table as FAILED: text."""


def log(msg):
    print(msg, flush=True)


def queue_args(qtype):
    if qtype == "v2":
        return {"x-queue-version": 2}
    if qtype == "quorum":
        return {"x-queue-type": "quorum"}
    if qtype == "v1":
        return {}
    raise ValueError("unknown queue type %r" % qtype)


# --- Lua settings -------------------------------------------------------------------------------


def lua_value(v, indent=""):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        out = ['"']
        for ch in v:
            if ch in '"\\':
                out.append("\\" + ch)
            elif ord(ch) < 32 or ord(ch) == 127:
                out.append("\\%03d" % ord(ch))
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)
    if isinstance(v, (list, tuple)):
        return "{ " + ", ".join(lua_value(x) for x in v) + " }"
    if isinstance(v, dict):
        items = ["[%s] = %s" % (lua_value(str(k)), lua_value(x)) for k, x in v.items()]
        return "{ " + ", ".join(items) + " }"
    raise TypeError("cannot write %r as Lua" % (v,))


def write_settings(path, settings):
    with open(path, "w") as f:
        f.write("-- written by bench/run.py\nreturn {\n")
        for k, v in settings.items():
            f.write("  %s = %s,\n" % (k, lua_value(v)))
        f.write("}\n")


# --- stage times ---------------------------------------------------------------------------------


def parse_id_ranges(text):
    """The relay's id ranges "3-5,9" -> [3, 4, 5, 9] (a trailing "..." marks ids left out)."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part or part.endswith("..."):
            part = part[:-3] if part.endswith("...") else part
            if not part:
                continue
        if "-" in part[1:]:
            k = part.index("-", 1)
            a, b = int(part[:k]), int(part[k + 1:])
            out.extend(range(a, b + 1))
        else:
            out.append(int(part))
    return out


class StageTrace:
    """Stage times of events from the debug JSON lines of the relay ("batch times": claimed,
    published; "confirm times": confirmed) and of the consumer ("message ... received" with
    received_at), read incrementally from their log files. Keyed by outbox row id (text); the
    consumer's message_id is "<APP_ID>:<row id>". The first time seen wins (a redelivery or a
    second publish is later)."""

    def __init__(self, relay_log, consumer_log):
        self.files = {relay_log: 0, consumer_log: 0}
        self.t = {}
        self.commits = []  # the consumer's COMMITs: (began, ended), in order
        self.runq = None  # RunDelay of the consumer
        self.relay_runq = None  # and of the relay

    def in_commit(self, a, b):
        """Seconds of [a, b] the consumer spent in a COMMIT (it reads no delivery then)."""
        k = bisect.bisect_left(self.commits, (a,)) - 1
        total = 0.0
        for began, ended in self.commits[max(k, 0):]:
            if began >= b:
                break
            total += max(0.0, min(b, ended) - max(a, began))
        return total

    def _set(self, eid, stage, value):
        d = self.t.setdefault(eid, {})
        if stage not in d:
            d[stage] = value

    def read(self):
        for path, off in list(self.files.items()):
            with open(path, "rb") as f:
                f.seek(off)
                data = f.read()
            end = data.rfind(b"\n") + 1  # a line still being written is read next time
            self.files[path] = off + end
            for line in data[:end].splitlines():
                if not line.startswith(b"{"):
                    continue
                try:
                    j = json.loads(line)
                except ValueError:
                    continue
                msg = j.get("msg", "")
                if msg == "batch times":
                    for i in parse_id_ranges(j["ids"]):
                        self._set(str(i), "claim", float(j["claimed"]))
                        self._set(str(i), "publish", float(j["published"]))
                elif msg == "confirm times":
                    for i in parse_id_ranges(j["ids"]):
                        self._set(str(i), "confirm", float(j["confirmed"]))
                elif msg == "commit times":
                    self.commits.append((float(j["began"]), float(j["ended"])))
                elif "received_at" in j and "message_id" in j:
                    self._set(str(j["message_id"]).rsplit(":", 1)[-1], "deliver",
                              float(j["received_at"]))

    def times(self, eid):
        return dict(self.t.get(eid, {}))


class RunDelay:
    """Samples, every 5 ms in a thread, how long the processes of a Proc (a consumer and its
    workers) have waited for a CPU (/proc/<pid>/schedstat: time on a run queue), to tell a
    consumer that was not scheduled from one that had nothing to read."""

    def __init__(self, proc):
        self.proc = proc
        self.samples = []  # (wall time, run-queue wait in s, summed over the processes)
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop.is_set():
            total = 0
            for pid in list(self.proc.pids):
                try:
                    with open("/proc/%d/schedstat" % pid) as f:
                        total += int(f.read().split()[1])
                except (OSError, ValueError, IndexError):
                    pass
            self.samples.append((time.time(), total / 1e9))
            self.stop.wait(0.005)

    def waited(self, a, b):
        """Seconds the processes waited for a CPU between a and b (sample resolution)."""
        k = bisect.bisect_right(self.samples, (a,)) - 1
        j = bisect.bisect_left(self.samples, (b,))
        if k < 0 or j >= len(self.samples):
            return 0.0
        return max(0.0, self.samples[j][1] - self.samples[k][1])

    def close(self):
        self.stop.set()
        self.t.join(1)


# --- processes ----------------------------------------------------------------------------------


def proc_tree(pid):
    """pid and all its descendants (scan of /proc)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def mem_kib(pid):
    """(VmRSS, VmHWM, RssAnon) of a process in KiB, or None when it is gone. RssAnon is the
    process's private memory; the rest of VmRSS is pages of files (the binary and its shared
    libraries)."""
    rss = hwm = anon = None
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
                elif line.startswith("RssAnon:"):
                    anon = int(line.split()[1])
    except OSError:
        return None
    if rss is None or hwm is None:
        return None
    return rss, hwm, anon or 0


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid):
    """utime + stime of a process in clock ticks, or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
        fields = stat[stat.rindex(")") + 2:].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None


class Proc:
    """A svccomm process started by the benchmark: its log, its memory, a bounded stop."""

    running = []

    def __init__(self, name, argv, env):
        os.makedirs(LOGS, exist_ok=True)
        self.name = name
        self.log_path = os.path.join(LOGS, name + ".log")
        self.logf = open(self.log_path, "wb")
        self.started = time.monotonic()
        self.p = subprocess.Popen(argv, env=env, stdout=self.logf, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.p.pid
        self.peak_root = 0  # KiB
        self.peak_anon_root = 0  # KiB, the largest RssAnon sampled
        self.peak_child = 0  # KiB, the largest descendant (a worker under --workers)
        self.rss_root = 0
        self.rss_child = 0
        self.pids = [self.pid]
        self.last_tree = 0.0
        self.cpu_ticks = {}  # pid -> utime + stime (clock ticks), the last value read
        Proc.running.append(self)

    def sample(self):
        """Record memory of the process and its children (worker processes)."""
        now = time.monotonic()
        if now - self.last_tree > 0.5:
            self.pids = proc_tree(self.pid)
            self.last_tree = now
        child_rss = 0
        for p in self.pids:
            t = cpu_ticks(p)
            if t is not None:
                self.cpu_ticks[p] = max(t, self.cpu_ticks.get(p, 0))
            m = mem_kib(p)
            if m is None:
                continue
            if p == self.pid:
                self.rss_root = m[0]
                self.peak_root = max(self.peak_root, m[1])
                self.peak_anon_root = max(self.peak_anon_root, m[2])
            else:
                child_rss = max(child_rss, m[0])
                self.peak_child = max(self.peak_child, m[1])
        self.rss_child = child_rss

    def cpu_seconds(self):
        """CPU time (user + system) used by the process and its workers, as last sampled."""
        return sum(self.cpu_ticks.values()) / CLK_TCK

    def worker_peak(self):
        """Peak RSS (KiB) of the process that handles messages: a child when there is one."""
        return self.peak_child or self.peak_root

    def worker_rss(self):
        return self.rss_child or self.rss_root

    def alive(self):
        return self.p.poll() is None

    def check_alive(self):
        if not self.alive():
            raise BenchError("%s exited with status %s: %s" % (self.name, self.p.returncode,
                                                               self.last_log_line()))

    def last_log_line(self):
        try:
            with open(self.log_path, "rb") as f:
                lines = [l for l in f.read().decode("utf-8", "replace").splitlines() if l.strip()]
            return lines[-1][:300] if lines else "(no output)"
        except OSError:
            return "(no log)"

    def stop(self, timeout=15):
        """SIGTERM, wait, then SIGKILL to its own process group. Returns the exit status."""
        if self.alive():
            self.sample()
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait(5)
        # Leftover workers of the process are in its own process group (start_new_session).
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.logf.close()
        if self in Proc.running:
            Proc.running.remove(self)
        return self.p.returncode

    @classmethod
    def stop_all(cls):
        for p in list(cls.running):
            try:
                p.stop(5)
            except Exception:
                pass


# --- servers ------------------------------------------------------------------------------------


def retrying(errors, reconnect, fn, what):
    """Run fn(); on a lost connection (a server restarted under us), reconnect for up to 30 s
    and run it once more."""
    try:
        return fn()
    except errors as e:
        log("  note: %s: connection lost (%s), reconnecting" % (what, reason(e)))
    deadline = time.monotonic() + 30
    while True:
        try:
            reconnect()
            break
        except errors as e:
            if time.monotonic() > deadline:
                raise BenchError("%s: cannot reconnect: %s" % (what, reason(e)))
            time.sleep(0.5)
    return fn()


class Broker:
    """A pika connection for topology and queue counts (passive declares)."""

    def __init__(self, url):
        self.url = url
        self.conn = None
        self.ch = None

    def _connect(self):
        self.conn = pika.BlockingConnection(pika.URLParameters(self.url))
        self.ch = None

    def channel(self):
        if self.conn is None or self.conn.is_closed:
            self._connect()
        if self.ch is None or self.ch.is_closed:
            self.ch = self.conn.channel()
        return self.ch

    def _do(self, fn, what):
        return retrying(pika.exceptions.AMQPConnectionError, self._connect, fn, "RabbitMQ " + what)

    def server_version(self):
        self.channel()
        props = getattr(self.conn._impl, "server_properties", None) or {}
        v = props.get("version", b"?")
        return v.decode() if isinstance(v, bytes) else str(v)

    def count(self, queue):
        """(messages ready, consumers) of a queue, or None when it does not exist."""
        def fn():
            try:
                ok = self.channel().queue_declare(queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                self.ch = None
                return None
            return ok.method.message_count, ok.method.consumer_count
        return self._do(fn, "queue count")

    def declare(self, exchange, queue, qtype, fresh=True):
        def fn():
            ch = self.channel()
            ch.exchange_declare(exchange, "topic", durable=True)
            if fresh:
                ch.queue_delete(queue)
            ch.queue_declare(queue, durable=True, arguments=queue_args(qtype))
            ch.queue_bind(queue, exchange, "#")
        self._do(fn, "declare")

    def delete_queue(self, queue):
        def fn():
            try:
                self.channel().queue_delete(queue)
            except pika.exceptions.ChannelClosedByBroker:
                self.ch = None
        self._do(fn, "queue.delete")

    def purge(self, queue):
        self._do(lambda: self.channel().queue_purge(queue), "queue.purge")

    def close(self):
        try:
            if self.conn and self.conn.is_open:
                self.conn.close()
        except Exception:
            pass


class Db:
    """An autocommit psycopg2 connection that reconnects once when a server restart cut it."""

    def __init__(self, url):
        self.url = url
        self.conn = None
        self._connect()

    def _connect(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg2.Error:
                pass
        self.conn = psycopg2.connect(self.url)
        self.conn.autocommit = True
        with self.conn.cursor() as c:
            c.execute("SET client_min_messages = warning")

    def q(self, sql, *params):
        def fn():
            with self.conn.cursor() as c:
                c.execute(sql, params)
                return c.fetchall() if c.description else None
        return retrying((psycopg2.OperationalError, psycopg2.InterfaceError), self._connect, fn,
                        "PostgreSQL")

    def one(self, sql, *params):
        rows = self.q(sql, *params)
        return rows[0][0] if rows else None

    def close(self):
        self.conn.close()


def envelope_sql(size, exchange, event_type, id_expr):
    """SQL expression of a svccomm-style envelope of about `size` bytes for row id_expr (the id
    is counted as 6 digits); below the size of an envelope, {"id":"..","p":"xx.."}."""
    head = '{"eventId":"'
    mid = ('","eventTime":"2026-01-01T00:00:00Z","eventType":"%s","aggregate":"%s",'
           '"payload":{"p":"' % (event_type, exchange))
    tail = '"}}'
    pad = size - len(head) - 6 - len(mid) - len(tail)
    if pad < 1:
        head, mid, tail = '{"id":"', '","p":"', '"}'
        pad = max(1, size - len(head) - 6 - len(mid) - len(tail))
    return "'%s' || %s || '%s' || repeat('x', %d) || '%s'" % (head, id_expr, mid, pad, tail)


# --- the benchmark ------------------------------------------------------------------------------


class Bench:
    def __init__(self, opts):
        self.o = opts
        self.tmp = tempfile.mkdtemp(prefix="svccomm-bench-")
        self.results = {}  # section -> {"seconds", "status", "rows"}
        self.ceiling = {}  # qtype -> {"publish": rate, "window": w, "consume": rate}
        self.declared = set()  # consumer queues svccomm already declared in this run
        self.meta = {}
        self.env = None

    # --- set-up ---------------------------------------------------------------------------

    def setup(self):
        st = subprocess.run([os.path.join(ROOT, "scripts/servers.sh"), "status"],
                            capture_output=True, text=True)
        if st.returncode != 0:
            log("servers not running: scripts/servers.sh start")
            subprocess.run([os.path.join(ROOT, "scripts/servers.sh"), "start"], check=True)
        env = subprocess.run([os.path.join(ROOT, "scripts/servers.sh"), "env"], check=True,
                             capture_output=True, text=True).stdout
        vals = {}
        for line in env.splitlines():
            if line.startswith("export ") and "=" in line:
                k, v = line[len("export "):].split("=", 1)
                vals[k] = shlex.split(v)[0] if v else ""
        self.broker_url = os.environ.get("SVCCOMM_BROKER_URL") or vals["SVCCOMM_BROKER_URL"]
        self.db_url = os.environ.get("SVCCOMM_DATABASE_URL") or vals["SVCCOMM_DATABASE_URL"]
        # svccomm gets its URLs from the settings file only: the consumer without database
        # must not inherit SVCCOMM_DATABASE_URL.
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("SVCCOMM_BROKER_URL", "SVCCOMM_DATABASE_URL", "SVCCOMM_SETTINGS",
                                 "SVCCOMM_LOG_LEVEL")}
        self.build_ceilings()
        self.broker = Broker(self.broker_url)
        self.db = Db(self.db_url)
        self.meta = self.versions()

    def build_ceilings(self):
        need = [os.path.join(BUILD_BENCH, b)
                for b in ("raw_publish", "raw_consume", "pg_outbox", "pg_handler", "pg_writer", "raw_latency")]
        if not os.path.isdir(BUILD_BENCH):
            subprocess.run(["cmake", "-S", BENCH, "-B", BUILD_BENCH, "-DCMAKE_BUILD_TYPE=Release"],
                           check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", BUILD_BENCH, "-j2"], check=True,
                       stdout=subprocess.DEVNULL)
        for b in need:
            if not os.access(b, os.X_OK):
                raise SystemExit("bench: %s was not built" % b)

    def versions(self):
        m = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "nproc": os.cpu_count(),
             "cpu": "?", "kernel": platform.release()}
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        m["cpu"] = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        m["rabbitmq"] = self.broker.server_version()
        m["postgresql"] = self.db.one("SHOW server_version")
        try:
            out = subprocess.run(["pkg-config", "--modversion", "librabbitmq"],
                                 capture_output=True, text=True).stdout.strip()
            m["rabbitmq-c"] = out or "?"
        except OSError:
            m["rabbitmq-c"] = "?"
        m["svccomm"] = "missing (%s)" % self.o.svccomm
        if os.access(self.o.svccomm, os.X_OK):
            try:
                out = subprocess.run([self.o.svccomm, "version"], capture_output=True, text=True,
                                     timeout=10).stdout.splitlines()
                m["svccomm"] = out[0] if out else "?"
            except (OSError, subprocess.TimeoutExpired) as e:
                m["svccomm"] = "unusable: %s" % e
        try:
            rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True).stdout.strip()
            m["git"] = rev + ("+dirty" if dirty else "")
        except OSError:
            m["git"] = "?"
        return m

    # --- svccomm helpers ------------------------------------------------------------------

    def need_svccomm(self):
        if not os.access(self.o.svccomm, os.X_OK):
            raise BenchError("svccomm binary not found at %s (cmake -S . -B build && "
                             "cmake --build build -j2)" % self.o.svccomm)

    def project(self, name, settings, consumers_lua=None):
        """A temp project dir with settings.lua (and apps/bench/consumers.lua). Returns the
        settings path."""
        d = os.path.join(self.tmp, name)
        os.makedirs(os.path.join(d, "apps", "bench"), exist_ok=True)
        s = {"APP_ID": "svccomm-bench", "BROKER_CONNECTION_URL": self.broker_url,
             "STATS_INTERVAL": 3600, "OUTBOX_TABLE": OUTBOX}
        s.update(settings)
        s.update(self.o.settings)
        if consumers_lua is not None:
            with open(os.path.join(d, "apps", "bench", "consumers.lua"), "w") as f:
                f.write(consumers_lua)
            s.setdefault("INSTALLED_APPS", ["bench"])
        else:
            s.setdefault("INSTALLED_APPS", [])
        path = os.path.join(d, "settings.lua")
        write_settings(path, s)
        return path

    def svccomm(self, name, settings_path, *args):
        return Proc(name, [self.o.svccomm, "--settings", settings_path] + list(args), self.env)

    def migrate(self):
        self.need_svccomm()
        path = self.project("migrate", {"DATABASE_URL": self.db_url})
        r = subprocess.run([self.o.svccomm, "--settings", path, "migrate"], env=self.env,
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise BenchError("svccomm migrate failed: %s" % (r.stderr.strip() or r.stdout.strip())[-300:])
        self.db.q("CREATE TABLE IF NOT EXISTS %s (event_id text NOT NULL, "
                  "received_at timestamptz NOT NULL DEFAULT clock_timestamp())" % SINK)
        self.db.q("CREATE TABLE IF NOT EXISTS %s (event_id text NOT NULL, "
                  "received_at timestamptz NOT NULL DEFAULT clock_timestamp())" % LAT)
        # handler entry: the handler's own clock (svccomm.core.time), seconds since the epoch
        self.db.q("ALTER TABLE %s ADD COLUMN IF NOT EXISTS handler_at float8" % LAT)

    def fill_outbox(self, n, size, exchange, event_type="bench.event", exchanges=1):
        """n due rows of about `size` bytes, inserted by the server in chunks; with exchanges
        E > 1 row g goes to exchange "<exchange>.<g mod E>"."""
        self.db.q("TRUNCATE %s" % OUTBOX)
        body = envelope_sql(size, exchange, event_type, "g")
        if exchanges > 1:
            self.db.q("INSERT INTO %s (exchange, routing_key, body) SELECT %%s || '.' || "
                      "(g %%%% %%s)::text, %%s, %s FROM generate_series(1::int8, %%s::int8) g"
                      % (OUTBOX, body), exchange, exchanges, event_type, n)
            self.db.q("ANALYZE %s" % OUTBOX)
            return self.db.one("SELECT avg(octet_length(body))::int FROM (SELECT body FROM %s "
                               "LIMIT 100) s" % OUTBOX)
        chunk = 200000
        done = 0
        while done < n:
            k = min(chunk, n - done)
            self.db.q("INSERT INTO %s (exchange, routing_key, body) SELECT %%s, %%s, %s "
                      "FROM generate_series(%%s::int8, %%s::int8) g" % (OUTBOX, body),
                      exchange, event_type, done + 1, done + k)
            done += k
        self.db.q("ANALYZE %s" % OUTBOX)
        real = self.db.one("SELECT avg(octet_length(body))::int FROM (SELECT body FROM %s LIMIT 100) s"
                           % OUTBOX)
        return real

    def ceiling_tool(self, argv, timeout, env=None):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
        if not lines:
            raise BenchError("%s: no output: %s" % (os.path.basename(argv[0]),
                                                    r.stderr.strip()[-300:]))
        out = json.loads(lines[-1])
        if r.returncode != 0 or "error" in out:
            raise BenchError("%s: %s" % (os.path.basename(argv[0]), r.stderr.strip()[-300:]))
        return out

    def raw_latency(self, qtype, rate, secs):
        """The broker alone at `rate`/s (bench/raw_latency): publish -> deliver, confirms and
        acks as svccomm's relay and consumer use them."""
        return self.ceiling_tool([os.path.join(BUILD_BENCH, "raw_latency"), "--queue-type", qtype,
                                  "--rate", str(rate), "--seconds", str(secs)],
                                 timeout=secs * 3 + 60,
                                 env=dict(self.env, SVCCOMM_BROKER_URL=self.broker_url))

    def raw_publish(self, qtype, n, size, windows, exchange=None, queue=None, no_declare=False,
                    routing_key="bench.event"):
        argv = [os.path.join(BUILD_BENCH, "raw_publish"), "--url", self.broker_url,
                "--queue-type", qtype, "--count", str(n), "--size", str(size),
                "--window", ",".join(str(w) for w in windows), "--routing-key", routing_key]
        if exchange:
            argv += ["--exchange", exchange]
        if queue:
            argv += ["--queue", queue]
        if no_declare:
            argv.append("--no-declare")
        else:
            argv.append("--fresh")
        return self.ceiling_tool(argv, timeout=60 + n * len(windows) / 500)

    def raw_consume(self, queue, n, prefetch, ack_every):
        return self.ceiling_tool([os.path.join(BUILD_BENCH, "raw_consume"), "--url", self.broker_url,
                                  "--queue", queue, "--count", str(n), "--prefetch", str(prefetch),
                                  "--ack-every", str(ack_every)], timeout=60 + n / 1000)

    # --- measured runs --------------------------------------------------------------------

    def run_relay(self, label, qtype, n, size=300, extra=None, relays=1, exchanges=1):
        """Fill the outbox with n rows, start runpublisher (`relays` of them), time until all
        are confirmed and deleted. The target queue is bound to the exchange (to each of the
        `exchanges` exchanges: relays share the outbox by exchange) so every message is
        stored."""
        self.need_svccomm()
        exchange = queue = "bench.relay." + qtype
        self.broker.declare(exchange, queue, qtype)
        for i in range(exchanges if exchanges > 1 else 0):
            self.broker.declare("%s.%d" % (exchange, i), queue, qtype, fresh=False)
        settings = {"DATABASE_URL": self.db_url}
        settings.update(extra or {})
        path = self.project("relay-" + label, settings)
        if relays > 1:
            # Several relays share the partitions after a rebalance (every 2 s): start them on
            # an empty outbox and let them settle before the rows appear.
            self.db.q("TRUNCATE %s" % OUTBOX)
            others = [self.svccomm("relay-%s-%d" % (label, i + 2), path, "runpublisher")
                      for i in range(relays - 1)]
            p = self.svccomm("relay-" + label, path, "runpublisher")
            time.sleep(6)
            real = self.fill_outbox(n, size, exchange, exchanges=exchanges)
        else:
            real = self.fill_outbox(n, size, exchange, exchanges=exchanges)
            others = []
            p = self.svccomm("relay-" + label, path, "runpublisher")
        t_first = q_first = None
        partial = False
        t_prev = p.started
        try:
            while True:
                p.sample()
                p.check_alive()
                for o in others:
                    o.check_alive()
                c = self.broker.count(queue)
                now = time.monotonic()
                q = c[0] if c else 0
                if q == 0:
                    t_prev = now
                if q > 0 and t_first is None:
                    t_first, q_first = now, q
                if q >= n:
                    left = self.db.one("SELECT count(*) FROM %s" % OUTBOX)
                    if left == 0:
                        t_done, n_done = time.monotonic(), n
                        break
                self.check_progress(p, now, t_first, q, n)
                if t_first is not None and now - t_first > self.o.cap:
                    t_done, n_done, partial = now, q, True
                    break
                time.sleep(0.02)
            p.sample()
            pg_cpu = self.relay_backend_cpu()
        finally:
            rc = p.stop()
            for o in others:
                o.stop()
        if rc not in (0, None):
            log("  note: runpublisher exited with %s after SIGTERM (%s)" % (rc, p.last_log_line()))
        self.broker.purge(queue)
        return {"rate": steady_rate(n_done, q_first, t_prev, t_first, t_done),
                "rate_incl_start": n_done / (t_done - p.started), "startup_s": t_first - p.started,
                "seconds": t_done - p.started, "n": n, "done": n_done, "partial": partial,
                "body_bytes": real, "rss_peak_kib": p.peak_root,
                "anon_peak_kib": p.peak_anon_root, "queue_type": qtype,
                "cpu_us_per_msg": p.cpu_seconds() * 1e6 / max(1, n_done),
                "pg_cpu_us_per_msg": None if pg_cpu is None else pg_cpu * 1e6 / max(1, n_done)}

    def relay_backend_cpu(self):
        """CPU seconds (user + system) of the relay's PostgreSQL backend(s) since they started
        (found by the relay's application_name, read from /proc: the server is local), or None
        when it cannot be read."""
        pids = self.db.q("SELECT pid FROM pg_stat_activity WHERE application_name = "
                         "'svccomm-relay' AND datname = current_database()") or []
        ticks = [cpu_ticks(r[0]) for r in pids]
        if not ticks or None in ticks:
            return None
        return sum(ticks) / CLK_TCK

    def consumer_settings(self, qtype, queue, exchange, with_db, extra=None):
        s = {"QUEUE": queue, "QUEUE_ARGUMENTS": queue_args(qtype), "EXCHANGES": [exchange],
             "BINDS": [[exchange, "#"]]}
        if with_db:
            s["DATABASE_URL"] = self.db_url
        s.update(extra or {})
        return s

    def ensure_declared(self, label, path, queue):
        """Let svccomm declare its queue (and retry/dead-letter queues) once, then stop it."""
        if queue in self.declared and self.broker.count(queue) is not None:
            return
        p = self.svccomm("declare-" + label, path, "runconsumer")
        try:
            deadline = time.monotonic() + 20
            while True:
                p.check_alive()
                c = self.broker.count(queue)
                if c is not None and c[1] > 0:
                    break
                if time.monotonic() > deadline:
                    raise BenchError("runconsumer did not start consuming %s within 20 s: %s"
                                     % (queue, p.last_log_line()))
                time.sleep(0.05)
        finally:
            p.stop()
        self.declared.add(queue)

    def handler_lua(self, kind, exchange, routes=1):
        lines = ['local svccomm = require "svccomm"', "local router = svccomm.message_router"]
        for i in range(1, routes):
            # Other routes, wildcard patterns, registered before the one that matches.
            lines.append('router.consumer(%s, "bench.r%d.*")(function() end)'
                         % (lua_value(exchange), i))
        if kind == "noop":
            lines.append('router.consumer(%s, "bench.event")(function(routing_key, body, message) '
                         "end)" % lua_value(exchange))
        elif kind == "tx":
            lines.append(
                'router.consumer(%s, "bench.event")(svccomm.event_consumer(function(payload, meta)\n'
                '  svccomm.db.exec("INSERT INTO %s (event_id) VALUES ($1)", meta.event_id)\n'
                '  svccomm.publish_aggregate_event { aggregate = "bench.out", '
                'event_type = "bench.done", payload = { id = meta.event_id } }\n'
                "end))" % (lua_value(exchange), SINK))
        elif kind == "latency":
            # handler entry is read first, with the wall clock svccomm uses (microseconds),
            # and sent as text so that no digit is lost
            lines.append('local clock = require "svccomm.core".time')
            lines.append(
                'router.consumer(%s, "bench.lat")(svccomm.event_consumer(function(payload, meta)\n'
                '  local entry = string.format("%%.6f", clock())\n'
                '  svccomm.db.%s("INSERT INTO %s (event_id, handler_at) VALUES ($1, $2::float8)", '
                'meta.event_id, entry)\n'
                "end))" % (lua_value(exchange), self.o.lat_handler, LAT))
        else:
            raise ValueError(kind)
        return "\n".join(lines) + "\n"

    def run_consumer(self, label, qtype, n, kind="noop", size=300, routes=1, workers=1,
                     extra=None):
        """Preload n messages, start runconsumer, time until they are all handled."""
        self.need_svccomm()
        exchange = queue = "bench.cons." + qtype
        with_db = kind == "tx"
        path = self.project("consumer-" + label,
                            self.consumer_settings(qtype, queue, exchange, with_db, extra),
                            self.handler_lua(kind, exchange, routes))
        self.ensure_declared(label, path, queue)
        self.broker.purge(queue)
        if with_db:
            self.db.q("TRUNCATE %s" % SINK)
            self.db.q("TRUNCATE %s" % OUTBOX)
        w = self.ceiling.get(qtype, {}).get("window", 1000)
        self.raw_publish(qtype, n, size, [w], exchange=exchange, no_declare=True)
        c = self.broker.count(queue)
        if not c or c[0] != n:
            raise BenchError("preload: %s messages in %s, expected %d" % (c and c[0], queue, n))
        args = ["runconsumer"] + (["--workers", str(workers)] if workers != 1 else [])
        p = self.svccomm("consumer-" + label, path, *args)
        t_first = done_first = None
        partial = False
        t_prev = p.started
        try:
            while True:
                p.sample()
                p.check_alive()
                now = time.monotonic()
                if with_db:
                    done = self.db.one("SELECT count(*) FROM %s" % SINK)
                else:
                    c = self.broker.count(queue)
                    done = n - (c[0] if c else n)
                if done == 0:
                    t_prev = now
                if done > 0 and t_first is None:
                    t_first, done_first = now, done
                if done >= n:
                    t_done, n_done = now, n
                    break
                self.check_progress(p, now, t_first, done, n)
                if t_first is not None and now - t_first > self.o.cap:
                    t_done, n_done, partial = now, done, True
                    break
                time.sleep(0.02)
            p.sample()
        finally:
            p.stop()
        extra_out = {}
        if with_db:
            # Each handled message wrote one row and one outbox event in its transaction.
            sink = self.db.one("SELECT count(*) FROM %s" % SINK)
            extra_out["outbox_rows"] = self.db.one("SELECT count(*) FROM %s" % OUTBOX)
            self.db.q("TRUNCATE %s" % OUTBOX)
            if extra_out["outbox_rows"] != sink:
                raise BenchError("the handler committed %d rows but %d outbox events"
                                 % (sink, extra_out["outbox_rows"]))
        self.broker.purge(queue)
        out = {"rate": steady_rate(n_done, done_first, t_prev, t_first, t_done),
               "rate_incl_start": n_done / (t_done - p.started), "startup_s": t_first - p.started,
               "seconds": t_done - p.started, "n": n, "done": n_done, "partial": partial,
               "rss_peak_kib": p.worker_peak(),
               "cpu_us_per_msg": p.cpu_seconds() * 1e6 / max(1, n_done),
               "supervisor_peak_kib": p.peak_root if p.peak_child else None, "queue_type": qtype}
        out.update(extra_out)
        return out

    def check_progress(self, p, now, t_first, done, n):
        """Fail a run that makes no progress at all within 30 s of its start."""
        if t_first is None and now - p.started > 30:
            raise BenchError("no progress 30 s after the start (%d of %d): %s"
                             % (done, n, p.last_log_line()))

    # --- sections -------------------------------------------------------------------------

    def sec_ceilings(self):
        rows = []
        n = self.o.count
        for qt in self.o.queue_types:
            try:
                exchange, queue = "bench.raw." + qt, "bench.raw." + qt
                pub = self.raw_publish(qt, n, 300, self.o.windows, exchange=exchange, queue=queue)
                if "rate" not in pub:
                    raise BenchError("raw_publish: every window failed")
                # The last publish run left N messages: each consume setting takes its share.
                best = None
                share = n // len(self.o.consume_tuning)
                for prefetch, ack_every in self.o.consume_tuning:
                    c = self.raw_consume(queue, share, prefetch, ack_every)
                    if best is None or c["rate"] > best["rate"]:
                        best = c
                self.broker.delete_queue(queue)
                self.ceiling[qt] = {"publish": pub["rate"], "window": pub["best_window"],
                                    "consume": best["rate"], "prefetch": best["prefetch"],
                                    "ack_every": best["ack_every"]}
                rows.append(row("ceilings", "raw publish %s" % qt, pub["rate"], "msg/s",
                                settings="300 B persistent, mandatory, confirms window %d "
                                "(tried %s), N=%d" % (pub["best_window"], "/".join(
                                    "%d: %.0f" % (r["window"], r["rate"]) for r in pub["runs"]), n),
                                extra={"runs": pub["runs"]}))
                rows.append(row("ceilings", "raw consume %s" % qt, best["rate"], "msg/s",
                                settings="manual ack, prefetch %d, ack multiple every %d (tried %s), "
                                "N=%d each" % (best["prefetch"], best["ack_every"], "/".join(
                                    "%d+%d" % pk for pk in self.o.consume_tuning), share)))
            except (BenchError, subprocess.TimeoutExpired) as e:
                rows.append(failed("ceilings", "raw publish/consume %s" % qt, e))
        try:
            pg = self.ceiling_tool([os.path.join(BUILD_BENCH, "pg_outbox"), "--url", self.db_url,
                                    "--count", str(n), "--size", "300", "--batch",
                                    ",".join(str(b) for b in self.o.pg_batches)],
                                   timeout=120 + n / 200)
            for r in pg["runs"]:
                rows.append(row("ceilings", "pg claim+delete, batch %d" % r["batch"],
                                r["select_delete_rate"], "rows/s",
                                settings="SELECT next batch by id, DELETE id = ANY($1); N=%d" % n))
                rows.append(row("ceilings", "pg delete-returning, batch %d" % r["batch"],
                                r["delete_returning_rate"], "rows/s",
                                settings="one DELETE ... RETURNING ... FOR UPDATE SKIP LOCKED"))
        except (BenchError, subprocess.TimeoutExpired) as e:
            rows.append(failed("ceilings", "pg claim+delete", e))
        try:
            hn = max(2000, n // 5)
            h = self.ceiling_tool([os.path.join(BUILD_BENCH, "pg_handler"), "--url", self.db_url,
                                   "--count", str(hn), "--batch", "100"], timeout=120 + hn / 100)
            self.ceiling["pg_handler"] = h["rate"]
            rows.append(row("ceilings", "pg handler SQL (plain libpq)", h["rate"], "msg/s",
                            settings="per message: INSERT row + INSERT outbox event (prepared, one "
                            "round trip each), COMMIT every 100; no broker, no Lua; N=%d" % hn))
        except (BenchError, subprocess.TimeoutExpired) as e:
            rows.append(failed("ceilings", "pg handler SQL", e))
        return rows

    # --- interleaved pairs ------------------------------------------------------------------

    def pairs(self, what, ceiling_fn, svccomm_fn, alternate=False):
        """Ceiling, svccomm, ceiling, svccomm, ... (--repeat pairs): the load of a shared machine
        drifts, and a ratio taken within one pair does not carry the drift between them.
        alternate: every second pair runs svccomm first (for two runs of the same kind, where
        whichever runs second was seen to gain). Returns the summary of the pairs: median and
        min-max of the ratios."""
        pairs = []
        for i in range(self.o.repeat):
            if alternate and i % 2:
                r = svccomm_fn()
                c = ceiling_fn()
            else:
                c = ceiling_fn()
                r = svccomm_fn()
            pairs.append((c, r))
            log("    %s pair %d/%d: ceiling %.0f, svccomm %.0f, ratio %.2f"
                % (what, i + 1, self.o.repeat, c, r["rate"], r["rate"] / c if c else 0))
        return summarize_pairs(pairs)

    def ceiling_publish(self, qt, n, size=300):
        q = "bench.raw." + qt
        try:
            w = self.ceiling.get(qt, {}).get("window", self.o.windows[-1])
            return self.raw_publish(qt, n, size, [w], exchange=q, queue=q)["rate"]
        finally:
            self.broker.delete_queue(q)

    def ceiling_consume(self, qt, n, size=300):
        q = "bench.raw." + qt
        c = self.ceiling.get(qt, {})
        try:
            self.raw_publish(qt, n, size, [c.get("window", 1000)], exchange=q, queue=q)
            return self.raw_consume(q, n, c.get("prefetch", 500), c.get("ack_every", 100))["rate"]
        finally:
            self.broker.delete_queue(q)

    def ceiling_pg_handler(self, n):
        return self.ceiling_tool([os.path.join(BUILD_BENCH, "pg_handler"), "--url", self.db_url,
                                  "--count", str(n), "--batch", "100"], timeout=120 + n / 100)["rate"]

    def sec_relay(self):
        rows = []
        self.migrate()
        n = self.o.count
        for qt in self.o.queue_types:
            try:
                s = self.pairs("relay " + qt, lambda: self.ceiling_publish(qt, n),
                               lambda: self.run_relay("q-" + qt, qt, n))
                rows.append(self.relay_row("relay %s" % qt, qt, s, target=0.9))
                rows.append(row("relay", "relay %s peak RSS" % qt, s["rss_peak_kib"] / 1024, "MiB",
                                target_text="<= 10 MiB", ok=s["rss_peak_kib"] <= 10 * 1024,
                                settings="%d rows waiting at start; largest of %d runs; of it "
                                "private memory (RssAnon, largest sampled) %.1f MiB, the rest "
                                "pages of the binary and its shared libraries"
                                % (n, len(s["pairs"]), s["anon_peak_kib"] / 1024)))
            except (BenchError, subprocess.TimeoutExpired) as e:
                rows.append(failed("relay", "relay %s" % qt, e))
        return rows

    def relay_row(self, name, qt, r, target=None, settings="", ceil=None):
        if "ratio" in r:  # a summary of interleaved pairs
            ratio = r["ratio"]
        else:
            ceil = ceil or self.ceiling.get(qt, {}).get("publish")
            ratio = r["rate"] / ceil if ceil else None
        return row("relay", name, r["rate"], "events/s", ratio=ratio,
                   target_text=("ratio >= %.1f" % target) if target else "",
                   ok=(ratio >= target) if (target and ratio is not None) else None,
                   settings=(settings or "N=%d rows of %s B, defaults (batch 500, window 2000)"
                             % (r["n"], r["body_bytes"])) + run_note(r), extra=r)

    def consumer_row(self, section, name, qt, r, target_ratio=None, target_abs=None, settings="",
                     ceil=None):
        if "ratio" in r:  # a summary of interleaved pairs
            ratio = r["ratio"]
        else:
            ceil = ceil if ceil is not None else self.ceiling.get(qt, {}).get("consume")
            ratio = r["rate"] / ceil if ceil and ceil > 0 else None  # ceil -1: none measured
        ok = None
        tt = ""
        if target_ratio is not None:
            tt = "ratio >= %.1f" % target_ratio
            ok = ratio >= target_ratio if ratio is not None else None
        if target_abs is not None:
            tt = ">= %d msg/s" % target_abs
            ok = r["rate"] >= target_abs
        return row(section, name, r["rate"], "msg/s", ratio=ratio, target_text=tt, ok=ok,
                   settings=settings + run_note(r), extra=r)

    def sec_consumer(self):
        rows = []
        self.migrate()
        n = self.o.count
        hn = max(2000, n // 5)
        # The transactional handler is bound by PostgreSQL, not by the queue: main type only.
        for qt, kind in [(q, "noop") for q in self.o.queue_types] + [(self.o.main_type, "tx")]:
            try:
                if kind == "noop":
                    s = self.pairs("consumer no-op " + qt, lambda: self.ceiling_consume(qt, n),
                                   lambda: self.run_consumer("noop-" + qt, qt, n, "noop"))
                    rows.append(self.consumer_row(
                        "consumer", "consumer no-op %s" % qt, qt, s, target_ratio=0.8,
                        settings="N=%d, no DATABASE_URL, default prefetch (1000)" % n))
                else:
                    s = self.pairs("consumer insert+outbox " + qt,
                                   lambda: self.ceiling_pg_handler(hn),
                                   lambda: self.run_consumer("tx-" + qt, qt, n, "tx"))
                    rows.append(self.consumer_row(
                        "consumer", "consumer insert+outbox %s" % qt, qt, s, target_ratio=2.0,
                        settings="N=%d, handler: INSERT + publish_aggregate_event; ratio to the "
                        "plain libpq client doing the same SQL (N=%d)" % (n, hn)))
                rows.append(row("consumer", "consumer %s %s worker peak RSS" % (kind, qt),
                                s["rss_peak_kib"] / 1024, "MiB", target_text="<= 20 MiB",
                                ok=s["rss_peak_kib"] <= 20 * 1024,
                                settings="%d messages waiting at start; largest of %d runs"
                                % (n, len(s["pairs"]))))
            except (BenchError, subprocess.TimeoutExpired) as e:
                rows.append(failed("consumer", "consumer %s %s" % (kind, qt), e))
        return rows

    def sec_latency(self):
        rows = []
        self.migrate()
        try:
            rows += self.writer_ceiling(2000, self.o.lat_seconds[1], 16)
        except (BenchError, subprocess.TimeoutExpired, psycopg2.Error) as e:
            rows.append(failed("latency", "writers alone", e))
        for qt in self.o.latency_types:
            try:
                rows += self.latency_for(qt)
            except (BenchError, subprocess.TimeoutExpired, psycopg2.Error) as e:
                rows.append(failed("latency", "end-to-end %s" % qt, e))
        # last: its 100,000 commits and deletes leave the database busy (WAL, vacuum) for a
        # while, which the latency runs above must not measure
        try:
            rows += self.writers_with_relay(6000, self.o.lat_seconds[1], 16)
        except (BenchError, subprocess.TimeoutExpired, psycopg2.Error) as e:
            rows.append(failed("latency", "writers with the relay", e))
        return rows

    def latency_for(self, qt):
        rows = []
        exchange = queue = "bench.lat." + qt
        stages = self.o.lat_stages
        extra = {"LOG_LEVEL": "debug", "LOG_FORMAT": "json"} if stages else None
        path = self.project("latency-" + qt,
                            self.consumer_settings(qt, queue, exchange, True, extra),
                            self.handler_lua("latency", exchange))
        self.db.q("TRUNCATE %s" % OUTBOX)
        self.ensure_declared("latency-" + qt, path, queue)
        self.broker.purge(queue)
        cons = self.svccomm("latency-consumer-" + qt, path, "runconsumer")
        relay = self.svccomm("latency-relay-" + qt, path, "runpublisher")
        trace = StageTrace(relay.log_path, cons.log_path) if stages else None
        runq = None
        try:
            if stages:
                cons.sample()
                relay.sample()
                runq = RunDelay(cons)
                trace.runq = runq
                trace.relay_runq = RunDelay(relay)
            time.sleep(1.0)
            cons.check_alive()
            relay.check_alive()
            # Warm up both paths, then measure.
            self.db.q("TRUNCATE %s" % LAT)
            self.wait_lat(self.write_events(exchange, 50, 1.0, 1), 20, [cons, relay])
            for rate, secs, writers, p99_target, p50_target in (
                    (50, self.o.lat_seconds[0], 1, 5.0, 2.0),
                    (2000, self.o.lat_seconds[1], 16, 25.0, None)):
                name = "end-to-end %d/s %s" % (rate, qt)
                try:
                    # the floor: the same broker path with nothing of svccomm, just before
                    raw = self.raw_latency(qt, rate, secs)
                    rows.append(row("latency", "broker alone %d/s %s" % (rate, qt), raw["p99"],
                                    "ms p99", settings="bench/raw_latency: p50 %.2f, p95 %.2f, "
                                    "max %.2f ms; %d messages, achieved %.0f/s, persistent, "
                                    "confirms, manual acks, %s queue; relay, consumer and "
                                    "servers running but idle; load average %s"
                                    % (raw["p50"], raw["p95"], raw["max"], raw["events"],
                                       raw["achieved"], qt, loadavg()), extra=raw))
                except (BenchError, subprocess.TimeoutExpired) as e:
                    rows.append(failed("latency", "broker alone %d/s %s" % (rate, qt), e))
                try:
                    self.db.q("TRUNCATE %s" % LAT)
                    commits = self.write_events(exchange, rate, secs, writers)
                    # the writers fall behind on a loaded machine: the rate is what they did,
                    # first commit to last (the planned span is secs - 1/rate)
                    span = self.writer_summary.get("first_to_last_s") or secs
                    achieved = (len(commits) - 1) / max(span, secs - 1.0 / rate)
                    self.wait_lat(commits, 30, [cons, relay])
                    time.sleep(0.2)  # late duplicates, if any, are counted below
                    got = self.db.q("SELECT event_id, handler_at, "
                                    "extract(epoch from received_at)::float8 FROM %s" % LAT)
                    recv, inserted = {}, {}
                    for i, t, t_db in got:
                        recv[i] = min(t, recv.get(i, t))
                        inserted[i] = min(t_db, inserted.get(i, t_db))
                    got = [(i, t) for i, t, _ in got]
                    dups = sum(1 for i, _ in got if i in commits) - len(recv.keys() & commits.keys())
                    strays = sum(1 for i, _ in got if i not in commits)
                    lat = sorted((recv[i] - t) * 1000 for i, t in commits.items() if i in recv)
                    if len(lat) != len(commits):
                        raise BenchError("%d of %d events received" % (len(lat), len(commits)))
                    pct = {k: percentile(lat, q) for k, q in (("p50", 50), ("p95", 95), ("p99", 99))}
                    pct["max"] = lat[-1]
                    ok = pct["p99"] <= p99_target and (p50_target is None or pct["p50"] <= p50_target)
                    tt = ("p50 <= %g ms, " % p50_target if p50_target else "") + "p99 <= %g ms" % p99_target
                    rows.append(row("latency", name, pct["p50"], "ms p50",
                                    target_text=tt, ok=ok,
                                    settings=("**the writers reached only %.0f/s (loaded machine)**; "
                                              % achieved if achieved < 0.9 * rate else "") +
                                    "p95 %.2f, p99 %.2f, max %.2f ms; %d events, achieved %.0f/s, "
                                    "%d writer connection(s) (up to %.1f ms behind their schedule), "
                                    "one event per transaction, LISTEN mode, %s queue, "
                                    "handler db.%s, load average %s%s%s"
                                    % (pct["p95"], pct["p99"], pct["max"], len(lat), achieved, writers,
                                       self.writer_summary.get("late_max_ms", float("nan")), qt,
                                       self.o.lat_handler, loadavg(),
                                       "; LOG_LEVEL debug (stage times)" if stages else "",
                                       "; handled twice: %d of this run, %d of earlier events"
                                       % (dups, strays) if dups or strays else ""),
                                    extra=dict(pct, events=len(lat), achieved_rate=achieved,
                                               duplicates=dups, earlier_events=strays,
                                               stage_times=stages)))
                    if stages:
                        rows.append(self.stage_row(trace, commits, recv, rate, qt, inserted))
                except (BenchError, psycopg2.Error) as e:
                    rows.append(failed("latency", name, e))
            cons.sample()
            relay.sample()
            rows.append(row("latency", "relay peak RSS (latency %s)" % qt, relay.peak_root / 1024,
                            "MiB", target_text="<= 10 MiB", ok=relay.peak_root <= 10 * 1024))
            rows.append(row("latency", "consumer worker peak RSS (latency %s)" % qt,
                            cons.worker_peak() / 1024, "MiB", target_text="<= 20 MiB",
                            ok=cons.worker_peak() <= 20 * 1024))
        finally:
            if runq:
                runq.close()
                trace.relay_runq.close()
            cons.stop()
            relay.stop()
        return rows

    def stage_row(self, trace, commits, handled, rate, qt, inserted):
        """The per-stage row of one latency run: each stage's time since the commit (p50/p99),
        from the relay's and the consumer's debug lines (StageTrace) and the handler's clock."""
        trace.read()
        since = {st: [] for st in STAGES[1:]}
        steps = {st: [] for st in list(STEPS) + ["in commit", "no cpu", "relay no cpu"]}
        complete = 0
        for eid, t_commit in commits.items():
            t = trace.times(eid)
            t["commit"] = t_commit
            t["handler"] = handled.get(eid)
            if any(t.get(st) is None for st in STAGES):
                continue
            complete += 1
            for st in STAGES[1:]:
                since[st].append((t[st] - t_commit) * 1000)
            for name, (a, b) in STEPS.items():
                steps[name].append((t[b] - t[a]) * 1000)
            steps["in commit"].append(trace.in_commit(t["publish"], t["deliver"]) * 1000)
            steps["no cpu"].append(trace.runq.waited(t["publish"], t["deliver"]) * 1000)
            steps["relay no cpu"].append(trace.relay_runq.waited(t["commit"], t["claim"]) * 1000)
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "stages-%s-%d.json" % (qt, rate)), "w") as f:
            json.dump({"stages": STAGES, "commits": trace.commits, "consumer_runq": trace.runq.samples,
                       "relay_runq": trace.relay_runq.samples,
                       "events": {eid: trace.times(eid) | {"commit": t, "handler": handled.get(eid),
                                                            "inserted": inserted.get(eid)}
                                  for eid, t in commits.items()}}, f)
        if complete == 0:
            raise BenchError("no event has all its stage times (%d events; relay or consumer "
                             "debug lines missing)" % len(commits))
        res = {}
        for st, vals in list(since.items()) + list(steps.items()):
            vals.sort()
            res[st] = {"p50": percentile(vals, 50), "p99": percentile(vals, 99), "max": vals[-1]}
        text = "since commit, p50/p99 ms: " + ", ".join(
            "%s %.2f/%.2f" % (st, res[st]["p50"], res[st]["p99"]) for st in STAGES[1:])
        text += "; steps p50/p99 ms: " + ", ".join(
            "%s %.2f/%.2f" % (name, res[name]["p50"], res[name]["p99"]) for name in STEPS)
        # of publish>deliver, the time the consumer was committing (not reading deliveries)
        text += "; consumer in COMMIT during publish>deliver %.2f/%.2f" % (
            res["in commit"]["p50"], res["in commit"]["p99"])
        # and the time its processes waited for a CPU (run queue, /proc/<pid>/schedstat)
        text += "; consumer waiting for a CPU during publish>deliver %.2f/%.2f" % (
            res["no cpu"]["p50"], res["no cpu"]["p99"])
        text += "; relay waiting for a CPU during commit>claim %.2f/%.2f" % (
            res["relay no cpu"]["p50"], res["relay no cpu"]["p99"])
        t0, t1 = min(commits.values()), max(v for v in handled.values() if v is not None)
        durs = sorted((e - b) * 1000 for b, e in trace.commits if t0 <= b <= t1)
        if durs:
            text += " (COMMIT p50/p99 %.2f/%.2f ms)" % (percentile(durs, 50), percentile(durs, 99))
        text += "; %d of %d events traced; load average %s" % (complete, len(commits), loadavg())
        return row("latency", "stages %d/s %s" % (rate, qt), res["handler"]["p99"], "ms p99",
                   settings=text, extra={"stages": res, "traced": complete,
                                         "events": len(commits)})

    def writer_ceiling(self, rate, secs, writers):
        """What the writers reach with no relay or consumer running: one event per transaction
        into the outbox, with the trigger's NOTIFY always sent (svccomm.outbox_notify = on: as
        while a relay sleeps on the wake lock, or before migration 006) and never sent (off).
        Each transaction that notifies holds PostgreSQL's notify lock through its commit, so
        such commits cannot share a WAL flush. In the pipeline runs the writers use the default
        (auto): they notify only while the relay sleeps."""
        rows = []
        for label, options in (("NOTIFY on", "-c svccomm.outbox_notify=on"),
                               ("NOTIFY off", "-c svccomm.outbox_notify=off")):
            self.db.q("TRUNCATE %s" % OUTBOX)
            commits = self.write_events("bench.lat.none", rate, secs, writers, pgoptions=options)
            span = self.writer_summary.get("first_to_last_s") or secs
            achieved = (len(commits) - 1) / max(span, secs - 1.0 / rate)
            rows.append(row("latency", "writers alone %d/s, %s" % (rate, label), achieved,
                            "events/s", settings="bench/pg_writer: %d connections, one event per "
                            "transaction (INSERT ... RETURNING id, autocommit, synchronous_commit "
                            "on), nothing else running; up to %.0f ms behind their schedule; load "
                            "average %s" % (writers, self.writer_summary.get("late_max_ms", 0),
                                            loadavg()), extra=dict(self.writer_summary)))
        self.db.q("TRUNCATE %s" % OUTBOX)
        return rows

    def writers_with_relay(self, rate, secs, writers):
        """What the writers reach while a relay (LISTEN mode, quorum queue) publishes their
        rows, offered more than one NOTIFY-serialized stream of commits can carry: with the
        trigger's NOTIFY always sent (svccomm.outbox_notify = on, as before migration 006) and
        with the default (auto: only while the relay sleeps on the wake lock). Afterwards the
        table must be empty: every row published and deleted."""
        rows = []
        exchange = queue = "bench.writers"
        self.broker.declare(exchange, queue, "quorum")
        path = self.project("writers-relay", {"DATABASE_URL": self.db_url})
        try:
            for label, mode in (("NOTIFY on", "on"), ("NOTIFY auto (the default)", "auto")):
                self.db.q("TRUNCATE %s" % OUTBOX)
                self.broker.purge(queue)
                relay = self.svccomm("writers-relay-" + mode, path, "runpublisher")
                try:
                    time.sleep(1.0)
                    relay.check_alive()
                    commits = self.write_events(exchange, rate, secs, writers,
                                                pgoptions="-c svccomm.outbox_notify=" + mode)
                    span = self.writer_summary.get("first_to_last_s") or secs
                    achieved = (len(commits) - 1) / max(span, secs - 1.0 / rate)
                    deadline = time.monotonic() + 60
                    while self.db.one("SELECT count(*) FROM %s" % OUTBOX) > 0:
                        relay.check_alive()
                        if time.monotonic() > deadline:
                            raise BenchError("the relay left rows in the outbox after 60 s")
                        time.sleep(0.1)
                finally:
                    relay.stop()
                rows.append(row("latency", "writers %d/s with the relay running, %s"
                                % (rate, label), achieved, "events/s",
                                settings="bench/pg_writer: %d connections, one event per "
                                "transaction, synchronous_commit on; runpublisher (LISTEN) "
                                "publishing them to a quorum queue, every row published and "
                                "deleted; up to %.0f ms behind their schedule; load average %s"
                                % (writers, self.writer_summary.get("late_max_ms", 0), loadavg()),
                                extra=dict(self.writer_summary)))
        finally:
            self.db.q("TRUNCATE %s" % OUTBOX)
            self.broker.delete_queue(queue)
        return rows

    def write_events(self, exchange, rate, secs, writers, pgoptions=None):
        """Commit one event per transaction at `rate`/s for `secs` s from `writers` connections
        (bench/pg_writer: C, one thread per connection, a common schedule). Returns {eventId:
        commit time (epoch seconds, read when COMMIT returned)}; self.writer_summary keeps the
        writers' own account (events, first to last commit, how late they fell)."""
        body = envelope_sql(300, exchange, "bench.lat", "n.id")
        sql = ("INSERT INTO %s (id, exchange, routing_key, body) SELECT n.id, $1, 'bench.lat', %s "
               "FROM (SELECT nextval(pg_get_serial_sequence($2, 'id')) AS id) n RETURNING id"
               % (OUTBOX, body))
        env = dict(self.env, SVCCOMM_DATABASE_URL=self.db_url)
        if pgoptions:
            env["PGOPTIONS"] = pgoptions
        r = subprocess.run([os.path.join(BUILD_BENCH, "pg_writer"), "--rate", str(rate),
                            "--seconds", str(secs), "--connections", str(writers), "--sql", sql,
                            "--param", exchange, "--param", OUTBOX],
                           env=env, capture_output=True, text=True, timeout=secs * 3 + 60)
        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
        if r.returncode != 0:
            raise BenchError("pg_writer: %s" % (r.stderr.strip()[-300:] or r.returncode))
        try:
            self.writer_summary = json.loads(last)
        except ValueError:
            self.writer_summary = {}
        commits = {}
        for line in r.stdout.splitlines():
            eid, _, at = line.partition("\t")
            commits[eid] = float(at)
        return commits

    def wait_lat(self, commits, timeout, procs):
        """Wait until every event of `commits` reached the handler (other rows, e.g. a late
        duplicate of an earlier event, do not count)."""
        ids = [int(i) for i in commits]
        lo, hi, n = min(ids), max(ids), len(ids)
        deadline = time.monotonic() + timeout
        while True:
            for p in procs:
                p.sample()
                p.check_alive()
            got = self.db.one("SELECT count(DISTINCT event_id) FROM %s WHERE event_id::int8 "
                              "BETWEEN %%s AND %%s" % LAT, lo, hi)
            if got >= n:
                return
            if time.monotonic() > deadline:
                raise BenchError("only %d of %d events reached the handler within %d s"
                                 % (got, n, timeout))
            time.sleep(0.05)

    def sec_metrics(self):
        """The cost of METRICS_ADDRESS: the no-op consumer and the relay (main queue type) as
        interleaved pairs without / with the metrics listener (and a scrape every second, as
        Prometheus would), the ratio with / without."""
        rows = []
        self.migrate()
        qt, n = self.o.main_type, self.o.count
        for what in ("relay", "consumer no-op"):
            try:
                def run(on, what=what):
                    extra = {}
                    scraper = None
                    if on:
                        port = free_port()
                        extra["METRICS_ADDRESS"] = "127.0.0.1:%d" % port
                        scraper = Scraper(port)
                        scraper.start()
                    try:
                        if what == "relay":
                            return self.run_relay("metrics-%s" % on, qt, n, extra=extra)
                        return self.run_consumer("metrics-%s" % on, qt, n, "noop", extra=extra)
                    finally:
                        if scraper:
                            scraper.stop()
                            if scraper.ok == 0:
                                raise BenchError("no successful scrape of the metrics listener")

                off_cpu = []

                def off(run=run, off_cpu=off_cpu):
                    r = run(False)
                    off_cpu.append(r["cpu_us_per_msg"])
                    return r["rate"]

                s = self.pairs("%s metrics off/on" % what, off, lambda: run(True))
                s["cpu_off_us_per_msg"] = median(off_cpu)
                rows.append(row("metrics", "%s with METRICS_ADDRESS / without" % what,
                                s["rate"], "msg/s", ratio=s["ratio"],
                                settings="%s, N=%d; ratio = rate with the listener (scraped every "
                                "second) / rate without, in interleaved pairs; without: median %.0f "
                                "msg/s; CPU per message without %.2f µs, with %.2f µs (medians; "
                                "the steadier figure on a loaded machine)"
                                % (qt, n, s["ceiling_median"], s["cpu_off_us_per_msg"],
                                   s["cpu_us_per_msg"]), extra=s))
            except (BenchError, subprocess.TimeoutExpired) as e:
                rows.append(failed("metrics", "%s metrics cost" % what, e))
        return rows

    def sec_memory(self):
        """Relay and no-op consumer together through M messages: RSS early and at the end."""
        rows = []
        self.migrate()
        qt = self.o.main_type
        m = self.o.mem_messages
        exchange = queue = "bench.mem." + qt
        path = self.project("memory", self.consumer_settings(qt, queue, exchange, False),
                            self.handler_lua("noop", exchange))
        relay_path = self.project("memory-relay", {"DATABASE_URL": self.db_url})
        self.ensure_declared("memory", path, queue)
        self.broker.purge(queue)
        t = time.monotonic()
        real = self.fill_outbox(m, 300, exchange)
        log("  memory: %d outbox rows of %d B inserted in %.1f s" % (m, real, time.monotonic() - t))
        first_id = self.db.one("SELECT min(id) FROM %s" % OUTBOX)
        cons = self.svccomm("memory-consumer", path, "runconsumer")
        relay = self.svccomm("memory-relay", relay_path, "runpublisher")
        early = None
        mark = max(1, m // 10)
        partial = False
        try:
            while True:
                cons.sample()
                relay.sample()
                cons.check_alive()
                relay.check_alive()
                nxt = self.db.one("SELECT id FROM %s ORDER BY id LIMIT 1" % OUTBOX)
                published = m if nxt is None else nxt - first_id
                c = self.broker.count(queue)
                ready = c[0] if c else 0
                handled = published - ready
                if early is None and handled >= mark:
                    early = (relay.rss_root, cons.worker_rss(), handled)
                if nxt is None and ready == 0:
                    break
                self.check_progress(relay, time.monotonic(), 1 if published > 0 else None,
                                    handled, m)
                if time.monotonic() - relay.started > self.o.mem_cap:
                    partial = True
                    break
                time.sleep(0.1)
            time.sleep(0.5)
            cons.sample()
            relay.sample()
            late = (relay.rss_root, cons.worker_rss())
            secs = time.monotonic() - relay.started
        finally:
            cons.stop()
            relay.stop()
        if early is None:
            raise BenchError("no early memory sample")
        for who, e, l, peak, lim in (("relay", early[0], late[0], relay.peak_root, 10),
                                     ("consumer worker", early[1], late[1], cons.worker_peak(), 20)):
            growth = (l - e) / 1024
            total = handled if partial else m
            rows.append(row("memory", "%s RSS growth over %d messages" % (who, total), growth, "MiB",
                            target_text="no growth (<= 1 MiB)", ok=growth <= 1.0,
                            settings="RSS %.1f MiB after %d msgs, %.1f MiB after %d; peak %.1f MiB "
                            "(target <= %d MiB); relay+consumer together, %s queue, %.0f s%s"
                            % (e / 1024, early[2], l / 1024, total, peak / 1024, lim, qt, secs,
                               "; stopped at the time cap, %d of %d" % (handled, m) if partial else ""),
                            extra={"rss_early_kib": e, "rss_late_kib": l, "peak_kib": peak}))
        return rows

    def sec_scaling(self):
        rows = []
        self.migrate()
        qt = self.o.main_type
        n = self.o.scale_count
        # A ceiling of this section's own, measured minutes after the first one: the load of a
        # shared machine moves, and the ratios below compare with what it can do now.
        c = self.ceiling.get(qt, {})
        sq = "bench.size." + qt
        try:
            pub = self.raw_publish(qt, n, 300, [c.get("window", 1000)], exchange=sq, queue=sq)
            rc = self.raw_consume(sq, n, c.get("prefetch", 500), c.get("ack_every", 100))
        except (BenchError, subprocess.TimeoutExpired) as e:
            raise BenchError("scaling ceiling: %s" % reason(e))
        finally:
            self.broker.delete_queue(sq)
        local = {"publish": pub["rate"], "consume": rc["rate"]}
        rows.append(row("scaling", "raw publish 300 B (ceiling of this section)", pub["rate"],
                        "msg/s", settings="%s, window %d, N=%d" % (qt, c.get("window", 1000), n)))
        rows.append(row("scaling", "raw consume 300 B (ceiling of this section)", rc["rate"],
                        "msg/s", settings="%s, N=%d" % (qt, n)))
        for b in (1, 10, 100, 500, 2000):
            k = min(n, self.o.batch1_count) if b == 1 else n
            try:
                r = self.run_relay("batch-%d" % b, qt, k, extra={"PUBLISHER_BATCH_SIZE": b})
                rr = self.relay_row("relay batch %d" % b, qt, r, ceil=local["publish"],
                                    settings="PUBLISHER_BATCH_SIZE=%d, N=%d, %s" % (b, k, qt))
                rr["section"] = "scaling"
                if b == 1:
                    rr["target"], rr["ok"] = ">= 1000 events/s", r["rate"] >= 1000
                rows.append(rr)
            except (BenchError, subprocess.TimeoutExpired) as e:
                rows.append(failed("scaling", "relay batch %d" % b, e))
        # Each size as interleaved pairs, like the relay and consumer rows: the raw program at
        # the same size is the ceiling of each pair, so neither the load's drift nor the
        # broker's own cost of larger bodies lands in the ratio.
        by_size = {}
        for size in (100, 1000, 10000):
            # 10 KB with a quarter of the messages: at 20,000 the pairs' 12 publishing runs
            # would put 2.4 GB through the broker and 0.6 GB through the outbox, and a quarter
            # still runs about as long as a 100 B run (no drop row uses this size)
            k = n if size < 10000 else max(1, n // 4)
            what = "%s, N=%d%s" % (qt, k, " (a quarter of --scale-count)" if k != n else "")
            try:
                sr = self.pairs("relay %d B" % size, lambda: self.ceiling_publish(qt, k, size),
                                lambda: self.run_relay("size-%d" % size, qt, k, size=size))
                rows.append(row("scaling", "raw publish %d B" % size, sr["ceiling_median"],
                                "msg/s", settings="%s; median of the %s"
                                % (what, ceiling_runs(sr))))
                rr = self.relay_row("relay %d B" % size, qt, sr,
                                    settings="%d B bodies, %s; interleaved pairs with raw publish "
                                    "of the same size" % (sr["body_bytes"], what))
                rr["section"] = "scaling"
                rows.append(rr)
                sc = self.pairs("consumer no-op %d B" % size,
                                lambda: self.ceiling_consume(qt, k, size),
                                lambda: self.run_consumer("size-%d" % size, qt, k, "noop",
                                                          size=size))
                rows.append(row("scaling", "raw consume %d B" % size, sc["ceiling_median"],
                                "msg/s", settings="%s; median of the %s"
                                % (what, ceiling_runs(sc))))
                rows.append(self.consumer_row("scaling", "consumer no-op %d B" % size, qt, sc,
                                              settings="%d B bodies, %s; interleaved pairs with "
                                              "raw consume of the same size" % (size, what)))
                by_size[size] = (sr, sc)
            except (BenchError, subprocess.TimeoutExpired) as e:
                rows.append(failed("scaling", "payload %d B" % size, e))
        if 100 in by_size and 1000 in by_size:
            rows += payload_drop_rows(by_size[100], by_size[1000])
        # 1 vs 1000 routes as interleaved pairs (1, 1000, 1, 1000, ...): single runs of this
        # size moved by more than the difference looked for
        try:
            one = []

            def run_one():
                one.append(self.run_consumer("routes-1", qt, n, "noop", routes=1))
                return one[-1]["rate"]

            r = self.pairs("routes 1000 vs 1", run_one,
                           lambda: self.run_consumer("routes-1000", qt, n, "noop", routes=1000),
                           alternate=True)
            d = 1 - r["ratio"]
            cpu1 = median([c["cpu_us_per_msg"] for c in one])
            rows.append(row("scaling", "consumer change 1 -> 1000 routes", d * 100, "%",
                            ratio=r["ratio"], target_text="no change (<= 10 %)", ok=abs(d) <= 0.10,
                            settings="ratio = rate with 1000 registered routes / rate with 1, in "
                            "interleaved pairs, the order swapped in every second pair; median rates %.0f / %.0f msg/s; CPU %.1f / %.1f "
                            "µs/msg (start-up included: registering 1000 routes is part of it); "
                            "N=%d, %s" % (r["ceiling_median"], r["rate"], cpu1, r["cpu_us_per_msg"],
                                          n, qt), extra=r))
        except (BenchError, subprocess.TimeoutExpired) as e:
            rows.append(failed("scaling", "routes", e))
        for kind in ("noop", "tx"):
            for workers in (1, 2):
                try:
                    c = self.run_consumer("workers-%s-%d" % (kind, workers), qt, n, kind,
                                          workers=workers)
                    tx = kind == "tx"
                    rows.append(self.consumer_row("scaling", "consumer %s --workers %d" % (kind, workers),
                                                  qt, c, ceil=self.ceiling.get("pg_handler", -1)
                                                  if tx else local["consume"],
                                                  settings="N=%d, %s%s" % (
                                                      n, qt, "; ratio to the plain libpq client "
                                                      "(one connection)" if tx else "")))
                except (BenchError, subprocess.TimeoutExpired) as e:
                    rows.append(failed("scaling", "consumer %s --workers %d" % (kind, workers), e))
        return rows

    # --- driver ---------------------------------------------------------------------------

    def run(self):
        wanted = self.o.only or SECTIONS
        if any(s in wanted for s in ("relay", "consumer", "scaling")) and "ceilings" not in wanted:
            wanted = ["ceilings"] + list(wanted)
        log("svccomm benchmark: sections %s; %s" % (", ".join(wanted), json.dumps(self.meta)))
        for s in SECTIONS:
            if s not in wanted:
                continue
            log("== %s" % s)
            t0 = time.monotonic()
            try:
                rows = getattr(self, "sec_" + s)()
                status = "ok"
            except (BenchError, subprocess.TimeoutExpired, subprocess.CalledProcessError,
                    psycopg2.Error, pika.exceptions.AMQPError, OSError) as e:
                rows = [failed(s, s, e)]
                status = "FAILED: %s" % reason(e)
                if self.o.verbose:
                    traceback.print_exc()
            dt = time.monotonic() - t0
            self.results[s] = {"seconds": dt, "status": status, "rows": rows}
            for r in rows:
                log("  " + fmt_row_text(r))
            log("  (%s: %.1f s)" % (s, dt))
            Proc.stop_all()

    def cleanup(self):
        Proc.stop_all()
        try:
            self.db.q("DROP TABLE IF EXISTS %s, %s" % (SINK, LAT))
            self.db.q("TRUNCATE %s" % OUTBOX)
        except Exception:
            pass
        try:
            # The consumer queues stay (svccomm declared them with its own arguments), empty.
            for qt in QUEUE_TYPES:
                for q in ("bench.raw.", "bench.relay.", "bench.size."):
                    self.broker.delete_queue(q + qt)
                for q in ("bench.cons.", "bench.lat.", "bench.mem."):
                    if self.broker.count(q + qt) is not None:
                        self.broker.purge(q + qt)
        except Exception:
            pass
        self.broker.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def free_port():
    import socket
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


class Scraper(threading.Thread):
    """GET /metrics once a second while a run lasts, as a Prometheus server would (a
    Prometheus server scrapes every 15 s or so: this is the heavier case)."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.url = "http://127.0.0.1:%d/metrics" % port
        self.done = threading.Event()
        self.ok = 0

    def run(self):
        import urllib.request
        while True:
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    r.read()
                    self.ok += 1
            except OSError:
                pass  # not listening yet
            # every second once one succeeded; until then often, so a short run is scraped too
            if self.done.wait(1.0 if self.ok else 0.05):
                return

    def stop(self):
        self.done.set()
        self.join(5)


SPREAD = 0.1  # a section whose ratios lie further than this from their median says so


def median(vals):
    v = sorted(vals)
    m = len(v) // 2
    return v[m] if len(v) % 2 else (v[m - 1] + v[m]) / 2


def summarize_pairs(pairs):
    """Median ratio of interleaved (ceiling rate, svccomm result) pairs, its min-max, and the
    svccomm result whose ratio is the median (for its rate, notes and CPU figures)."""
    ratios = [r["rate"] / c if c else 0.0 for c, r in pairs]
    order = sorted(range(len(pairs)), key=lambda i: ratios[i])
    mid = pairs[order[len(order) // 2]][1]
    out = dict(mid)
    out.update({
        "ratio": median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "rate": median([r["rate"] for _, r in pairs]),
        "ceiling_median": median([c for c, _ in pairs]),
        "spread": max(abs(x - median(ratios)) for x in ratios) > SPREAD,
        "rss_peak_kib": max(r["rss_peak_kib"] for _, r in pairs),
        "anon_peak_kib": max(r.get("anon_peak_kib", 0) for _, r in pairs),
        "cpu_us_per_msg": median([r["cpu_us_per_msg"] for _, r in pairs]),
        "pairs": [{"ceiling": c, "rate": r["rate"], "ratio": x, "cpu_us_per_msg": r["cpu_us_per_msg"],
                   "pg_cpu_us_per_msg": r.get("pg_cpu_us_per_msg")}
                  for (c, r), x in zip(pairs, ratios)],
    })
    pg = [r.get("pg_cpu_us_per_msg") for _, r in pairs]
    if pg and None not in pg:
        out["pg_cpu_us_per_msg"] = median(pg)
    else:
        out.pop("pg_cpu_us_per_msg", None)
    return out


def ceiling_runs(s):
    """The ceiling runs of a summary of interleaved pairs, for a row of the ceiling itself."""
    c = [p["ceiling"] for p in s["pairs"]]
    return "%d runs paired with the row below (%.0f–%.0f msg/s)" % (len(c), min(c), max(c))


def payload_drop_rows(small, large):
    """The drops from 100 B to 1 KB, of (relay, consumer no-op) summaries of interleaved pairs at
    each size: each program's drop from its median rates, and for relay and consumer the drop
    beyond their ceiling's own, 1 - median ratio at 1 KB / median ratio at 100 B. The target is
    judged on the latter: the raw publisher alone lost 14-36 % of its rate from 100 B to 1 KB in
    the runs here, which no relay publishing the same messages can make up."""
    rows = []
    for i, who, raw in ((0, "relay", "raw publish"), (1, "consumer no-op", "raw consume")):
        a, b = small[i], large[i]
        raw_drop = 1 - b["ceiling_median"] / a["ceiling_median"]
        drop = 1 - b["rate"] / a["rate"]
        beyond = 1 - b["ratio"] / a["ratio"]
        extra = {"drop": drop, "ceiling_drop": raw_drop, "beyond": beyond,
                 "rate_100": a["rate"], "rate_1000": b["rate"],
                 "ceiling_100": a["ceiling_median"], "ceiling_1000": b["ceiling_median"],
                 "ratio_100": a["ratio"], "ratio_1000": b["ratio"]}
        rows.append(row("scaling", "%s drop 100 B -> 1 KB" % raw, raw_drop * 100, "%",
                        settings="median rates %.0f -> %.0f msg/s, of %d runs at each size"
                        % (a["ceiling_median"], b["ceiling_median"], len(a["pairs"])),
                        extra=extra))
        rows.append(row("scaling", "%s drop 100 B -> 1 KB" % who, drop * 100, "%",
                        settings="absolute drop, median rates %.0f -> %.0f msg/s; not what the "
                        "target is judged on: %s itself drops %.1f %%, and the drop beyond it "
                        "(next row) is %.1f %%" % (a["rate"], b["rate"], raw, raw_drop * 100,
                                                   beyond * 100), extra=extra))
        rows.append(row("scaling", "%s drop 100 B -> 1 KB beyond %s's own" % (who, raw),
                        beyond * 100, "%", target_text="<= 25 %", ok=beyond <= 0.25,
                        settings="the target is judged on this one, the drop beyond %s's own "
                        "(%.1f %%), not on the absolute drop (%.1f %%): 1 - median ratio at 1 KB "
                        "/ median ratio at 100 B = 1 - %.3f / %.3f; ratio to %s of the same "
                        "size at 100 B %s, at 1 KB %s"
                        % (raw, raw_drop * 100, drop * 100, b["ratio"], a["ratio"], raw,
                           fmt_ratio(a), fmt_ratio(b)), extra=extra))
    return rows


def fmt_ratio(r):
    if r.get("ratio") is None:
        return ""
    if "ratio_min" not in r:
        return "%.2f" % r["ratio"]
    s = "%.2f (%.2f–%.2f, %d pairs)" % (r["ratio"], r["ratio_min"], r["ratio_max"], len(r["pairs"]))
    if r.get("spread"):
        s += " **spread > ±%.1f**" % SPREAD
    return s


def run_note(r):
    note = "; startup %.2f s" % r["startup_s"]
    if "cpu_us_per_msg" in r:
        note += "; CPU %.1f µs/msg" % r["cpu_us_per_msg"]
    if r.get("pg_cpu_us_per_msg") is not None:
        note += " + PostgreSQL backend %.1f µs/msg" % r["pg_cpu_us_per_msg"]
    if r.get("partial"):
        note += "; stopped at the time cap: %d of %d in %.0f s" % (r["done"], r["n"], r["seconds"])
    return note


def steady_rate(n, k_first, t_prev, t_first, t_done):
    """Rate without the start-up: from the first poll that saw progress (k_first of n done) to
    the end; when that poll already saw most of the work, from the middle of the two polls
    around the start instead."""
    if k_first <= n / 2 and t_done > t_first:
        return (n - k_first) / (t_done - t_first)
    return n / max(1e-6, t_done - (t_prev + t_first) / 2)


def reason(e):
    s = str(e).strip().replace("\n", " ")
    return s[:300] or e.__class__.__name__


# "--set K=V" of this run, written in front of every row's notes (the rows' own text names
# the defaults)
SET_NOTE = ""


def row(section, name, value, unit, ratio=None, target_text="", ok=None, settings="", extra=None):
    settings = SET_NOTE + settings
    r = {"section": section, "name": name, "value": value, "unit": unit, "ratio": ratio,
         "target": target_text, "ok": ok, "settings": settings, "extra": extra or {}}
    for k in ("ratio_min", "ratio_max", "pairs", "spread"):
        if extra and k in extra:
            r[k] = extra[k]
    return r


def failed(section, name, e):
    return {"section": section, "name": name, "value": None, "unit": "", "ratio": None,
            "target": "", "ok": False, "settings": "", "failed": reason(e), "extra": {}}


def loadavg():
    """The 1-minute load average (the machine is shared: a tail grows with it)."""
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def percentile(sorted_vals, q):
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, int(-(-len(sorted_vals) * q // 100)) - 1))
    return sorted_vals[k]


def fmt_value(r):
    if r.get("failed"):
        return "FAILED: " + r["failed"]
    v = r["value"]
    if v is None:
        return "-"
    if abs(v) >= 100:
        s = "{:,.0f}".format(v)
    elif abs(v) >= 10:
        s = "%.1f" % v
    else:
        s = "%.2f" % v
    return "%s %s" % (s, r["unit"])


def fmt_row_text(r):
    parts = [r["name"] + ":", fmt_value(r)]
    if r.get("ratio") is not None:
        parts.append("ratio " + fmt_ratio(r))
    if r.get("target"):
        parts.append("[target %s: %s]" % (r["target"], "met" if r["ok"] else ("NOT met" if r["ok"] is False else "?")))
    if r.get("settings"):
        parts.append("(%s)" % r["settings"])
    return " ".join(parts)


def markdown(bench, opts, total):
    m = bench.meta
    out = ["# svccomm benchmark", "",
           "`%s` — %s" % (" ".join(["bench/run.py"] + opts.argv), m.get("date", "")), "",
           "| | |", "|---|---|",
           "| svccomm | %s (git %s) |" % (m.get("svccomm"), m.get("git")),
           "| rabbitmq-c | %s |" % m.get("rabbitmq-c"),
           "| RabbitMQ | %s |" % m.get("rabbitmq"),
           "| PostgreSQL | %s |" % m.get("postgresql"),
           "| machine | %s cores, %s, Linux %s |" % (m.get("nproc"), m.get("cpu"), m.get("kernel")),
           "| total time | %.0f s |" % total, ""]
    out += ["| section | measurement | result | ratio to raw ceiling | target | settings / notes |",
            "|---|---|---|---|---|---|"]
    for s in SECTIONS:
        res = bench.results.get(s)
        if not res:
            continue
        for r in res["rows"]:
            tgt = ""
            if r.get("target"):
                tgt = "%s: %s" % (r["target"], "met" if r["ok"] else ("**not met**" if r["ok"] is False else "?"))
            out.append("| %s | %s | %s | %s | %s | %s |" % (
                s, r["name"], fmt_value(r).replace("|", "/"),
                fmt_ratio(r),
                tgt, r.get("settings", "").replace("|", "/")))
    out += ["", "Section durations: " + ", ".join("%s %.0f s" % (s, bench.results[s]["seconds"])
                                                   for s in SECTIONS if s in bench.results), ""]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small N: a smoke run of about 2 minutes")
    ap.add_argument("--only", help="comma-separated sections: " + ",".join(SECTIONS))
    ap.add_argument("--svccomm", default=os.path.join(ROOT, "build", "svccomm"),
                    help="the svccomm binary (default build/svccomm)")
    ap.add_argument("--queue-types", help="queue types for ceilings, relay, consumer "
                    "(default v1,v2,quorum; --quick: the main type)")
    ap.add_argument("--main-type", default="quorum", choices=QUEUE_TYPES,
                    help="queue type of the latency, memory and scaling sections (default quorum)")
    ap.add_argument("--count", type=int, help="N of ceilings, relay, consumer (default 100000)")
    ap.add_argument("--mem-messages", type=int, help="messages of the memory section (default 1000000)")
    ap.add_argument("--scale-count", type=int, help="N of each scaling point (default 20000)")
    ap.add_argument("--cap", type=float, help="seconds after which a svccomm run stops and "
                    "reports the rate so far (default 45; --quick 15)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="interleaved ceiling/svccomm pairs per relay and consumer row (default 3)")
    ap.add_argument("--lat-seconds", dest="lat_seconds_arg", help="seconds of the latency runs at 50/s and 2,000/s, "
                    "as A,B (default 10,8; --quick 4,3)")
    ap.add_argument("--lat-handler", choices=["query", "exec"], default="query",
                    help="how the latency handler writes its row: db.query waits for the "
                    "statement (default), db.exec leaves it in the pipeline")
    ap.add_argument("--no-lat-stages", dest="lat_stages", action="store_false",
                    help="latency without the per-stage times (no debug logging in the relay "
                    "and the consumer)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting for every svccomm process the run starts (repeatable; the value "
                         "is read as JSON when it parses, e.g. --set PUBLISHER_WINDOW=4000): for "
                         "trying a setting, not for the table")
    ap.add_argument("-v", "--verbose", action="store_true", help="tracebacks of failures")
    o = ap.parse_args()
    o.argv = sys.argv[1:]
    o.settings = {}
    for kv in o.set:
        key, eq, value = kv.partition("=")
        if not eq or not re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
            ap.error("--set %r: KEY=VALUE with an upper-case settings key" % kv)
        try:
            o.settings[key] = json.loads(value)
        except ValueError:
            o.settings[key] = value
    if o.settings:
        global SET_NOTE
        SET_NOTE = "**%s** (overrides what follows); " % " ".join("--set " + kv for kv in o.set)
    if o.repeat < 1:
        ap.error("--repeat must be at least 1")
    o.only = [s.strip() for s in o.only.split(",")] if o.only else None
    for s in o.only or []:
        if s not in SECTIONS:
            ap.error("unknown section %r (%s)" % (s, ", ".join(SECTIONS)))
    o.svccomm = os.path.abspath(o.svccomm)
    if o.quick:
        o.count = o.count or 20000
        o.mem_messages = o.mem_messages or 50000
        o.scale_count = o.scale_count or 5000
        o.batch1_count = 1000
        o.cap = o.cap or 15
        o.mem_cap = 60
        o.windows = [1000]
        o.consume_tuning = [(500, 100)]
        o.pg_batches = [500]
        o.lat_seconds = (4, 3)
        o.queue_types = o.queue_types or o.main_type
    else:
        o.count = o.count or 100000
        o.mem_messages = o.mem_messages or 1000000
        o.scale_count = o.scale_count or 20000
        o.batch1_count = 5000
        o.cap = o.cap or 45
        o.mem_cap = 150
        o.windows = [1000, 4000]
        o.consume_tuning = [(200, 50), (1000, 250)]
        o.pg_batches = [100, 500, 2000]
        o.lat_seconds = (10, 8)
        o.queue_types = o.queue_types or ",".join(QUEUE_TYPES)
    if o.lat_seconds_arg:
        try:
            o.lat_seconds = tuple(float(x) for x in o.lat_seconds_arg.split(","))
        except ValueError:
            o.lat_seconds = ()
        if len(o.lat_seconds) != 2 or min(o.lat_seconds) <= 0:
            ap.error("--lat-seconds: expected two positive numbers, A,B")
    o.queue_types = [q.strip() for q in o.queue_types.split(",")]
    for q in o.queue_types:
        if q not in QUEUE_TYPES:
            ap.error("unknown queue type %r" % q)
    # Latency for every queue type of the run (a quorum queue adds its log fsync to each message).
    o.latency_types = o.queue_types

    bench = Bench(o)

    def on_signal(sig, frame):
        Proc.stop_all()
        raise SystemExit(128 + sig)

    signal.signal(signal.SIGTERM, on_signal)
    t0 = time.monotonic()
    try:
        bench.setup()
        bench.run()
    finally:
        total = time.monotonic() - t0
        if bench.results:
            os.makedirs(RESULTS, exist_ok=True)
            md = markdown(bench, o, total)
            with open(os.path.join(RESULTS, "latest.md"), "w") as f:
                f.write(md)
            with open(os.path.join(RESULTS, "latest.json"), "w") as f:
                json.dump({"command": ["bench/run.py"] + o.argv, "meta": bench.meta,
                           "total_seconds": total, "ceilings": bench.ceiling,
                           "sections": bench.results}, f, indent=1, default=str)
            print()
            print(md)
            print("written: bench/results/latest.md, bench/results/latest.json (%.0f s)" % total)
        if bench.env is not None:
            bench.cleanup()
    failed_any = any(r.get("failed") for s in bench.results.values() for r in s["rows"])
    return 1 if failed_any else 0


if __name__ == "__main__":
    sys.exit(main())
