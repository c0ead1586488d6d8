"""`cmake --install` into a temporary prefix (issue 18): the installed svccomm runs without
the checkout (`check` on the installed example project; migrate, publish, relay, consume),
finds cjson at run time, honours SVCCOMM_LUA_PATH, and a missing module or a Lua path that
points nowhere is one line naming the path, exit 2.

The build directory is the one of SVCCOMM_BIN (the binary under test)."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import svc
from svc import RECORDER

VERSION = (svc.ROOT / "VERSION").read_text().strip()


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    build = Path(svc.svccomm_bin()).resolve().parent
    assert (build / "cmake_install.cmake").is_file(), "not a build directory: %s" % build
    dest = tmp_path_factory.mktemp("prefix") / "usr"
    r = subprocess.run(["cmake", "--install", str(build), "--prefix", str(dest)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return dest


def clean_env(**extra):
    """The environment without the test's Lua and svccomm overrides."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LUA_PATH", "LUA_CPATH", "SVCCOMM_LUA"))}
    env.update(extra)
    return env


def run(prefix, *args, cwd, env=None):
    return subprocess.run([str(prefix / "bin" / "svccomm"), *args], cwd=cwd,
                          env=env or clean_env(), capture_output=True, text=True, timeout=60)


def test_install_layout(prefix):
    share = prefix / "share"
    lua = sorted(p.name for p in (share / "lua" / "5.4" / "svccomm").iterdir())
    assert lua == sorted(p.name for p in (svc.ROOT / "lua" / "svccomm").glob("*.lua"))
    assert (prefix / "lib" / "lua" / "5.4" / "svccomm" / "core.so").is_file()
    assert sorted(p.name for p in (share / "svccomm" / "sql").iterdir()) == \
        sorted(p.name for p in (svc.ROOT / "sql").glob("*.sql"))
    man1 = sorted(p.name for p in (share / "man" / "man1").iterdir())
    assert "svccomm.1" in man1 and "svccomm-runconsumer.1" in man1
    assert (share / "man" / "man5" / "svccomm-settings.5").is_file()
    assert (share / "bash-completion" / "completions" / "svccomm").is_file()
    assert (share / "doc" / "svccomm" / "examples" / "settings.lua").is_file()
    # no path of the build tree is baked into the binary's data (debug info aside)
    build = str(Path(svc.svccomm_bin()).resolve().parent)
    data = prefix / "data.bin"
    subprocess.run(["objcopy", "-O", "binary", "--only-section=.rodata",
                    "--only-section=.data", str(prefix / "bin" / "svccomm"), str(data)],
                   check=True)
    assert data.stat().st_size > 0
    assert build.encode() not in data.read_bytes()
    assert str(svc.ROOT).encode() not in data.read_bytes()
    data.unlink()


def test_installed_binary_checks_the_installed_example(prefix, tmp_path):
    r = run(prefix, "version", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "svccomm " + VERSION
    example = tmp_path / "example"
    shutil.copytree(prefix / "share" / "doc" / "svccomm" / "examples", example)
    r = run(prefix, "check", cwd=example)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("settings: ./settings.lua\n")
    assert "OK: 2 exchanges, 2 bindings, 3 routes" in r.stdout


def test_installed_binary_end_to_end(prefix, project, monkeypatch):
    """The quick start's path with the installed binary: migrate, publish, relay, consume
    (the handler encodes with the cjson loaded at run time)."""
    monkeypatch.setenv("SVCCOMM_BIN", str(prefix / "bin" / "svccomm"))
    for k in [k for k in os.environ if k.startswith(("LUA_PATH", "LUA_CPATH"))]:
        monkeypatch.delenv(k)
    p = project.setup_consumer(RECORDER, dict(svc.RELAY_SETTINGS,
                                              INBOX_TABLE=project.table("inbox")))
    r = p.run("migrate", timeout=60)
    assert r.returncode == 0, r.stderr
    p.start_consumer()
    p.start_relay()
    r = p.run("publish", p.exchange(), "user.updated", '{"n": 7}')
    assert r.returncode == 0, r.stderr
    svc.wait_until(lambda: p.record_count() >= 1, 30, what="the event consumed")
    (n, attempt, rk, body, info), = p.records()
    assert (attempt, rk) == (1, "user.updated")
    assert json.loads(body)["payload"] == {"n": 7}


def one_line_exit_2(r, path):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and path in lines[0], r.stderr
    return lines[0]


def test_lua_path_override_pointing_nowhere(prefix, tmp_path):
    example = tmp_path / "example"
    shutil.copytree(prefix / "share" / "doc" / "svccomm" / "examples", example)
    nowhere = str(tmp_path / "nowhere")
    r = run(prefix, "check", cwd=example, env=clean_env(SVCCOMM_LUA_PATH=nowhere))
    line = one_line_exit_2(r, nowhere)
    assert "SVCCOMM_LUA_PATH" in line


def test_lua_path_override_missing_one_module_and_used_when_complete(prefix, tmp_path):
    example = tmp_path / "example"
    shutil.copytree(prefix / "share" / "doc" / "svccomm" / "examples", example)
    dev = tmp_path / "dev"
    shutil.copytree(svc.ROOT / "lua", dev)
    (dev / "svccomm" / "keys.lua").unlink()
    r = run(prefix, "check", cwd=example, env=clean_env(SVCCOMM_LUA_PATH=str(dev)))
    one_line_exit_2(r, str(dev / "svccomm" / "keys.lua"))

    # complete, the override is what runs (not the compiled-in copy)
    shutil.copy(svc.ROOT / "lua" / "svccomm" / "keys.lua", dev / "svccomm" / "keys.lua")
    r = run(prefix, "check", cwd=example, env=clean_env(SVCCOMM_LUA_PATH=str(dev)))
    assert r.returncode == 0, r.stderr
    settings = dev / "svccomm" / "settings.lua"
    settings.write_text('error("the development copy of svccomm.settings")\n' +
                        settings.read_text())
    r = run(prefix, "check", cwd=example, env=clean_env(SVCCOMM_LUA_PATH=str(dev)))
    assert r.returncode != 0 and "the development copy of svccomm.settings" in r.stderr


def test_missing_cjson_is_one_line_naming_the_path(prefix, tmp_path):
    example = tmp_path / "example"
    shutil.copytree(prefix / "share" / "doc" / "svccomm" / "examples", example)
    nowhere = str(tmp_path / "no-cjson" / "?.so")
    r = run(prefix, "check", cwd=example, env=clean_env(LUA_CPATH_5_4=nowhere))
    line = one_line_exit_2(r, nowhere)
    assert "cjson" in line


def test_one_version_number():
    """VERSION is the one place: the Debian changelog and CHANGELOG.md follow it (CMake, the
    binary and the release rockspec read it; the tests above and test_luarocks.py check)."""
    deb = (svc.ROOT / "debian" / "changelog").read_text().splitlines()[0]
    assert deb.startswith("svccomm (%s-" % VERSION), deb
    assert ("\n## %s " % VERSION) in (svc.ROOT / "CHANGELOG.md").read_text()
    assert "version = \"scm-1\"" in (svc.ROOT / "svccomm-scm-1.rockspec").read_text()
    assert (svc.ROOT / "LICENSE").read_text().startswith("MIT License")


def test_install_ships_the_type_definitions_init_points_at(prefix, tmp_path):
    types = prefix / "share" / "svccomm" / "types"
    assert sorted(p.name for p in types.iterdir()) == \
        sorted(p.name for p in (svc.ROOT / "types").glob("*.lua"))
    r = run(prefix, "init", "svc", cwd=tmp_path, env=clean_env(SVCCOMM_TYPES_DIR=str(types)))
    assert r.returncode == 0, r.stderr
    luarc = json.loads((tmp_path / "svc" / ".luarc.json").read_text())
    assert luarc["workspace.library"] == [str(types)]
    r = run(prefix, "check", cwd=tmp_path / "svc")
    assert r.returncode == 0, r.stdout + r.stderr
