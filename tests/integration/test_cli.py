"""The `svccomm` command line: usage, help, version, unknown commands and options, exit codes.

Runs the real binary (env SVCCOMM_BIN, default build/svccomm). None of these need the servers:
every command below stops before connecting (help, usage errors, bad arguments).
Exit codes (README, --help): 0 success, 1 runtime failure, 2 usage or configuration error.
"""
import os
import re

import pytest

import svc
from svc import Project

COMMANDS = ["runconsumer", "runpublisher", "checkpublisher", "publish", "migrate", "check",
            "version", "help"]
EXIT_CODES_LINE = "Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error."
NOT_A_COMMAND = "svccomm: '{}' is not a command. See 'svccomm --help'.\n"


def run(args, cwd, env=None, timeout=30):
    """Runs svccomm with the SVCCOMM_* variables of the caller's shell removed (they would
    override the settings under test), plus `env`."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("SVCCOMM_")}
    full.update(env or {})
    return svc.run([svc.svccomm_bin()] + list(args), cwd=cwd, env=full, timeout=timeout)


@pytest.fixture
def empty_dir(tmp_path):
    """A directory without settings.lua: commands that need settings cannot succeed here."""
    d = tmp_path / "empty"
    d.mkdir()
    return d


@pytest.fixture
def project(tmp_path):
    """A valid project (conftest's Project: settings.lua + empty apps/) whose servers do not
    exist, so a command that got as far as connecting would fail with 1, not 2. It does not
    take the `servers` fixture: nothing here may reach them."""
    (tmp_path / "proj").mkdir()
    proj = Project(tmp_path / "proj", "cli")
    proj.write_settings(defaults=False, BROKER_CONNECTION_URL="amqp://u:pw@127.0.0.1:1/v",
                        DATABASE_URL="postgresql://u:pw@127.0.0.1:1/db", QUEUE="q")
    return proj.dir


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_main_help_lists_every_command_options_and_exit_codes(empty_dir, flag):
    r = run([flag], empty_dir)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.startswith("usage: svccomm [--settings FILE] <command> [options]\n")
    listed = re.findall(r"^  ([a-z]+) {2,}\S", r.stdout.split("Global options:")[0], re.M)
    assert listed == COMMANDS
    assert ("--settings FILE  settings file (env SVCCOMM_SETTINGS, default ./settings.lua)"
            in r.stdout)
    assert EXIT_CODES_LINE in r.stdout


def test_help_without_a_command_is_the_main_usage(empty_dir):
    r = run(["help"], empty_dir)
    assert r.returncode == 0
    assert r.stdout == run(["--help"], empty_dir).stdout


def test_no_command_prints_usage_on_stderr_and_exits_2(empty_dir):
    r = run([], empty_dir)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.startswith("usage: svccomm [--settings FILE] <command> [options]\n")
    assert EXIT_CODES_LINE in r.stderr


def test_version_prints_svccomm_lua_rabbitmq_c_and_libpq_versions(empty_dir):
    r = run(["version"], empty_dir)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert len(lines) == 4, r.stdout
    assert re.fullmatch(r"svccomm \d+\.\d+\.\d+", lines[0])
    assert re.fullmatch(r"Lua 5\.4\.\d+", lines[1])
    assert re.fullmatch(r"rabbitmq-c 0\.\d+\.\d+", lines[2])
    assert re.fullmatch(r"libpq \d+\.\d+", lines[3])


def test_version_option_is_the_version_command(empty_dir):
    r = run(["--version"], empty_dir)
    assert r.returncode == 0
    assert r.stdout == run(["version"], empty_dir).stdout


def test_unknown_command_exits_2_and_points_to_help(empty_dir):
    r = run(["frobnicate"], empty_dir)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == NOT_A_COMMAND.format("frobnicate")


def test_help_of_an_unknown_command_exits_2(empty_dir):
    r = run(["help", "frobnicate"], empty_dir)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == NOT_A_COMMAND.format("frobnicate")


def test_unknown_global_option_exits_2_with_the_usage(empty_dir):
    r = run(["--frobnicate", "check"], empty_dir)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.startswith("svccomm: unknown option '--frobnicate'\n\nusage: svccomm ")


def test_settings_option_without_a_file_exits_2(empty_dir):
    r = run(["--settings"], empty_dir)
    assert r.returncode == 2
    assert r.stderr == "svccomm: --settings needs a file\n"


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "help"])
def test_help_command_and_command_help_print_the_same_usage_without_settings(empty_dir,
                                                                             command):
    by_help = run(["help", command], empty_dir)
    by_flag = run([command, "--help"], empty_dir)
    by_short = run([command, "-h"], empty_dir)
    for r in (by_help, by_flag, by_short):
        assert r.returncode == 0, r.stderr
        assert r.stderr == ""
    assert by_help.stdout.startswith("usage: svccomm [--settings FILE] %s" % command)
    assert by_help.stdout.endswith("\n")
    assert by_flag.stdout == by_help.stdout
    assert by_short.stdout == by_help.stdout


def test_runconsumer_usage_documents_workers(empty_dir):
    r = run(["runconsumer", "--help"], empty_dir)
    assert r.returncode == 0
    assert r.stdout.startswith("usage: svccomm [--settings FILE] runconsumer [--workers N]\n")
    assert "--workers N" in r.stdout.split("\n", 1)[1]


def test_runpublisher_usage_says_what_it_does(empty_dir):
    r = run(["runpublisher", "--help"], empty_dir)
    assert r.returncode == 0
    first, rest = r.stdout.split("\n", 1)
    assert first.startswith("usage: svccomm [--settings FILE] runpublisher")
    assert "outbox" in rest and "confirm" in rest


def test_command_that_needs_settings_fails_with_2_when_the_file_is_missing(empty_dir):
    r = run(["check"], empty_dir)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == ("svccomm: ./settings.lua: cannot read the settings file "
                        "(No such file or directory)\n")


def test_runconsumer_unexpected_argument_exits_2_before_connecting(project):
    r = run(["runconsumer", "--frobnicate"], project)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == "svccomm runconsumer: unexpected argument '--frobnicate'\n"


@pytest.mark.parametrize("workers", ["0", "many", "257"])
def test_runconsumer_bad_workers_exits_2_before_connecting(project, workers):
    r = run(["runconsumer", "--workers", workers], project)
    assert r.returncode == 2
    assert r.stderr == ("svccomm runconsumer: --workers: expected a number from 1 to 256, "
                        "got '%s'\n" % workers)


def test_runpublisher_unexpected_argument_exits_2_before_connecting(project):
    r = run(["runpublisher", "--frobnicate"], project)
    assert r.returncode == 2
    assert r.stdout == ""
    assert "unexpected argument '--frobnicate'" in r.stderr


@pytest.mark.parametrize("command", ["check", "migrate"])
def test_extra_argument_to_a_command_without_arguments_exits_2(project, command):
    r = run([command, "surplus"], project)
    assert r.returncode == 2
    assert r.stderr == "svccomm %s: unexpected argument 'surplus'\n" % command


def test_runtime_failure_exits_1_not_2(project):
    # migrate reaches for a database that is not there: a runtime failure, not a usage error.
    r = run(["migrate"], project)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith(
        "svccomm migrate: cannot connect to postgresql://u:****@127.0.0.1:1/db: ")
    assert ":pw@" not in r.stderr
