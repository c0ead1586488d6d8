"""`svccomm publish` against the real PostgreSQL: the option forms of the one option parser
(`--at TIME` and `--at=TIME`, options before, between and after the arguments, global options
after the command) and payloads that look like options. test_cli.py covers the same grammar
without servers; here the rows prove what was written."""
import datetime
import json

import pytest

import svc

LATER = "2030-01-02T03:04:05Z"
LATER_TS = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)


def row(project, table, event_id):
    """(exchange, routing_key, payload, send_after, tags) of the row event_id."""
    (exchange, rk, body, send_after, tags), = svc.pg_query(
        project.pg(), f'SELECT exchange, routing_key, body, send_after, tags FROM "{table}" '
                      'WHERE id = %s', (int(event_id),))
    return exchange, rk, json.loads(body)["payload"], send_after, tags


@pytest.mark.parametrize("args", [
    ["publish", "agg", "ev", "{}", "--at", LATER, "--tags", '{"k": "v"}'],
    ["publish", "agg", "ev", "{}", "--at=" + LATER, "--tags={\"k\": \"v\"}"],
    ["publish", "--at", LATER, "--tags", '{"k": "v"}', "agg", "ev", "{}"],
    ["publish", "agg", "--tags={\"k\": \"v\"}", "ev", "--at=" + LATER, "{}"],
])
def test_publish_at_and_tags_in_every_form_write_a_scheduled_row(project, outbox, args):
    r = project.run(*args)
    assert r.returncode == 0, r.stderr
    exchange, rk, payload, send_after, tags = row(project, outbox, r.stdout.strip())
    assert (exchange, rk, payload) == ("agg", "ev", {})
    assert send_after == LATER_TS
    assert tags == {"k": "v"}


@pytest.mark.parametrize("args, payload", [
    (["publish", "agg", "ev", "-5"], -5),
    (["publish", "agg", "ev", "-0.5e1"], -5),
    (["publish", "agg", "ev", '{"a": 1}'], {"a": 1}),
    (["publish", "agg", "ev", "--", "-5"], -5),
    (["publish", "--", "agg", "ev", '"--at"'], "--at"),
])
def test_publish_payload_that_looks_like_an_option_is_the_payload(project, outbox, args,
                                                                   payload):
    r = project.run(*args)
    assert r.returncode == 0, r.stderr
    exchange, rk, got, send_after, tags = row(project, outbox, r.stdout.strip())
    assert (exchange, rk, got) == ("agg", "ev", payload)


def test_publish_settings_option_after_the_command(project, outbox, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in (["--settings", str(project.settings_path)],
                 ["--settings=%s" % project.settings_path]):
        r = svc.run([svc.svccomm_bin(), "publish", "agg", "ev", "[1]"] + args, cwd=elsewhere,
                    env=project.env(), timeout=30)
        assert r.returncode == 0, r.stderr
        assert row(project, outbox, r.stdout.strip())[:3] == ("agg", "ev", [1])


@pytest.mark.parametrize("at, seconds", [("+10s", 10), ("+5m", 300), ("+1h", 3600)])
def test_publish_at_a_relative_time_is_due_that_long_from_now(project, outbox, at, seconds):
    before = datetime.datetime.now(datetime.timezone.utc)
    r = project.run("publish", "agg", "ev", "{}", "--at", at)
    after = datetime.datetime.now(datetime.timezone.utc)
    assert r.returncode == 0, r.stderr
    send_after = row(project, outbox, r.stdout.strip())[3]
    delta = datetime.timedelta(seconds=seconds)
    assert before + delta - datetime.timedelta(seconds=1) <= send_after <= after + delta


@pytest.mark.parametrize("at", ["+10", "10s", "+10x", "+-5m", "soon", "2030-13-01T00:00:00Z"])
def test_publish_at_garbage_is_a_usage_error(project, outbox, at):
    r = project.run("publish", "agg", "ev", "{}", "--at", at)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "--at" in r.stderr and "+10s" in r.stderr, r.stderr
    assert svc.pg_query(project.pg(), f'SELECT count(*) FROM "{outbox}"') == [(0,)]
