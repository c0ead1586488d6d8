"""`svccomm check` and the settings/app errors every command reports at startup.

`check` loads settings.lua and every app and prints the topology and the routing table; it
needs no server. Each mistake of issue 2 has its own test below with the exact message on
stderr and exit code 2; passwords never appear in any output.
"""
import os
import re
import textwrap

import pytest

import svc
from svc import Project

REFERENCE_TYPE_ERROR = "expected a table name ([A-Za-z_][A-Za-z0-9_]*, at most 63 characters, " \
                       "optionally schema.table)"

# Messages name the settings file as given: `svccomm check` in the project directory reads
# ./settings.lua, and the apps are then ./apps/<name>/consumers.lua ("apps/<name>/...").
SETTINGS = "./settings.lua"


run = svc.run_svccomm_alone


@pytest.fixture
def project(tmp_path):
    """A svc.Project in tmp_path, starting with an empty settings.lua, but without the
    `servers` fixture: check never connects, so these tests neither need the servers nor
    suffer when another suite restarts them."""
    proj = Project(tmp_path, "check")
    proj.write_settings_source("return {}\n")
    return proj


def settings(project, source):
    """Writes settings.lua verbatim (dedented)."""
    project.write_settings_source(textwrap.dedent(source))


def write_app(project, name, source):
    """Writes apps/<name>/consumers.lua; returns its path as messages show it."""
    project.write_app(name, textwrap.dedent(source))
    return "apps/%s/consumers.lua" % name


def one_consumer(exchange):
    """Source of an app that registers one handler for (exchange, "k")."""
    return "require('svccomm').message_router.consumer('%s', 'k', function() end)\n" % exchange


def check(project, env=None):
    return project.run("check", env=env)


def line_of(path, text):
    """1-based number of the first line of `path` that contains `text`."""
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if text in line:
                return n
    raise AssertionError("%r not in %s" % (text, path))


def assert_config_error(r, message):
    """Exit 2, nothing on stdout, exactly `svccomm: <message>` on stderr."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    assert r.stderr == "svccomm: %s\n" % message


def section(stdout, title):
    """The indented lines under `title:` up to the next blank line, whitespace collapsed."""
    lines = stdout.split("\n")
    i = lines.index(title + ":")
    out = []
    for line in lines[i + 1:]:
        if not line.strip():
            break
        out.append(" ".join(line.split()))
    return out


# --- the example project -------------------------------------------------------------------


def test_check_on_the_example_prints_topology_and_routes_with_handler_places():
    r = run(["check"], svc.ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    out = r.stdout
    assert "settings: ./settings.lua\n" in out
    assert "app id:   example-service\n" in out
    # the example's broker password is "svccomm": masked
    assert "broker:   amqp://svccomm:****@localhost:5673/svccomm\n" in out
    assert ":svccomm@" not in out
    assert "database: postgresql://svccomm@localhost:5433/svccomm\n" in out
    assert "queue:    example_service (x-queue-type=quorum)\n" in out
    assert "declare:  yes\n" in out
    assert section(out, "exchanges") == ["user topic durable", "billing topic durable"]
    assert section(out, "bindings") == ["example_service <- user update.*",
                                        "example_service <- billing #"]
    billing = "apps/billing/consumers.lua"
    users = "apps/users/consumers.lua"
    assert section(out, "routes") == [
        "EXCHANGE ROUTING KEY APP HANDLER",
        "billing customer.* billing %s:%d" % (billing, line_of(
            os.path.join(svc.ROOT, billing), "function(payload, meta)")),
        # the registration line, and where the function is when elsewhere (issue 22)
        "user update.* users %s:%d (function at :%d)" % (users, line_of(
            os.path.join(svc.ROOT, users), 'router.consumer("user"'), line_of(
            os.path.join(svc.ROOT, users), "local function on_user_update")),
        "(default) (no other match) billing %s:%d" % (billing, line_of(
            os.path.join(svc.ROOT, billing), "router.default_consumer(function")),
    ]
    assert "apps:     billing, users\n" in out
    assert out.endswith("OK: 2 exchanges, 2 bindings, 3 routes\n")


def test_check_prints_the_routing_table_of_a_project_in_precedence_order(project):
    settings(project, """\
        return {
          QUEUE = "q",
          EXCHANGES = { "orders", { "audit", "fanout" } },
          BINDS = { "orders", { "audit", "" } },
        }
        """)
    app = write_app(project, "shop", """\
        local router = require("svccomm").message_router
        local function wide(rk, body) end
        local function exact(rk, body) end
        local function pattern(rk, body) end
        local function fallback(rk, body) end
        router.consumer("orders")(wide)
        router.consumer("orders", "order.created", exact)
        router.consumer("orders", "order.*")(pattern)
        router.default_consumer(fallback)
        """)
    r = check(project)
    assert r.returncode == 0, r.stderr
    assert section(r.stdout, "exchanges") == ["orders topic durable", "audit fanout durable"]
    assert section(r.stdout, "bindings") == ["q <- orders #", "q <- audit"]
    assert section(r.stdout, "routes") == [
        "EXCHANGE ROUTING KEY APP HANDLER",
        "orders order.created shop %s:7 (function at :3)" % app,
        "orders order.* shop %s:8 (function at :4)" % app,
        "orders (any) shop %s:6 (function at :2)" % app,
        "(default) (no other match) shop %s:9 (function at :5)" % app,
    ]
    assert r.stdout.endswith("OK: 2 exchanges, 2 bindings, 4 routes\n")


def test_check_masks_passwords_of_both_urls(project):
    settings(project, """\
        return {
          BROKER_CONNECTION_URL = "amqps://bob:br0ker-s3cret@rabbit.example:5671/prod",
          DATABASE_URL = "postgresql://bob:db-s3cret@db.example:5432/app?sslmode=require",
        }
        """)
    r = check(project)
    assert r.returncode == 0, r.stderr
    assert "broker:   amqps://bob:****@rabbit.example:5671/prod\n" in r.stdout
    assert "database: postgresql://bob:****@db.example:5432/app?sslmode=require\n" in r.stdout
    assert "s3cret" not in r.stdout + r.stderr


def test_check_masks_the_password_of_a_key_value_database_url(project):
    settings(project, """\
        return { DATABASE_URL = "host=db.example dbname=app user=bob password=kv-s3cret" }
        """)
    r = check(project)
    assert r.returncode == 0, r.stderr
    assert "database: host=db.example dbname=app user=bob password=****\n" in r.stdout
    assert "s3cret" not in r.stdout + r.stderr


@pytest.mark.parametrize("url, masked", [
    ("postgresql://svc@127.0.0.1:1/app?password=qu3ry-s3cret",
     "postgresql://svc@127.0.0.1:1/app?password=****"),
    ("postgresql://u:p@ssw0rd-s3cret@127.0.0.1:1/db", "postgresql://u:****@127.0.0.1:1/db"),
])
@pytest.mark.parametrize("command", ["check", "migrate", "checkpublisher"])
def test_query_and_unencoded_at_passwords_never_printed(project, command, url, masked):
    """A password in the query string, and one with an unencoded '@' (libpq then reads the end
    of the password as part of the host name and echoes it in its error), stay hidden from
    every command that shows the URL or a connection error."""
    settings(project, 'return { DATABASE_URL = "%s" }' % url)
    r = project.run(command)
    out = r.stdout + r.stderr
    assert "s3cret" not in out and "ssw0rd" not in out, out
    if command == "check":
        assert r.returncode == 0, r.stderr
        assert "database: %s\n" % masked in r.stdout
    else:  # checkpublisher: 3, the database cannot be reached (issue 22)
        assert r.returncode == (3 if command == "checkpublisher" else 1), out


def test_env_overrides_of_both_urls_are_used_and_shown_masked(project):
    settings(project, """\
        return {
          BROKER_CONNECTION_URL = "amqp://file:file-pw@file-host:5672/file",
          DATABASE_URL = "postgresql://file:file-pw@file-host/file",
        }
        """)
    r = check(project, env={
        "SVCCOMM_BROKER_URL": "amqp://envuser:env-s3cret@env-rabbit:5999/envvh",
        "SVCCOMM_DATABASE_URL": "postgresql://envuser:env-s3cret@env-db:6543/envdb",
    })
    assert r.returncode == 0, r.stderr
    assert "broker:   amqp://envuser:****@env-rabbit:5999/envvh\n" in r.stdout
    assert "database: postgresql://envuser:****@env-db:6543/envdb\n" in r.stdout
    assert "file-host" not in r.stdout
    assert "s3cret" not in r.stdout + r.stderr


def test_an_empty_env_override_counts_as_unset(project):
    settings(project, 'return { BROKER_CONNECTION_URL = "amqp://file@file-host/v" }\n')
    r = check(project, env={"SVCCOMM_BROKER_URL": "", "SVCCOMM_DATABASE_URL": ""})
    assert r.returncode == 0, r.stderr
    assert "broker:   amqp://file@file-host/v\n" in r.stdout
    assert "database: (none: handlers run without a transaction)\n" in r.stdout


def test_unparsable_env_override_names_the_variable_and_hides_the_password(project):
    r = check(project, env={"SVCCOMM_BROKER_URL": "http://envuser:env-s3cret@host/"})
    assert_config_error(r, '%s: BROKER_CONNECTION_URL (from SVCCOMM_BROKER_URL): expected an '
                        'amqp:// or amqps:// URL, got "http://envuser:****@host/" '
                        '(not a valid amqp:// or amqps:// URL)' % SETTINGS)
    assert "s3cret" not in r.stderr


def test_log_level_env_override_is_validated(project):
    r = check(project, env={"SVCCOMM_LOG_LEVEL": "loud"})
    assert_config_error(r, '%s: LOG_LEVEL (from SVCCOMM_LOG_LEVEL): expected one of "debug", '
                        '"info", "warning", "error", got "loud"' % SETTINGS)


# --- choosing the settings file ------------------------------------------------------------


def other_project(base, name, queue):
    """base/<name>/custom.lua (QUEUE = queue) and one app only_<name> handling ex_<name> k."""
    d = base / name
    (d / "apps" / ("only_" + name)).mkdir(parents=True)
    (d / "custom.lua").write_text('return { QUEUE = "%s" }\n' % queue)
    (d / "apps" / ("only_" + name) / "consumers.lua").write_text(
        'require("svccomm").message_router.consumer("ex_%s", "k", function() end)\n' % name)
    return d


def elsewhere(project):
    d = project.dir / "elsewhere"
    d.mkdir(exist_ok=True)
    return d


def test_settings_option_picks_the_file_and_its_directory_is_the_project(project):
    a = other_project(project.dir, "a", "queue_a")
    path = str(a / "custom.lua")
    r = run(["--settings", path, "check"], elsewhere(project))
    assert r.returncode == 0, r.stderr
    assert "settings: %s\n" % path in r.stdout
    assert "queue:    queue_a\n" in r.stdout
    assert section(r.stdout, "routes")[1:] == [
        "ex_a k only_a %s:1" % (a / "apps" / "only_a" / "consumers.lua")]
    # --settings=FILE works too
    r2 = run(["--settings=" + path, "check"], elsewhere(project))
    assert r2.returncode == 0 and r2.stdout == r.stdout


def test_svccomm_settings_env_picks_the_file_and_the_option_wins_over_it(project):
    a = other_project(project.dir, "a", "queue_a")
    b = other_project(project.dir, "b", "queue_b")
    env = {"SVCCOMM_SETTINGS": str(a / "custom.lua")}
    r = run(["check"], elsewhere(project), env)
    assert r.returncode == 0, r.stderr
    assert "settings: %s\n" % (a / "custom.lua") in r.stdout
    assert "queue:    queue_a\n" in r.stdout
    r = run(["--settings", str(b / "custom.lua"), "check"], elsewhere(project), env)
    assert r.returncode == 0, r.stderr
    assert "queue:    queue_b\n" in r.stdout
    assert "ex_b k only_b" in " ".join(r.stdout.split())


def test_relative_settings_path_is_resolved_from_the_working_directory(project):
    other_project(project.dir, "a", "queue_a")
    r = run(["--settings", "a/custom.lua", "check"], project.dir)
    assert r.returncode == 0, r.stderr
    assert "settings: a/custom.lua\n" in r.stdout
    assert "ex_a k only_a a/apps/only_a/consumers.lua:1" in " ".join(r.stdout.split())


def test_missing_settings_file_named_by_the_option_exits_2(project):
    path = project.dir / "nope" / "settings.lua"
    r = run(["--settings", str(path), "check"], project.dir)
    assert_config_error(r, "%s: cannot read the settings file (No such file or directory)"
                        % path)


# --- every mistake: exact message, exit 2 --------------------------------------------------


def test_unknown_key_names_it_and_suggests_the_nearest_known_key(project):
    settings(project, "return { QUEUE = 'q', PREFECH_COUNT = 10 }\n")
    assert_config_error(check(project), "%s: PREFECH_COUNT: unknown key (did you mean "
                        "PREFETCH_COUNT?)" % SETTINGS)


def test_unknown_key_suggests_by_words_when_no_key_is_close(project):
    settings(project, "return { BROKER_URL = 'amqp://localhost' }\n")
    assert_config_error(check(project), "%s: BROKER_URL: unknown key (did you mean "
                        "BROKER_CONNECTION_URL?)" % SETTINGS)


def test_unknown_key_without_a_near_match_has_no_suggestion(project):
    settings(project, "return { TOTALLY_DIFFERENT_THING = 1 }\n")
    assert_config_error(check(project), "%s: TOTALLY_DIFFERENT_THING: unknown key"
                        % SETTINGS)


@pytest.mark.parametrize("line, message", [
    ('PREFETCH_COUNT = "10"', 'PREFETCH_COUNT: expected an integer from 1 to 65535, got "10"'),
    ("DO_NOT_DECLARE = 'yes'", 'DO_NOT_DECLARE: expected true or false, got "yes"'),
    ("QUEUE = 5", "QUEUE: expected a non-empty string, got 5"),
    ("HANDLER_TIMEOUT = {}", "HANDLER_TIMEOUT: expected a number > 0 (seconds), got a table"),
    ('EXCHANGES = "ex"', 'EXCHANGES: expected a list of exchanges, got "ex"'),
    ('UNROUTED = "drop"', 'UNROUTED: expected one of "ack", "dead-letter", got "drop"'),
])
def test_wrong_type_names_the_key_and_what_was_expected(project, line, message):
    settings(project, "return { %s }\n" % line)
    assert_config_error(check(project), "%s: %s" % (SETTINGS, message))


@pytest.mark.parametrize("exchanges, message", [
    ('{ "a", { "b", "fanfare" } }', 'EXCHANGES[2]: expected an exchange type "direct", '
     '"fanout", "topic" or "headers", got "fanfare"'),
    ("{ 42 }", 'EXCHANGES[1]: expected "name" or {"name", "type"}, got 42'),
    ('{ { type = "topic" } }', 'EXCHANGES[1]: expected "name" or {"name", "type"}, got a table'),
    ('{ "a", "a" }', 'EXCHANGES[2]: exchange "a" is listed twice (also EXCHANGES[1])'),
])
def test_malformed_exchanges_entry_names_its_index(project, exchanges, message):
    settings(project, "return { EXCHANGES = %s }\n" % exchanges)
    assert_config_error(check(project), "%s: %s" % (SETTINGS, message))


@pytest.mark.parametrize("binds, message", [
    ('{ "a", true }', 'BINDS[2]: expected "exchange" or {"exchange", "routing_key"}, got true'),
    ('{ { "a", 5 } }', "BINDS[1]: expected a routing key (a string of at most 255 bytes), "
     "got 5"),
    ('{ x = "a" }', "BINDS: expected a list of binds, got a table"),
])
def test_malformed_binds_entry_names_its_index(project, binds, message):
    settings(project, 'return { EXCHANGES = { "a" }, BINDS = %s }\n' % binds)
    assert_config_error(check(project), "%s: %s" % (SETTINGS, message))


def test_bind_to_an_undeclared_exchange_is_refused(project):
    settings(project, """\
        return {
          QUEUE = "q",
          EXCHANGES = { "a" },
          BINDS = { "a", { "nope", "k" } },
        }
        """)
    assert_config_error(check(project), '%s: BINDS[2]: expected an exchange listed in EXCHANGES '
                        '(or DO_NOT_DECLARE = true), got "nope"' % SETTINGS)


def test_bind_to_an_undeclared_exchange_is_allowed_with_do_not_declare(project):
    settings(project, """\
        return {
          QUEUE = "q",
          EXCHANGES = { "a" },
          BINDS = { "a", { "nope", "k" } },
          DO_NOT_DECLARE = true,
        }
        """)
    r = check(project)
    assert r.returncode == 0, r.stderr
    assert "declare:  no (DO_NOT_DECLARE: checked passively)\n" in r.stdout
    assert section(r.stdout, "bindings") == ["q <- a #", "q <- nope k"]


def test_unparsable_broker_url_is_refused_without_printing_the_password(project):
    settings(project, 'return { BROKER_CONNECTION_URL = "http://user:s3cretpw@host/" }\n')
    r = check(project)
    assert_config_error(r, '%s: BROKER_CONNECTION_URL: expected an amqp:// or amqps:// URL, '
                        'got "http://user:****@host/" (not a valid amqp:// or amqps:// URL)'
                        % SETTINGS)
    assert "s3cretpw" not in r.stderr


def test_unparsable_database_url_is_refused_without_printing_the_password(project):
    settings(project, 'return { DATABASE_URL = "postgresql://u:s3cretpw@[::1/db" }\n')
    r = check(project)
    assert_config_error(r, '%s: DATABASE_URL: expected a PostgreSQL connection string, got '
                        '"postgresql://u:****@[::1/db" (end of string reached when looking for '
                        'matching "]" in IPv6 host address in URI: "postgresql://u:****@[::1/db")'
                        % SETTINGS)
    assert "s3cretpw" not in r.stderr


def test_unparsable_key_value_database_url_is_refused_without_printing_the_password(project):
    settings(project, 'return { DATABASE_URL = "host=db password=s3cretpw nonsense=1" }\n')
    r = check(project)
    assert_config_error(r, '%s: DATABASE_URL: expected a PostgreSQL connection string, got '
                        '"host=db password=**** nonsense=1" (invalid connection option '
                        '"nonsense")' % SETTINGS)
    assert "s3cretpw" not in r.stderr


def test_runconsumer_without_queue_exits_2_before_connecting(project):
    # The broker URL points nowhere: reaching it would be a runtime failure (1), not 2.
    settings(project, 'return { BROKER_CONNECTION_URL = "amqp://u:pw@127.0.0.1:1/v" }\n')
    r = project.run("runconsumer")
    assert_config_error(r, "%s: QUEUE: required by runconsumer, not set" % SETTINGS)


def test_syntax_error_in_settings_names_file_and_line(project):
    settings(project, """\
        return {
          QUEUE = "q",
          PREFETCH_COUNT = = 10,
        }
        """)
    assert_config_error(check(project), "%s:3: unexpected symbol near '='" % SETTINGS)


def test_runtime_error_in_settings_names_file_and_line(project):
    settings(project, """\
        local base = "q"
        return {
          QUEUE = base .. undefined_global.suffix,
        }
        """)
    assert_config_error(check(project), "%s:3: attempt to index a nil value (global "
                        "'undefined_global')" % SETTINGS)


def test_error_raised_by_settings_code_names_file_and_line(project):
    settings(project, """\
        local url = os.getenv("NOT_SET_ANYWHERE_42")
        if not url then
          error("set NOT_SET_ANYWHERE_42")
        end
        return { DATABASE_URL = url }
        """)
    assert_config_error(check(project), "%s:3: set NOT_SET_ANYWHERE_42" % SETTINGS)


def test_settings_file_that_returns_no_table_is_refused(project):
    settings(project, 'QUEUE = "q"\n')
    assert_config_error(check(project), "%s: expected the file to return a table, got nil"
                        % SETTINGS)


def test_settings_errors_in_long_paths_keep_the_full_path(project):
    # Lua shortens chunk names longer than 60 bytes to "...tail"; the message must not.
    deep = project.dir / ("d" * 40) / ("e" * 40)
    deep.mkdir(parents=True)
    path = deep / "settings.lua"
    path.write_text("return {\n  QUEUE = = 1,\n}\n")
    r = run(["--settings", str(path), "check"], project.dir)
    assert_config_error(r, "%s:2: unexpected symbol near '='" % path)


def test_app_that_fails_to_load_names_the_app_file_line_and_traceback(project):
    app = write_app(project, "broken", """\
        local router = require("svccomm").message_router
        local function explode()
          error("boom")
        end
        explode()
        """)
    r = check(project)
    assert r.returncode == 2, r.stdout
    assert r.stdout == ""
    head, _, trace = r.stderr.partition("\nstack traceback:\n")
    assert head == "svccomm: app 'broken' failed to load: %s:3: boom" % app
    assert trace.splitlines() == [
        "\t[C]: in global 'error'",
        "\t%s:3: in local 'explode'" % app,
        "\t%s:5: in main chunk" % app,
    ]


def test_app_with_a_syntax_error_names_the_app_file_and_line(project):
    write_app(project, "good", one_consumer("ex"))
    app = write_app(project, "typo", """\
        local router = require("svccomm").message_router
        router.consumer("ex", "k2" function() end)
        """)
    r = check(project)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == ("svccomm: app 'typo' failed to load: %s:2: ')' expected near 'function'\n"
                        % app)


def test_app_error_with_a_non_string_value_still_names_app_and_line(project):
    app = write_app(project, "objerr", """\
        local router = require("svccomm").message_router
        router.consumer(42, "k", function() end)
        """)
    r = check(project)
    assert r.returncode == 2
    first = r.stderr.splitlines()[0]
    assert first == ("svccomm: app 'objerr' failed to load: %s:2: consumer: exchange must be a "
                     "non-empty string, got number" % app)


def test_installed_app_that_does_not_exist_is_a_startup_error(project):
    settings(project, 'return { INSTALLED_APPS = { "ghost" } }\n')
    assert_config_error(check(project), "INSTALLED_APPS: app 'ghost' not found: "
                        "apps/ghost/consumers.lua does not exist")


def test_installed_apps_chooses_and_orders_the_apps(project):
    write_app(project, "zeta", one_consumer("z"))
    write_app(project, "alpha", one_consumer("a"))
    write_app(project, "unused", "error('must not be loaded')\n")
    settings(project, 'return { INSTALLED_APPS = { "zeta", "alpha" } }\n')
    r = check(project)
    assert r.returncode == 0, r.stderr
    assert "apps:     zeta, alpha\n" in r.stdout


def test_without_installed_apps_every_app_is_loaded_sorted_by_name(project):
    write_app(project, "zeta", one_consumer("z"))
    write_app(project, "alpha", one_consumer("a"))
    (project.dir / "apps" / "notes").mkdir()  # no consumers.lua: not an app
    r = check(project)
    assert r.returncode == 0, r.stderr
    assert "apps:     alpha, zeta\n" in r.stdout


def test_duplicate_registration_names_both_places(project):
    one = write_app(project, "one", """\
        local router = require("svccomm").message_router
        router.consumer("ex", "a.b", function() end)
        """)
    two = write_app(project, "two", """\
        local router = require("svccomm").message_router

        router.consumer("ex", "a.b")(function() end)
        """)
    r = check(project)
    assert r.returncode == 2
    assert r.stdout == ""
    first = r.stderr.split("\n", 1)[0]
    assert first == ("svccomm: app 'two' failed to load: %s:3: message_router: the consumer for "
                     "exchange 'ex' routing key 'a.b' is registered twice: first at %s:2 "
                     "(app 'one'), again at %s:3 (app 'two')" % (two, one, two))
    assert "\nstack traceback:\n" in r.stderr
    assert "%s:3: in main chunk" % two in r.stderr


@pytest.mark.parametrize("register", [
    'router.default_consumer(function() end)',
    'router.consumer("ex")(function() end)',
])
def test_duplicate_default_or_exchange_wide_consumer_names_both_places(project, register):
    head = 'local router = require("svccomm").message_router\n'
    one = write_app(project, "one", head + register + "\n")
    two = write_app(project, "two", head + "\n" + register + "\n")
    r = check(project)
    assert r.returncode == 2
    assert re.search(r"is registered twice: first at %s:2 \(app 'one'\), again at %s:3 "
                     r"\(app 'two'\)" % (re.escape(str(one)), re.escape(str(two))),
                     r.stderr), r.stderr


def test_apps_can_require_their_own_modules(project):
    helpers = "apps/shop/helpers.lua"
    write_app(project, "shop", """\
        local helpers = require("shop.helpers")
        require("svccomm").message_router.consumer("ex", helpers.key, helpers.handle)
        """)
    (project.dir / helpers).write_text('return { key = "order.*", handle = function() end }\n')
    r = check(project)
    assert r.returncode == 0, r.stderr
    assert ("ex order.* shop apps/shop/consumers.lua:2 (function at %s:1)" % helpers
            in " ".join(r.stdout.split()))


def test_outbox_table_name_is_validated_at_startup(project):
    settings(project, "return { OUTBOX_TABLE = 'bad-name' }\n")
    assert_config_error(check(project), '%s: OUTBOX_TABLE: %s, got "bad-name"'
                        % (SETTINGS, REFERENCE_TYPE_ERROR))
