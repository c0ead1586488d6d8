"""Exit codes of usage mistakes and of health checks (issue 22): what the command line got
wrong exits 2 before any server is contacted; checkpublisher tells "unhealthy" (1) from "the
database cannot be reached" (3) and counts parked rows against health."""
import pytest


@pytest.mark.parametrize("args,says", [
    (["publish", "agg", "ev", "{}", "--at", "tomorrow"], "--at \"tomorrow\""),
    (["publish", "", "ev", "{}"], "aggregate must be 1 to 255 bytes"),
    (["publish", "a" * 300, "ev", "{}"], "aggregate must be 1 to 255 bytes"),
    (["publish", "agg", "", "{}"], "event_type must be 1 to 255 bytes"),
])
def test_publish_usage_mistakes_exit_2(project, args, says):
    # the database is unreachable: a usage error must be found before connecting
    project.write_settings(DATABASE_URL="postgresql://svccomm@127.0.0.1:1/svccomm")
    r = project.run(*args)
    assert r.returncode == 2, r.stderr
    assert says in r.stderr


def test_checkpublisher_unreachable_database_exits_3_and_parked_rows_exit_1(project):
    p = project.setup_relay()
    r = p.run("checkpublisher", env={"SVCCOMM_DATABASE_URL": "postgresql://svccomm@127.0.0.1:1/x"})
    assert r.returncode == 3, r.stdout + r.stderr
    assert "cannot check" in r.stderr and "healthy" not in r.stdout
    p.outbox_insert([{"exchange": "x", "routing_key": "k", "body": "1", "parked_at": "now()"}])
    r = p.run("checkpublisher")
    assert r.returncode == 1 and "1 parked (allowed 0)" in r.stdout, r.stdout
    r = p.run("checkpublisher", "--max-parked", "1")
    assert r.returncode == 0 and "publisher healthy" in r.stdout
