"""Where settings came from (issue 21, item 3): `svccomm check` shows the source of every key
an environment variable can override, and connection errors name the database / vhost (never
the password)."""
import os
import re

import svc


def source_of(out, key):
    m = re.search(r"^  %s +(.*)$" % key, out, re.M)
    return m and m.group(1)


def test_check_shows_file_default_and_env_sources(project):
    project.write_settings()
    r = project.run("check", env={"SVCCOMM_DATABASE_URL": "postgresql://envuser:envpw@127.0.0.1/envdb"})
    assert r.returncode == 0, r.stderr
    assert "sources (keys an environment variable can override):" in r.stdout, r.stdout
    assert source_of(r.stdout, "DATABASE_URL") == \
        "env SVCCOMM_DATABASE_URL (overrides the settings file)", r.stdout
    assert source_of(r.stdout, "BROKER_CONNECTION_URL") == "settings file"
    assert source_of(r.stdout, "LOG_LEVEL") == "default"
    assert "envpw" not in r.stdout + r.stderr
    r = project.run("check", env={"SVCCOMM_LOG_LEVEL": "debug"})
    assert source_of(r.stdout, "LOG_LEVEL") == "env SVCCOMM_LOG_LEVEL", r.stdout
    assert source_of(r.stdout, "DATABASE_URL") == "settings file"


def test_connection_errors_name_the_database_and_vhost_never_the_password(project):
    broker = re.sub(r"/[^/]*$", "/nosuchvhost_" + project.prefix, os.environ["SVCCOMM_BROKER_URL"])
    project.write_settings(DATABASE_URL="postgresql://someone:s3cr3tpw@127.0.0.1:1/shopdb",
                           BROKER_CONNECTION_URL=broker)
    r = project.run("publish", "agg", "ev", "{}")
    assert r.returncode == 1
    assert 'database "shopdb" on 127.0.0.1:1 as someone' in r.stderr, r.stderr
    assert "s3cr3tpw" not in r.stderr
    proc = project.start("runpublisher")
    proc.wait_for_log(re.escape('vhost "nosuchvhost_%s"' % project.prefix), 20)
    proc.wait_for_log(re.escape('database "shopdb" on 127.0.0.1:1'), 20)
    assert "s3cr3tpw" not in proc.log()
    password = re.match(r"amqp://[^:]*:([^@]*)@", broker).group(1)
    assert password not in proc.log()


def test_publish_sql_error_names_the_database_and_where_its_url_came_from(project):
    project.write_settings(DATABASE_URL="postgresql://x:y@127.0.0.1:1/notused",
                           OUTBOX_TABLE=project.table("missing_outbox"))
    r = project.run("publish", "agg", "ev", "{}",
                    env={"SVCCOMM_DATABASE_URL": os.environ["SVCCOMM_DATABASE_URL"]})
    assert r.returncode == 1
    assert "does not exist" in r.stderr, r.stderr
    assert "DATABASE_URL from env SVCCOMM_DATABASE_URL (overrides the settings file)" in r.stderr


def test_a_missing_outbox_table_names_the_database_and_where_its_url_came_from(project):
    """`relation "..." does not exist` from runpublisher named neither the database nor the
    source of DATABASE_URL (an exported SVCCOMM_DATABASE_URL points every service at one)."""
    project.write_settings(DATABASE_URL=None)  # as with `eval "$(scripts/servers.sh env)"`
    proc = project.start("runpublisher", env={"SVCCOMM_DATABASE_URL": os.environ["SVCCOMM_DATABASE_URL"]})
    proc.wait_for_log(r'claiming rows: relation .* does not exist \(database "[^"]+" on '
                      r'[^ ]+ as [^;]+; DATABASE_URL from env SVCCOMM_DATABASE_URL\): run '
                      r'`svccomm migrate`', 20)
    assert proc.stop() == 0
