"""Fixtures for the svccomm integration tests; the helpers they use are in svc.py.

    servers       (session) the local RabbitMQ and PostgreSQL are up (scripts/servers.sh start
                  when they do not answer); their variables are in os.environ.
    project       (per test) a temporary svc.Project: a directory with a UNIQUE prefix for every
                  broker and database name, helpers to write settings.lua and apps, to run the
                  binary and to talk to the servers; everything it created is removed afterwards.
    make_project  (per test) a factory of more such projects, for tests that need several.
    broker        (per test) a svc.Broker: the test's own AMQP client.

A test typically reads:

    def test_something(project):
        project.write_settings(EXCHANGES=[project.exchange("orders")])
        project.write_app("orders", 'local r = require("svccomm").message_router ...')
        res = project.run("check")
        assert res.returncode == 0, res.stderr
"""

import os
import re
import uuid

import pytest

import svc
from svc import Project


def pytest_configure(config):
    """Fill in the servers' variables before test modules are imported (some read them at
    import time); `scripts/servers.sh env` only prints them, the `servers` fixture starts."""
    for key, value in svc.servers_env().items():
        os.environ.setdefault(key, value)


@pytest.fixture(scope="session")
def servers():
    """The local servers are up; returns their variables (also in os.environ)."""
    env = svc.ensure_servers()
    yield env
    svc.sweep_session_leftovers()


@pytest.fixture
def make_project(servers, tmp_path, request):
    """make_project() returns a new temporary project with unique names (the first in
    tmp_path, more in subdirectories); all are cleaned up after the test."""
    test = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:28]
    made = []

    def make():
        path = tmp_path if not made else tmp_path / f"project{len(made)}"
        path.mkdir(exist_ok=True)
        made.append(Project(path, f"{svc.SESSION_TAG}_{test}_{uuid.uuid4().hex[:4]}"))
        return made[-1]

    yield make
    for proj in made:
        proj.cleanup()


@pytest.fixture
def project(make_project):
    """A temporary project with unique names, cleaned up after the test."""
    return make_project()


@pytest.fixture
def broker(servers):
    """The test's own AMQP client; what it declared is deleted after the test."""
    b = svc.Broker()
    yield b
    b.close()


@pytest.fixture
def outbox(project):
    """The project's outbox table, created by `svccomm migrate`."""
    project.write_settings(INBOX_TABLE=project.table("inbox"))
    res = project.run("migrate")
    assert res.returncode == 0, res.stderr
    name = project.table("outbox")
    yield name
    svc.pg_query(project.pg(), "DELETE FROM svccomm_migrations WHERE table_name = ANY(%s)",
                 ([name, project.table("inbox")],))
