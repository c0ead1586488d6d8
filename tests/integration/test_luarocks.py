"""`luarocks make` in a clean tree installs a module that a plain `lua5.4` can require and publish with.

Copies the working tree as git sees it (tracked and untracked files, minus what .gitignore
excludes: no build/ or .local/), runs the rockspec at the root with luarocks into a private
tree, then loads `svccomm` from that tree only. One test: it is a full Release build.
"""
import glob
import os
import shutil
import subprocess

import svc

ROOT = str(svc.ROOT)


def repo_files():
    out = subprocess.run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, check=True).stdout
    return [f for f in out.decode().split("\0") if f]


def clean_copy(dest):
    for rel in repo_files():
        src = os.path.join(ROOT, rel)
        if not os.path.isfile(src):  # deleted in the work tree, not yet committed
            continue
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, rel))


def tail(text, n=60):
    return "\n".join(text.splitlines()[-n:])


def test_luarocks_make_installs_modules_native_module_and_binary_that_lua54_loads(tmp_path):
    rockspecs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "*.rockspec")))
    assert len(rockspecs) == 1, rockspecs
    rockspec = rockspecs[0]
    version = rockspec[len("svccomm-"):-len(".rockspec")].rsplit("-", 1)[0]
    src, tree, elsewhere = tmp_path / "src", tmp_path / "tree", tmp_path / "elsewhere"
    src.mkdir()
    elsewhere.mkdir()
    clean_copy(str(src))
    assert not (src / "build").exists()

    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
    r = subprocess.run(["luarocks", "--lua-version", "5.4", "make", "--tree", str(tree),
                        rockspec], cwd=src, env=env, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, "luarocks make failed:\n%s\n%s" % (tail(r.stdout), tail(r.stderr))

    share = tree / "share" / "lua" / "5.4"
    lib = tree / "lib" / "lua" / "5.4"
    installed = sorted(os.listdir(share / "svccomm"))
    assert installed == sorted(f for f in os.listdir(src / "lua" / "svccomm") if f.endswith(".lua"))
    assert (lib / "svccomm" / "core.so").is_file()

    # Only the tree (and the system's cjson) is on the paths; run outside the repo.
    script = (
        "package.path = '{share}/?.lua;{share}/?/init.lua;' .. package.path\n"
        "package.cpath = '{lib}/?.so;' .. package.cpath\n"
        "local svccomm = require 'svccomm'\n"
        "print(svccomm.VERSION)\n"
        "print(type(svccomm.message_router.consumer))\n"
        "print(package.searchpath('svccomm', package.path))\n"
        "print(package.searchpath('svccomm.core', package.cpath))\n"
    ).format(share=share, lib=lib)
    env = {k: v for k, v in os.environ.items() if k not in ("LUA_PATH", "LUA_CPATH",
                                                             "LUA_PATH_5_4", "LUA_CPATH_5_4")}
    r = subprocess.run(["lua5.4", "-e", script], cwd=elsewhere, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        version,
        "function",
        str(share / "svccomm" / "init.lua"),
        str(lib / "svccomm" / "core.so"),
    ]

    # The binary is installed too and runs `check` on the example project of the copy.
    binary = tree / "bin" / "svccomm"
    r = subprocess.run([str(binary), "version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "svccomm " + version
    env = {k: v for k, v in os.environ.items() if not k.startswith("SVCCOMM_")}
    r = subprocess.run([str(binary), "check"], cwd=src, env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("settings: ./settings.lua\n")

    # A plain lua5.4 script with only the installed rock publishes through svccomm.db, in
    # its own transaction, into an outbox created by the installed binary's `migrate`.
    import json
    import uuid

    import psycopg2
    dburl = os.environ["SVCCOMM_DATABASE_URL"]
    schema = "lr_" + uuid.uuid4().hex[:8]
    table = schema + ".outbox"
    conn = psycopg2.connect(dburl)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE SCHEMA " + schema)
        settings = elsewhere / "settings.lua"
        settings.write_text('return { OUTBOX_TABLE = "%s", INBOX_TABLE = "%s.inbox" }\n'
                            % (table, schema))
        env = dict(env, SVCCOMM_DATABASE_URL=dburl)
        r = subprocess.run([str(binary), "--settings", str(settings), "migrate"], env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        script = (
            "package.path = '{share}/?.lua;{share}/?/init.lua;' .. package.path\n"
            "package.cpath = '{lib}/?.so;' .. package.cpath\n"
            "local svccomm = require 'svccomm'\n"
            "svccomm.configure {{ OUTBOX_TABLE = '{table}' }}\n"
            "local db = assert(svccomm.db.connect(os.getenv('SVCCOMM_DATABASE_URL')))\n"
            "local id = db:transaction(function()\n"
            "  return svccomm.publish_aggregate_event('user', 'update.base', {{ name = 'Ada' }})\n"
            "end)\n"
            "print(id)\n"
        ).format(share=share, lib=lib, table=table)
        r = subprocess.run(["lua5.4", "-e", script], cwd=elsewhere, env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        event_id = r.stdout.strip()
        with conn.cursor() as cur:
            cur.execute("SELECT id, exchange, routing_key, body FROM " + table)
            rows = cur.fetchall()
        assert len(rows) == 1
        row_id, exchange, routing_key, body = rows[0]
        assert (str(row_id), exchange, routing_key) == (event_id, "user", "update.base")
        envelope = json.loads(body)
        assert envelope["eventId"] == event_id and envelope["payload"] == {"name": "Ada"}
    finally:
        with conn.cursor() as cur:
            cur.execute("DROP SCHEMA IF EXISTS %s CASCADE" % schema)
        conn.close()
