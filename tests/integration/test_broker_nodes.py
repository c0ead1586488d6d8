"""BROKER_CONNECTION_URL as a list of broker nodes (issue 15, item 1): the first node that
answers is used, a lost connection moves to the next node, bad lists are configuration
errors naming the entry (exit 2, password masked), and the node in use is logged and shown
by `svccomm check --connect`."""
import json
import os
import re
from urllib.parse import urlparse

import pytest

import svc
from svc import Broker

HANDLER = """
local svccomm = require "svccomm"
svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body, msg)
  svccomm.db.query("INSERT INTO $TABLE (n) VALUES ($1)", body.n)
end)
"""


def real_url():
    return os.environ["SVCCOMM_BROKER_URL"]


def real_node():
    u = urlparse(real_url())
    return "%s:%d" % (u.hostname, u.port)


def dead_url():
    """The real URL (same account, password included) on a port where nothing listens."""
    u = urlparse(real_url())
    return real_url().replace("@%s:%d/" % (u.hostname, u.port), "@127.0.0.1:1/")


def password():
    return urlparse(real_url()).password


def test_consumer_skips_an_unreachable_first_node(project):
    p = project.setup_consumer(HANDLER, {"BROKER_CONNECTION_URL": [dead_url(), real_url()]})
    proc = p.start_consumer()
    log = proc.log()
    assert "using broker node %s (2 of 2, the ones before it did not answer)" % real_node() in log
    assert password() not in log
    b = Broker()
    try:
        b.publish(p.exchange(), "x", {"n": 7})
    finally:
        b.close()
    svc.wait_until(lambda: p.record_count() == 1, 20, what="the message handled")
    assert p.stop() == 0


def test_relay_skips_an_unreachable_first_node(project, broker):
    p = project.setup_relay({"BROKER_CONNECTION_URL": [dead_url(), real_url()]})
    ex, q = p.exchange(), p.queue()
    broker.exchange(ex)
    broker.queue(q, bind_to=[ex])
    p.outbox_insert_many(ex, 50)
    proc = p.start_relay()
    msgs = broker.collect(q, 50, timeout=30)
    assert sorted(json.loads(body)["n"] for _, _, body in msgs) == list(range(1, 51))
    svc.wait_until(lambda: p.outbox_count() == 0, 20, what="the rows deleted after confirms")
    assert "using broker node %s (2 of 2" % real_node() in proc.log()
    assert password() not in proc.log()
    assert p.stop() == 0


def test_env_comma_list_and_check_shows_the_node(project):
    project.write_settings(DATABASE_URL=None, QUEUE=None)
    env = {"SVCCOMM_BROKER_URL": "%s,%s" % (dead_url(), real_url())}
    r = project.run("check", "--connect", env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "broker: connected to node %s\n" % real_node() in r.stdout
    assert "(2 nodes, tried in this order)" in r.stdout
    assert "127.0.0.1:1/" in r.stdout  # both URLs are listed, masked
    assert password() not in out


def two_names_of_the_broker():
    """Two names of the one local broker stand for two nodes; ("host:port" of the second)."""
    u = urlparse(real_url())
    other = real_url().replace("@%s:" % u.hostname, "@127.0.0.1:")
    return [real_url(), other], "127.0.0.1:%d" % u.port


def close_connections(marker):
    """The broker closes every connection whose client properties contain marker."""
    out = svc.rabbitmqctl("list_connections", "pid", "client_properties")
    closed = 0
    for line in out.splitlines():
        if marker in line:
            svc.rabbitmqctl("close_connection", line.split()[0], "test: node lost")
            closed += 1
    assert closed, out


def test_a_lost_connection_moves_the_consumer_to_the_next_node(project):
    urls, second = two_names_of_the_broker()
    p = project.setup_consumer(HANDLER, {"BROKER_CONNECTION_URL": urls})
    proc = p.start_consumer()
    assert "using broker node %s (1 of 2)" % real_node() in proc.log()
    close_connections(p.queue())
    proc.wait_for_log(re.escape("using broker node %s (2 of 2)" % second), 30)
    svc.wait_until(lambda: proc.log().count("consuming '%s'" % p.queue()) >= 2, 30,
                   what="consuming again")
    b = Broker()
    try:
        b.publish(p.exchange(), "x", {"n": 1})
    finally:
        b.close()
    svc.wait_until(lambda: p.record_count() == 1, 20, what="the message handled")
    assert p.stop() == 0


def test_a_lost_connection_moves_the_relay_to_the_next_node(project, broker):
    urls, second = two_names_of_the_broker()
    p = project.setup_relay({"BROKER_CONNECTION_URL": urls})
    ex, q = p.exchange(), p.queue()
    broker.exchange(ex)
    broker.queue(q, bind_to=[ex])
    proc = p.start_relay()
    p.outbox_insert_many(ex, 10)
    assert len(broker.collect(q, 10, timeout=30)) == 10
    assert "using broker node %s (1 of 2)" % real_node() in proc.log()
    close_connections("pid %d" % proc.pid)
    proc.wait_for_log(re.escape("using broker node %s (2 of 2)" % second), 30)
    p.outbox_insert_many(ex, 10)
    msgs = broker.collect(q, 10, timeout=30)
    assert len(msgs) == 10  # published on the new connection
    svc.wait_until(lambda: p.outbox_count() == 0, 20, what="the rows deleted after confirms")
    assert p.stop() == 0


BAD = [
    ("{}", "BROKER_CONNECTION_URL: expected at least one amqp:// or amqps:// URL, got an "
           "empty list"),
    ('{ "amqp://u:s3cretpw@n1/", "amqps://u:s3cretpw@n2/" }',
     'BROKER_CONNECTION_URL[2]: expected an amqp:// URL like the first entry (amqp:// and '
     'amqps:// do not mix), got "amqps://u:****@n2/"'),
    ('{ "amqp://u:s3cretpw@n1/", "amqp://u:s3cretpw@n2:port/" }',
     'BROKER_CONNECTION_URL[2]: expected an amqp:// or amqps:// URL, got '
     '"amqp://u:****@n2:port/"'),
]


@pytest.mark.parametrize("value,message", BAD)
@pytest.mark.parametrize("command", ["check", "runconsumer", "runpublisher"])
def test_bad_lists_are_configuration_errors_naming_the_entry(project, command, value, message):
    project.write_settings_source('return { QUEUE = "q", BROKER_CONNECTION_URL = %s }\n' % value)
    r = project.run(command, timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert message in out
    assert "s3cretpw" not in out


def test_bad_env_list_names_the_variable_and_the_entry(project):
    project.write_settings()
    r = project.run("check", env={"SVCCOMM_BROKER_URL": "%s,amqp://u:s3cretpw@h:x/" % real_url()})
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "BROKER_CONNECTION_URL (from SVCCOMM_BROKER_URL)[2]: expected an amqp:// or " \
           "amqps:// URL, got \"amqp://u:****@h:x/\"" in out
    assert "s3cretpw" not in out and password() not in out


def test_no_node_answering_names_every_node(project):
    u = urlparse(real_url())
    dead2 = dead_url().replace("@127.0.0.1:1/", "@127.0.0.1:2/")
    project.write_settings(DATABASE_URL=None, QUEUE=None,
                           BROKER_CONNECTION_URL=[dead_url(), dead2])
    r = project.run("check", "--connect")
    out = r.stdout + r.stderr
    assert r.returncode == 3, out  # a server cannot be reached
    assert "broker: cannot connect: no broker node answered: cannot connect to 127.0.0.1:1: " in out
    assert "; cannot connect to 127.0.0.1:2: " in out
    assert password() not in out and u.password not in out


def test_metrics_name_the_node_in_use(project):
    """svccomm_amqp_connected{node} is 1 for the node the consumer connected to and 0 for the
    unreachable first one it skipped."""
    from test_metrics import free_port, scrape, value

    port = free_port()
    p = project.setup_consumer(HANDLER, {"BROKER_CONNECTION_URL": [dead_url(), real_url()],
                                         "METRICS_ADDRESS": "127.0.0.1:%d" % port})
    p.start_consumer()
    dead = "127.0.0.1:1"
    svc.wait_until(lambda: value(scrape(port), "svccomm_amqp_connected", node=real_node()) == 1,
                   20, what="connected to the second node")
    samples = scrape(port)
    assert value(samples, "svccomm_amqp_connected", node=dead) == 0
    assert value(samples, "svccomm_amqp_connected") == 1  # one node in use
    assert p.stop() == 0
