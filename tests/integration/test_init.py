"""`svccomm init [DIR]`: the skeleton of a new service passes `svccomm check` and its own busted
spec, lists every setting of the schema, points .luarc.json at the type definitions, and a
second init refuses (exit 2, the list of existing files) without writing anything.

Needs no servers: check does not connect, and the scaffold spec runs without a database.
"""
import os
import shutil
import subprocess

import pytest

import svc
from svc import ROOT

LUA_CPATH = os.environ.get("SVCCOMM_LUA_CPATH", str(ROOT / "build" / "lua" / "?.so"))
FILES = ["settings.lua", "apps/example/consumers.lua", "spec/example_spec.lua", ".luarc.json",
         ".gitignore"]


def schema_keys():
    r = svc.run(["lua5.4", "-e", 'for _, k in ipairs(require("svccomm.settings_schema").keys()) '
                 'do print(k) end'], env=lua_env())
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def lua_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SVCCOMM_")}
    env["LUA_PATH"] = "%s/lua/?.lua;%s/lua/?/init.lua;;" % (ROOT, ROOT)
    env["LUA_CPATH"] = LUA_CPATH + ";;"
    return env


def test_init_writes_a_service_that_checks_and_passes_its_spec(tmp_path):
    d = tmp_path / "orders"
    r = svc.run_svccomm_alone(["init", str(d)], tmp_path,
                              env={"SVCCOMM_TYPES_DIR": str(ROOT / "types")})
    assert r.returncode == 0, r.stderr
    for f in FILES:
        assert (d / f).is_file(), f
        assert "created %s/%s" % (d, f) in r.stdout
    settings = (d / "settings.lua").read_text()
    for key in schema_keys():
        assert "\t%s = " % key in settings or "\t-- %s = " % key in settings, key
    assert 'QUEUE = "orders"' in settings
    assert '"workspace.library": ["%s"]' % (ROOT / "types") in (d / ".luarc.json").read_text()

    r = svc.run_svccomm_alone(["check"], d)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "example   thing.*" in r.stdout

    if not shutil.which("busted"):
        pytest.skip("busted is not installed")
    r = svc.run(["busted", "--lua=lua5.4", "-o", "TAP"], cwd=d, env=lua_env(), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "not ok" not in r.stdout and "ok 3 " in r.stdout, r.stdout

    # the spec catches a broken handler: one that no longer rejects a missing id
    app = d / "apps" / "example" / "consumers.lua"
    app.write_text(app.read_text().replace("svccomm.permanent_error(", "print("))
    r = svc.run(["busted", "--lua=lua5.4", "-o", "TAP"], cwd=d, env=lua_env(), timeout=60)
    assert r.returncode != 0 and "not ok" in r.stdout, r.stdout


def test_init_refuses_to_overwrite_and_writes_nothing(tmp_path):
    (tmp_path / "spec").mkdir()
    (tmp_path / "spec" / "example_spec.lua").write_text("-- mine\n")
    (tmp_path / ".gitignore").write_text("mine\n")
    r = svc.run_svccomm_alone(["init"], tmp_path)
    assert r.returncode == 2
    assert r.stdout == ""
    assert "refusing to overwrite" in r.stderr
    listed = [line.strip() for line in r.stderr.splitlines()[1:]]
    assert listed == ["./spec/example_spec.lua", "./.gitignore"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == [".gitignore", "example_spec.lua", "spec"]
    assert (tmp_path / ".gitignore").read_text() == "mine\n"


def test_second_init_refuses_with_the_list_of_every_file(tmp_path):
    assert svc.run_svccomm_alone(["init", "svc"], tmp_path).returncode == 0
    before = {p: p.read_bytes() for p in (tmp_path / "svc").rglob("*") if p.is_file()}
    r = svc.run_svccomm_alone(["init", "svc"], tmp_path)
    assert r.returncode == 2
    assert [line.strip() for line in r.stderr.splitlines()[1:]] == ["svc/" + f for f in FILES]
    assert {p: p.read_bytes() for p in (tmp_path / "svc").rglob("*") if p.is_file()} == before


def test_init_takes_at_most_one_directory(tmp_path):
    r = svc.run_svccomm_alone(["init", "a", "b"], tmp_path)
    assert r.returncode == 2
    assert not (tmp_path / "a").exists()
