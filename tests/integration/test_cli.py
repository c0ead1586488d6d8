"""The `svccomm` command line: usage, help, version, unknown commands and options, exit codes.

Runs the real binary (env SVCCOMM_BIN, default build/svccomm). None of these need the servers:
every command below stops before connecting (help, usage errors, bad arguments).
Exit codes (README, --help): 0 success, 1 runtime failure, 2 usage or configuration error.
"""
import re

import pytest

import svc
from svc import Project

COMMANDS = ["runconsumer", "runpublisher", "devconsumer", "devpublisher", "checkpublisher",
            "checkconsumer", "outbox", "dlq", "publish", "migrate", "check", "init", "version", "help"]
GROUPS = {  # git-style commands: `svccomm outbox list`
    "outbox": ["stats", "list", "unpark", "cancel"],
    "dlq": ["stats", "list", "replay", "purge"],
}
SUBCOMMANDS = [g + " " + s for g, subs in GROUPS.items() for s in subs]
EXIT_CODES_LINE = "Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error."
UNKNOWN_COMMAND = "svccomm: unknown command '{}'\n\n"  # then the main usage


run = svc.run_svccomm_alone


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


def test_unknown_command_exits_2_with_the_usage(empty_dir):
    r = run(["frobnicate"], empty_dir)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == UNKNOWN_COMMAND.format("frobnicate") + run(["--help"], empty_dir).stdout


def test_help_of_an_unknown_command_exits_2(empty_dir):
    r = run(["help", "frobnicate"], empty_dir)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == UNKNOWN_COMMAND.format("frobnicate") + run(["--help"], empty_dir).stdout


def test_unknown_global_option_exits_2_with_the_usage(empty_dir):
    r = run(["--frobnicate", "check"], empty_dir)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.startswith("svccomm: unknown option '--frobnicate'\n\nusage: svccomm ")


def test_settings_option_without_a_file_exits_2(empty_dir):
    r = run(["--settings"], empty_dir)
    assert r.returncode == 2
    assert r.stderr == "svccomm: --settings needs a file\n"


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "help"] + SUBCOMMANDS)
def test_help_command_and_command_help_print_the_same_usage_without_settings(empty_dir,
                                                                             command):
    by_help = run(["help", *command.split()], empty_dir)
    by_flag = run([*command.split(), "--help"], empty_dir)
    by_short = run([*command.split(), "-h"], empty_dir)
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


def test_runconsumer_unknown_option_exits_2_before_connecting(project):
    r = run(["runconsumer", "--frobnicate"], project)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == ("svccomm: unknown option '--frobnicate' for runconsumer\n\n"
                        + run(["runconsumer", "--help"], project).stdout)
    r = run(["runconsumer", "surplus"], project)
    assert r.returncode == 2
    assert r.stderr == "svccomm runconsumer: unexpected argument 'surplus'\n"


@pytest.mark.parametrize("workers", ["0", "many", "257"])
def test_runconsumer_bad_workers_exits_2_before_connecting(project, workers):
    r = run(["runconsumer", "--workers", workers], project)
    assert r.returncode == 2
    assert r.stderr == ("svccomm runconsumer: --workers: expected a number from 1 to 256, "
                        "got '%s'\n" % workers)


def test_runpublisher_unknown_option_exits_2_before_connecting(project):
    r = run(["runpublisher", "--frobnicate"], project)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == ("svccomm: unknown option '--frobnicate' for runpublisher\n\n"
                        + run(["runpublisher", "--help"], project).stdout)
    r = run(["runpublisher", "surplus"], project)
    assert r.returncode == 2
    assert r.stdout == ""
    assert "unexpected argument 'surplus'" in r.stderr


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


# -- one option parser: every command's options, global options after the command, did you mean

OPTIONS = {  # each command's own options, as its --help lists them
    "runconsumer": ["--workers N"],
    "runpublisher": [],
    "devconsumer": [],
    "devpublisher": [],
    "checkpublisher": ["--max-queue-size N", "--max-delay S", "--max-parked P", "--json"],
    "checkconsumer": ["--min-consumers N", "--max-ready N", "--max-dlq N", "--json"],
    "outbox": [],
    "outbox stats": ["--json"],
    "outbox list": ["--parked", "--aggregate A", "--limit N", "--json"],
    "outbox unpark": ["--all", "--json"],
    "outbox cancel": ["--aggregate A", "--event-type E", "--tags K=V,...", "--json"],
    "dlq": [],
    "dlq stats": ["--json"],
    "dlq list": ["--limit N", "--json"],
    "dlq replay": ["--all", "--id ID", "--to-exchange E", "--json"],
    "dlq purge": ["--yes", "--json"],
    "publish": ["--at TIME", "--tags JSON"],
    "migrate": [],
    "check": ["--connect"],
    "init": [],
    "version": [],
    "help": [],
}
GLOBAL_OPTIONS = ["--settings FILE", "-h, --help", "--version"]
EXIT_CODES = {  # commands whose exit codes say more than EXIT_CODES_LINE
    "runpublisher": "Exit codes: 0 stopped by a signal, 1 runtime failure, 2 usage or "
                    "configuration error.",
    "devpublisher": "Exit codes: 0 stopped by a signal, 1 runtime failure, 2 usage or "
                    "configuration error.",
    "check": "Exit codes: 0 success, 1 runtime failure or (--connect) migrations not applied or "
             "objects missing under DO_NOT_DECLARE, 2 usage or configuration error, 3 "
             "(--connect) a server cannot be reached.",
    "init": "Exit codes: 0 written, 1 a file could not be written, 2 usage error or a file "
            "exists already (nothing written).",
    "outbox unpark": "Exit codes: 0 every row given was unparked, 1 a row does not exist or is "
                     "not parked (the others were unparked) or the database failed, 2 usage or "
                     "configuration error.",
    "checkconsumer": "Exit codes: 0 healthy, 1 unhealthy, 2 usage or configuration error, 3 the "
                     "broker cannot be reached (health unknown).",
    "dlq replay": "Exit codes: 0 every letter asked for was replayed, 1 a letter was kept or not "
                  "found or the broker failed (the count replayed is printed), 2 usage or "
                  "configuration error.",
    "checkpublisher": "Exit codes: 0 healthy, 1 unhealthy, 2 usage or configuration error, "
                      "3 the database cannot be reached or the outbox table read (health "
                      "unknown).",
}
LATER = "2030-01-02T03:04:05Z"


def option_block(text, title):
    """[(left column, help)] of the option lines under `title` up to the next blank line."""
    block = text.split("\n" + title + "\n", 1)[1].split("\n\n", 1)[0]
    return [tuple(re.split(r" {2,}", line.strip(), maxsplit=1)) for line in block.splitlines()]


@pytest.fixture
def bare_project(tmp_path):
    """Settings without QUEUE and DATABASE_URL: a command that accepted its options stops at
    '<KEY>: required by <command>, not set' (exit 2) without connecting to anything."""
    (tmp_path / "bare").mkdir()
    proj = Project(tmp_path / "bare", "cli")
    proj.write_settings(defaults=False, BROKER_CONNECTION_URL="amqp://u:pw@127.0.0.1:1/v")
    return proj.dir


@pytest.mark.parametrize("command", COMMANDS + SUBCOMMANDS)
def test_command_help_shows_its_own_options_the_global_ones_and_its_exit_codes(empty_dir,
                                                                            command):
    r = run([*command.split(), "--help"], empty_dir)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    synopsis = r.stdout.split("\n", 1)[0]
    assert synopsis.startswith("usage: svccomm [--settings FILE] %s" % command)
    assert re.findall(r"\[(--[^]]+)\]", synopsis)[1:] == OPTIONS[command]
    if OPTIONS[command]:
        own = option_block(r.stdout, "Options:")
        assert [left for left, _ in own] == OPTIONS[command]
        assert all(len(help_text) > 10 for _, help_text in own)
    else:
        assert "\nOptions:\n" not in r.stdout
    glob = option_block(r.stdout, "Global options (before or after the command):")
    assert [left for left, _ in glob] == GLOBAL_OPTIONS
    assert " ".join(r.stdout.split()).endswith(EXIT_CODES.get(command, EXIT_CODES_LINE))
    # --help wins over anything wrong beside it, and needs no settings.
    assert run([*command.split(), "--frobnicate", "-h"], empty_dir).stdout == r.stdout
    assert run(["help", *command.split()], empty_dir).stdout == r.stdout


def test_detailed_usage_of_runpublisher_and_checkpublisher_is_the_one_shown(empty_dir):
    r = run(["checkpublisher", "--help"], empty_dir)
    assert r.returncode == 0
    assert "more than P rows (default 0) are\nparked" in r.stdout
    assert ("--max-delay S       seconds a due row may wait before it counts as late"
            in r.stdout)
    r = run(["help", "runpublisher"], empty_dir)
    assert r.returncode == 0
    assert "SIGTERM/SIGINT: stop claiming, wait up to SHUTDOWN_TIMEOUT" in r.stdout


def test_help_of_help_is_its_usage_not_an_error(empty_dir):
    r = run(["help", "--help"], empty_dir)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.startswith(
        "usage: svccomm [--settings FILE] help [<command> [<subcommand>]]\n")
    assert r.stdout == run(["help", "help"], empty_dir).stdout
    r = run(["help", "check", "migrate"], empty_dir)
    assert r.returncode == 2
    assert r.stderr == "svccomm help: unexpected argument 'migrate'\n"


@pytest.mark.parametrize("args, option, value, stops_at", [
    (["runconsumer"], "--workers", "2", "QUEUE: required by runconsumer, not set"),
    (["checkpublisher"], "--max-queue-size", "3",
     "DATABASE_URL: required by checkpublisher, not set"),
    (["checkpublisher"], "--max-delay", "2.5", "DATABASE_URL: required by checkpublisher, not set"),
    (["publish", "agg", "ev", "{}"], "--at", LATER, "DATABASE_URL: required by publish, not set"),
    (["publish", "agg", "ev", "{}", "--at", LATER], "--tags", '{"k": "v"}',
     "DATABASE_URL: required by publish, not set"),
])
def test_option_value_may_follow_a_space_or_an_equals_sign(bare_project, args, option, value,
                                                           stops_at):
    spaced = run(args + [option, value], bare_project)
    joined = run(args + ["%s=%s" % (option, value)], bare_project)
    assert spaced.returncode == 2
    assert stops_at in spaced.stderr, spaced.stderr
    assert (joined.returncode, joined.stdout, joined.stderr) == (
        spaced.returncode, spaced.stdout, spaced.stderr)


def test_tags_without_at_is_refused_in_both_forms(bare_project):
    for tags in (["--tags", "{}"], ["--tags={}"]):
        r = run(["publish", "agg", "ev", "{}"] + tags, bare_project)
        assert r.returncode == 2
        assert r.stderr == "svccomm publish: --tags needs --at\n"


@pytest.mark.parametrize("args, message", [
    (["runconsumer", "--workers=0"],
     "svccomm runconsumer: --workers: expected a number from 1 to 256, got '0'"),
    (["checkpublisher", "--max-queue-size", "-1"],
     "svccomm checkpublisher: --max-queue-size: expected an integer >= 0, got '-1'"),
    (["checkpublisher", "--max-queue-size=1.5"],
     "svccomm checkpublisher: --max-queue-size: expected an integer >= 0, got '1.5'"),
    (["checkpublisher", "--max-delay", "soon"],
     "svccomm checkpublisher: --max-delay: expected a number of seconds >= 0, got 'soon'"),
    (["checkpublisher", "--max-delay=-1"],
     "svccomm checkpublisher: --max-delay: expected a number of seconds >= 0, got '-1'"),
    (["checkpublisher", "--max-delay=inf"],
     "svccomm checkpublisher: --max-delay: expected a number of seconds >= 0, got 'inf'"),
    (["checkpublisher", "--max-delay"], "svccomm checkpublisher: --max-delay needs a number of "
                                        "seconds"),
    (["runconsumer", "--workers"], "svccomm runconsumer: --workers needs a number"),
    (["publish", "agg", "ev", "{}", "--at"], "svccomm publish: --at needs a value"),
    (["check", "--settings"], "svccomm: --settings needs a file"),
    (["check", "--help=yes"], "svccomm: --help takes no value"),
])
def test_bad_option_value_exits_2_with_one_line_before_settings(empty_dir, args, message):
    r = run(args, empty_dir)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == message + "\n"


@pytest.mark.parametrize("form", [["--settings", "{}", "check"], ["check", "--settings", "{}"],
                                  ["check", "--settings={}"]])
def test_settings_option_is_accepted_before_and_after_the_command(empty_dir, project, form):
    settings = str(project / "settings.lua")
    r = run([a.format(settings) for a in form], empty_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout == run(["--settings", settings, "check"], empty_dir).stdout
    assert "q" in r.stdout.split()


def test_version_option_is_accepted_after_the_command(empty_dir):
    r = run(["check", "--version"], empty_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout == run(["version"], empty_dir).stdout


@pytest.mark.parametrize("typed, meant", [("runconsumr", "runconsumer"), ("chek", "check"),
                                          ("pubilsh", "publish"), ("RunPublisher", "runpublisher"),
                                          ("checkpublsher", "checkpublisher")])
def test_unknown_command_suggests_the_closest_one(empty_dir, typed, meant):
    expected = ("svccomm: unknown command '%s' (did you mean %s?)\n\n" % (typed, meant)
                + run(["--help"], empty_dir).stdout)
    for args in ([typed], ["help", typed], ["--settings", "x.lua", typed, "--workers", "2"]):
        r = run(args, empty_dir)
        assert r.returncode == 2
        assert r.stdout == ""
        assert r.stderr == expected


@pytest.mark.parametrize("args, typed, command, meant", [
    (["runconsumer", "--worker", "3"], "--worker", "runconsumer", "--workers"),
    (["runconsumer", "--wrokers=3"], "--wrokers", "runconsumer", "--workers"),
    (["checkpublisher", "--max-dealy=5"], "--max-dealy", "checkpublisher", "--max-delay"),
    (["checkpublisher", "--max-queue-sise", "1"], "--max-queue-sise", "checkpublisher",
     "--max-queue-size"),
    (["publish", "agg", "ev", "{}", "--tag", "{}"], "--tag", "publish", "--tags"),
    (["check", "--setings=x.lua"], "--setings", "check", "--settings"),
    (["runpublisher", "--verison"], "--verison", "runpublisher", "--version"),
    (["migrate", "--frobnicate"], "--frobnicate", "migrate", None),
    (["runconsumer", "--work=3"], "--work", "runconsumer", None),  # no abbreviations
    (["checkpublisher", "--max", "3"], "--max", "checkpublisher", None),
])
def test_unknown_option_suggests_the_closest_one(empty_dir, args, typed, command, meant):
    r = run(args, empty_dir)
    assert r.returncode == 2
    assert r.stdout == ""
    hint = " (did you mean %s?)" % meant if meant else ""
    assert r.stderr == ("svccomm: unknown option '%s' for %s%s\n\n" % (typed, command, hint)
                        + run([command, "--help"], empty_dir).stdout)


def test_unknown_global_option_suggests_the_closest_one(empty_dir):
    r = run(["--setings", "x.lua", "check"], empty_dir)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == ("svccomm: unknown option '--setings' (did you mean --settings?)\n\n"
                        + run(["--help"], empty_dir).stdout)


@pytest.mark.parametrize("args", [
    ["publish", "agg", "ev", "-5"],
    ["publish", "agg", "ev", '{"a": 1}'],
    ["publish", "agg", "ev", "[-1, 2]"],
    ["publish", "--at", LATER, "agg", "ev", "{}"],
    ["publish", "agg", "--at=" + LATER, "ev", "-5", "--tags", "{}"],
    ["publish", "--", "agg", "ev", "-5"],
    ["publish", "agg", "ev", "--", "-5"],
])
def test_publish_positional_arguments_may_look_like_options(bare_project, args):
    # Every form gets past the arguments to the settings (no DATABASE_URL here).
    r = run(args, bare_project)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == "svccomm publish: ./settings.lua: DATABASE_URL: required by publish, not set\n"


@pytest.mark.parametrize("args", [
    ["publish", "agg", "ev", "-"],
    ["publish", "agg", "ev", "--", "-h"],
    ["publish", "agg", "ev", "--", "--at"],
])
def test_publish_payload_after_double_dash_is_a_payload_even_when_it_looks_like_an_option(
        bare_project, args):
    r = run(args, bare_project)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.startswith("svccomm publish: payload is not valid JSON: ")


def test_publish_needs_its_three_arguments(empty_dir):
    r = run(["publish", "agg", "ev"], empty_dir)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == ("svccomm publish: expected <aggregate> <event_type> <payload-json>, "
                        "got 2 arguments\n\n" + run(["publish", "--help"], empty_dir).stdout)
    r = run(["publish", "agg", "ev", "{}", "{}"], empty_dir)
    assert r.returncode == 2
    assert r.stderr == "svccomm publish: unexpected argument '{}'\n"


# -- git-style groups: `svccomm outbox list`


@pytest.mark.parametrize("group", GROUPS)
def test_group_help_lists_its_commands_and_a_bare_group_exits_2(empty_dir, group):
    r = run([group, "--help"], empty_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: svccomm [--settings FILE] %s <command>\n" % group)
    block = r.stdout.split("\nCommands:\n", 1)[1].split("\n\n", 1)[0]
    assert [line.split()[0] for line in block.splitlines()] == GROUPS[group]
    bare = run([group], empty_dir)
    assert bare.returncode == 2
    assert bare.stdout == ""
    assert bare.stderr == "svccomm %s: a command is required\n\n" % group + r.stdout


def test_unknown_subcommand_suggests_the_closest_one(empty_dir):
    r = run(["outbox", "lst"], empty_dir)
    assert r.returncode == 2
    assert r.stderr.startswith("svccomm outbox: unknown command 'lst' (did you mean list?)\n\n"
                               "usage: svccomm [--settings FILE] outbox <command>\n")
    r = run(["help", "outbox", "lst"], empty_dir)
    assert r.returncode == 2
    assert r.stderr.startswith("svccomm outbox: unknown command 'lst' (did you mean list?)")


@pytest.mark.parametrize("args, message", [
    (["outbox", "list", "--limit", "0"],
     "svccomm outbox list: --limit: expected a number from 1 to 100000, got '0'"),
    (["outbox", "list", "--frob"], "svccomm: unknown option '--frob' for outbox list"),
    (["outbox", "unpark"], "svccomm outbox unpark: give row ids or --all (not both)"),
    (["outbox", "unpark", "1", "--all"], "svccomm outbox unpark: give row ids or --all (not both)"),
    (["outbox", "unpark", "x1"], "svccomm outbox unpark: 'x1' is not a row id (an integer > 0)"),
    (["outbox", "cancel", "--aggregate", "a", "--event-type", "e"],
     "svccomm outbox cancel: --tags is required"),
    (["outbox", "cancel", "--aggregate", "a", "--event-type", "e", "--tags", "novalue"],
     "svccomm outbox cancel: --tags: expected key=value, got 'novalue'"),
    (["dlq", "purge"], "svccomm dlq purge: deletes every dead letter for good: add --yes"),
    (["dlq", "replay"], "svccomm dlq replay: give --all or --id ID (not both)"),
    (["dlq", "replay", "--all", "--id", "x"], "svccomm dlq replay: give --all or --id ID"),
    (["dlq", "list", "--limit", "0"],
     "svccomm dlq list: --limit: expected a number from 1 to 10000, got '0'"),
])
def test_ops_usage_errors_exit_2_before_connecting(project, args, message):
    r = run(args, project)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(message), r.stderr


@pytest.mark.parametrize("args, key, command", [
    (["dlq", "stats"], "QUEUE", "dlq stats"),
    (["dlq", "replay", "--all"], "QUEUE", "dlq replay"),
    (["checkconsumer"], "QUEUE", "checkconsumer"),
    (["outbox", "list"], "DATABASE_URL", "outbox list"),
    (["outbox", "unpark", "--all"], "DATABASE_URL", "outbox unpark"),
])
def test_ops_commands_name_the_setting_they_miss(bare_project, args, key, command):
    r = run(args, bare_project)
    assert r.returncode == 2, r.stderr
    assert r.stderr == "svccomm: ./settings.lua: %s: required by %s, not set\n" % (key, command)


@pytest.mark.parametrize("args, code", [
    (["dlq", "list"], 1), (["outbox", "stats"], 1), (["checkconsumer"], 3),
])
def test_ops_commands_with_servers_away_fail_without_the_password(project, args, code):
    r = run(args, project)
    assert r.returncode == code, r.stderr
    assert r.stdout == "" and r.stderr.startswith("svccomm %s: " % " ".join(args))
    assert "pw" not in r.stderr
