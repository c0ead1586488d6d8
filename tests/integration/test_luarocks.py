"""`luarocks make` in a clean tree installs a module that a plain `lua5.4` can require.

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
