"""The rock (issue 18): `scripts/release.sh` makes the tarball (git archive), the release
rockspec and the .src.rock; `luarocks make` in the unpacked tarball and `luarocks install
./svccomm-<ver>-1.src.rock` both install, outside the checkout, a module that a plain `lua5.4`
can require and publish with, and a binary that runs.

Copies the working tree as git sees it (tracked and untracked files, minus what .gitignore
excludes) into a fresh git repository, so release.sh archives what is being tested. There is
no network: luarocks runs with --deps-mode=none, the system's lua-cjson stands in for the
declared dependency, and the rock tree's own cjson.so is simulated by a copy. Two Release
builds: a few minutes.
"""
import os
import shutil
import subprocess
import tarfile

import svc

ROOT = str(svc.ROOT)
VERSION = (svc.ROOT / "VERSION").read_text().strip()
LUA = ["luarocks", "--lua-version", "5.4"]


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
    git = ["git", "-C", dest, "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "release"]):
        subprocess.run(git + args, check=True, capture_output=True)


def tail(text, n=60):
    return "\n".join(text.splitlines()[-n:])


def release(tmp_path):
    """Runs release.sh in a clean copy; returns (tarball, rockspec, src.rock)."""
    src = tmp_path / "checkout"
    src.mkdir()
    clean_copy(str(src))
    r = subprocess.run(["bash", "scripts/release.sh", str(tmp_path / "dist")], cwd=src,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    files = r.stdout.split()
    names = [os.path.basename(f) for f in files]
    assert names == ["svccomm-%s.tar.gz" % VERSION, "svccomm-%s-1.rockspec" % VERSION,
                     "svccomm-%s-1.src.rock" % VERSION]
    return files


def rockspec_table(path):
    """dependencies and source of a rockspec, as lua5.4 reads it."""
    script = ("local t = {} ; assert(loadfile(arg[1], 't', t))() ; "
              "print(t.version) ; print(t.source.url) ; print(t.source.dir) ; "
              "for _, d in ipairs(t.dependencies) do print(d) end")
    r = subprocess.run(["lua5.4", "-", path], input=script, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def luarocks(args, cwd, tree):
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL="2")
    r = subprocess.run(LUA + args + ["--tree", str(tree), "--deps-mode=none"], cwd=cwd,
                       env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, "luarocks %s failed:\n%s\n%s" % (
        args[0], tail(r.stdout), tail(r.stderr))


def test_release_rock_make_and_install_outside_the_checkout(tmp_path):
    tarball, rockspec, src_rock = release(tmp_path)
    version = VERSION
    lines = rockspec_table(rockspec)
    assert lines[:3] == [version + "-1", "file://%s" % tarball, "svccomm-" + version]
    assert any(d.startswith("lua-cjson") for d in lines[3:]), lines

    # `luarocks make` in the unpacked tarball (no checkout, no git)
    unpacked, tree, elsewhere = tmp_path / "unpacked", tmp_path / "tree", tmp_path / "elsewhere"
    unpacked.mkdir()
    elsewhere.mkdir()
    with tarfile.open(tarball) as tar:
        tar.extractall(unpacked)
    src = unpacked / ("svccomm-" + version)
    assert not (src / ".git").exists() and not (src / "build").exists()
    luarocks(["make", rockspec], src, tree)

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


    # `luarocks install ./svccomm-<ver>-1.src.rock` in a second tree, from another folder
    tree2 = tmp_path / "tree2"
    shutil.copy(src_rock, elsewhere)
    luarocks(["install", "./" + os.path.basename(src_rock)], elsewhere, tree2)
    binary2 = tree2 / "bin" / "svccomm"
    lib2 = tree2 / "lib" / "lua" / "5.4"
    assert (lib2 / "svccomm" / "core.so").is_file()
    r = subprocess.run([str(binary2), "version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "svccomm " + version, r.stderr
    # lua-cjson is not linked in: the binary loads cjson.so at run time. With nothing on the
    # system's path, the one in the rock tree's lib/lua/5.4 (where luarocks would install the
    # lua-cjson dependency; a copy here) is found next to bin/.
    nm = subprocess.run(["nm", "-D", "--defined-only", str(binary2)], capture_output=True,
                        text=True, check=True).stdout
    assert "luaopen_cjson" not in nm
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SVCCOMM_", "LUA_"))}
    env["LUA_CPATH_5_4"] = str(tmp_path / "nowhere" / "?.so")
    r = subprocess.run([str(binary2), "check"], cwd=src, env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "cjson" in r.stderr, r.stderr
    system_cjson = subprocess.run(["lua5.4", "-e", "print(package.searchpath('cjson', "
                                   "package.cpath))"], capture_output=True, text=True,
                                  check=True).stdout.strip()
    shutil.copy(system_cjson, lib2 / "cjson.so")
    r = subprocess.run([str(binary2), "check"], cwd=src, env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
