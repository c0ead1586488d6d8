"""`svccomm outbox stats|list|unpark|cancel` (issue 13): the operator's commands on the outbox
table, against the real servers, beside a running relay."""
import json

import svc


def ob(project, *args):
    return project.run("outbox", *args)


def make_rows(p, ex1, ex2):
    """3 due rows of ex1, 1 scheduled of ex1, 1 due and 2 parked of ex2. Returns the ids."""
    ids = p.outbox_insert([
        {"exchange": ex1, "routing_key": "a", "body": '{"n":1}'},
        {"exchange": ex1, "routing_key": "a", "body": '{"n":2}'},
        {"exchange": ex1, "routing_key": "b", "body": '{"n":3}'},
        {"exchange": ex1, "routing_key": "later", "body": "{}",
         "send_after": "2100-01-01T00:00:00Z"},
        {"exchange": ex2, "routing_key": "c", "body": '{"n":5}'},
    ])
    parked = p.outbox_insert([
        {"exchange": ex2, "routing_key": "p", "body": '"bad\x01\x1b[31m"', "attempts": 1,
         "last_error": "headers: not a JSON object", "parked_at": "2026-01-01T00:00:00Z"},
        {"exchange": ex2, "routing_key": "p", "body": "{}", "attempts": 1,
         "last_error": "exchange name longer than 255", "parked_at": "2026-01-01T00:00:00Z"},
    ])
    return ids, parked


def test_stats_counts_due_scheduled_parked_and_the_aggregates(project, outbox):
    s = svc.suffix()
    ex1, ex2 = "stats1_" + s, "stats2_" + s
    make_rows(project, ex1, ex2)
    r = ob(project, "stats", "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert (st["table"], st["due"], st["scheduled"], st["parked"]) == (outbox, 4, 1, 2)
    assert st["oldest_due_seconds"] >= 0
    assert st["aggregates"] == [
        {"aggregate": ex1, "due": 3, "scheduled": 1, "parked": 0, "total": 4},
        {"aggregate": ex2, "due": 1, "scheduled": 0, "parked": 2, "total": 3},
    ]
    r = ob(project, "stats")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("outbox %s: 4 due (oldest due " % outbox)
    assert "1 scheduled, 2 parked\n" in r.stdout
    assert [line.split() for line in r.stdout.splitlines()[2:]] == [
        [ex1, "3", "1", "0", "4"], [ex2, "1", "0", "2", "3"]]


def test_list_filters_and_shows_the_parked_reason(project, outbox):
    s = svc.suffix()
    ex1, ex2 = "list1_" + s, "list2_" + s
    ids, parked = make_rows(project, ex1, ex2)
    r = ob(project, "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert [x["id"] for x in rows] == ids + parked
    assert [x["state"] for x in rows] == ["due"] * 3 + ["scheduled", "due", "parked", "parked"]
    assert rows[0]["body_excerpt"] == '{"n":1}' and rows[0]["body_bytes"] == 7
    assert rows[3]["send_after"] == "2100-01-01T00:00:00Z" and rows[3]["parked_at"] is None
    r = ob(project, "list", "--parked", "--json")
    rows = json.loads(r.stdout)["rows"]
    assert [x["id"] for x in rows] == parked
    assert rows[0]["last_error"] == "headers: not a JSON object"
    assert rows[0]["parked_at"] == "2026-01-01T00:00:00Z" and rows[0]["attempts"] == 1
    r = ob(project, "list", "--aggregate", ex1, "--limit", "2", "--json")
    assert [x["id"] for x in json.loads(r.stdout)["rows"]] == ids[:2]
    # text: one line per row, hostile bytes escaped
    r = ob(project, "list", "--parked")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("%d parked %s p " % (parked[0], ex2))
    assert "error=headers: not a JSON object" in lines[0]
    # control bytes of the body never reach the terminal raw
    assert lines[0].endswith('body="bad\\x01\\x1b[31m"')
    assert "\x01" not in r.stdout and "\x1b" not in r.stdout
    rows = json.loads(ob(project, "list", "--parked", "--json").stdout)["rows"]
    assert rows[0]["body_excerpt"] == '"bad\x01\x1b[31m"'


def test_unpark_gets_a_parked_row_published_by_the_running_relay(project, broker, outbox):
    s = svc.suffix()
    ex, q = "unpark_" + s, "unparkq_" + s
    broker.exchange(ex)
    broker.queue(q, [ex])
    # polling only every 10 minutes: the unparked row goes out because unpark wakes the relay
    p = project.setup_relay({"PUBLISHER_POLL_INTERVAL": 600})
    # the relay parks a row whose headers are not a JSON object
    good, bad = p.outbox_insert([
        {"exchange": ex, "routing_key": "a", "body": '"good"'},
        {"exchange": ex, "routing_key": "a", "body": '"was parked"', "headers": ["not", "obj"]},
    ])
    relay = p.start_relay()
    got = broker.collect(q, 1, timeout=15, settle=0.5)
    assert [body for _, _, body in got] == [b'"good"']
    svc.wait_until(lambda: p.outbox_count("parked_at IS NOT NULL") == 1, 15, what="parked")
    r = ob(p, "list", "--parked", "--json")
    (row,) = json.loads(r.stdout)["rows"]
    assert row["id"] == bad and "headers" in row["last_error"]
    # the operator fixes the row, then unparks it while the relay runs
    svc.sql("UPDATE %s SET headers = NULL WHERE id = %%s" % outbox, bad)
    r = ob(p, "unpark", str(bad))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "unparked %d\n" % bad
    got = broker.collect(q, 1, timeout=15, settle=0.5)
    assert [body for _, _, body in got] == [b'"was parked"']
    svc.wait_until(lambda: p.outbox_count() == 0, 15, what="the unparked row deleted")
    assert relay.running()
    r = ob(p, "stats", "--json")
    assert json.loads(r.stdout)["parked"] == 0
    assert p.stop(relay) == 0


def test_unpark_of_an_unknown_id_says_so_and_exits_1(project, outbox):
    s = svc.suffix()
    _, parked = make_rows(project, "u1_" + s, "u2_" + s)
    missing = parked[-1] + 1000
    r = ob(project, "unpark", str(parked[0]), str(missing))
    assert r.returncode == 1
    assert r.stdout == "unparked %d\n" % parked[0]  # the known one is done all the same
    assert r.stderr == "svccomm outbox unpark: row %d: no such row in %s\n" % (missing, outbox)
    # a row that is not parked is left alone, and said so
    due = project.outbox_rows("id")[0][0]
    r = ob(project, "unpark", "--json", str(due), str(missing))
    assert r.returncode == 1
    assert json.loads(r.stdout) == {"unparked": [], "not_found": [missing], "not_parked": [due]}
    assert "row %d: not parked, left as it is" % due in r.stderr
    assert project.outbox_count("parked_at IS NOT NULL") == 1


def test_unpark_all_makes_every_parked_row_due(project, outbox):
    s = svc.suffix()
    _, parked = make_rows(project, "ua1_" + s, "ua2_" + s)
    r = ob(project, "unpark", "--all", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["unparked"] == parked
    rows = svc.sql("SELECT attempts, parked_at, send_after <= now(), last_error FROM %s "
                   "WHERE id = ANY(%%s) ORDER BY id" % outbox, parked)
    assert [r[:3] for r in rows] == [(0, None, True), (0, None, True)]
    assert rows[0][3] == "headers: not a JSON object"  # the reason stays readable
    r = ob(project, "unpark", "--all")
    assert (r.returncode, r.stdout) == (0, "no parked rows\n")


def test_cancel_deletes_pending_events_with_all_the_tags(project, outbox):
    s = svc.suffix()
    agg = "cancel_" + s
    rows = [
        {"exchange": agg, "routing_key": "remind", "body": "{}", "tags": {"user": "1", "k": "x"},
         "send_after": "2100-01-01T00:00:00Z"},
        {"exchange": agg, "routing_key": "remind", "body": "{}", "tags": {"user": "1"},
         "send_after": "2100-01-01T00:00:00Z"},
        {"exchange": agg, "routing_key": "remind", "body": "{}", "tags": {"user": "2"},
         "send_after": "2100-01-01T00:00:00Z"},
        {"exchange": agg, "routing_key": "other", "body": "{}", "tags": {"user": "1"},
         "send_after": "2100-01-01T00:00:00Z"},
    ]
    ids = project.outbox_insert(rows)
    r = ob(project, "cancel", "--aggregate", agg, "--event-type", "remind", "--tags",
           "user=1,k=x", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"cancelled": 1}
    assert [x[0] for x in project.outbox_rows("id")] == ids[1:]
    r = ob(project, "cancel", "--aggregate", agg, "--event-type", "remind", "--tags",
           '{"user": "1"}')
    assert (r.returncode, r.stdout) == (0, "cancelled 1 event(s)\n")
    assert [x[0] for x in project.outbox_rows("id")] == ids[2:]
    # the same answer as the SQL function for what is left
    (n,), = svc.sql('SELECT "%s_cancel_events"(%%s, %%s, %%s::jsonb)' % outbox, agg, "remind",
                    '{"user": "2"}')
    assert n == 1
    r = ob(project, "cancel", "--aggregate", agg, "--event-type", "remind", "--tags", "{}")
    assert r.returncode == 2 and "non-empty" in r.stderr


def test_a_bad_outbox_table_or_database_is_reported(project, outbox):
    project.write_settings(project.settings, OUTBOX_TABLE="no_such_table_" + svc.suffix())
    r = ob(project, "stats")
    assert r.returncode == 1
    assert "does not exist" in r.stderr
    project.write_settings(project.settings, DATABASE_URL="postgresql://u:pw@127.0.0.1:1/db")
    r = ob(project, "list")
    assert r.returncode == 1
    assert ":pw@" not in r.stderr  # the password is masked
