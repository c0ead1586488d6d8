"""amqps:// with verified certificates (issue 11, finding 5).

The local broker listens on plain AMQP only; socat terminates TLS in front of it
(`socat OPENSSL-LISTEN:<port>,... TCP:127.0.0.1:<broker port>`) with certificates from a test CA
made by openssl in a temporary directory: a server certificate for DNS:localhost and
IP:127.0.0.1, one for DNS:wrong.example (a wrong host name), and a client certificate.
"""
import os
import re
import shutil
import socket
import subprocess
import urllib.parse

import pytest

import svc

pytestmark = pytest.mark.skipif(not shutil.which("socat") or not shutil.which("openssl"),
                                reason="needs socat and openssl (scripts/install-deps.sh)")

SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(cwd, name, subject, san=None):
    """<name>.key and <name>.pem signed by the test CA (ca.pem, ca.key) in cwd."""
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", subject, cwd=cwd)
    ext = []
    if san:
        (cwd / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        ext = ["-extfile", f"{name}.ext"]
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", *ext, cwd=cwd)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The test CA and its certificates: {name: path} for ca, server, wrong, client (.pem)
    and their keys (name_key)."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=svccomm test CA", cwd=d)
    issue(d, "server", "/CN=localhost", "DNS:localhost,IP:127.0.0.1")
    issue(d, "wrong", "/CN=wrong.example", "DNS:wrong.example")
    issue(d, "client", "/CN=svccomm test client")
    out = {}
    for name in ("ca", "server", "wrong", "client"):
        out[name] = str(d / f"{name}.pem")
        out[name + "_key"] = str(d / f"{name}.key")
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tls_proxy(pki, servers, tmp_path):
    """tls_proxy(cert="server", client_cert=False) starts socat terminating TLS in front of
    the broker and returns its port; client_cert=True makes it require a client certificate
    signed by the test CA."""
    procs = []
    broker_port = urllib.parse.urlsplit(os.environ["SVCCOMM_BROKER_URL"]).port or 5672

    def start(cert="server", client_cert=False):
        port = free_port()
        opts = (f"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={pki[cert]},"
                f"key={pki[cert + '_key']},cafile={pki['ca']},verify={1 if client_cert else 0}")
        log = open(tmp_path / f"socat-{port}.log", "wb")
        procs.append((subprocess.Popen(["socat", opts, f"TCP:127.0.0.1:{broker_port}"],
                                       stdout=log, stderr=subprocess.STDOUT), log))

        def listening():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        svc.wait_until(listening, 10, what="socat listening")
        return port

    yield start
    for proc, log in procs:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def amqps_url(port, host="localhost"):
    """The test broker's URL (user, password, vhost) as amqps://host:port."""
    u = urllib.parse.urlsplit(os.environ["SVCCOMM_BROKER_URL"])
    netloc = f"{u.username}:{u.password}@{host}:{port}"
    return urllib.parse.urlunsplit(("amqps", netloc, u.path, u.query, ""))


def assert_consumes(project, broker, proc):
    """One message published on the plain broker reaches proc's handler over TLS."""
    broker.publish(project.exchange(), "tls.ping", {"n": 1})
    proc.wait_for_log(r"tls\.ping", 20)


RECORDER_NO_DB = """
local svccomm = require "svccomm"
svccomm.message_router.consumer("$EXCHANGE", "#", function(rk, body)
  print("handled " .. rk .. " n=" .. tostring(body.n))
end)
"""


def tls_project(project, url, tls=None, **settings):
    ex = project.exchange()
    keys = {"EXCHANGES": [ex], "BINDS": [[ex, "#"]], **svc.CONSUMER_SETTINGS,
            "DATABASE_URL": None, "BROKER_CONNECTION_URL": url, "BROKER_TLS": tls}
    keys.update(settings)
    project.write_settings(keys)
    project.write_app("rec", RECORDER_NO_DB.replace("$EXCHANGE", ex))
    return project


def not_consuming(proc, pattern, timeout=15):
    """proc keeps running, logs pattern, and never starts consuming."""
    proc.wait_for_log(pattern, timeout)
    assert proc.running(), proc.log()
    assert "consuming '" not in proc.log()


def test_check_shows_the_tls_settings_but_no_key_material(project, pki):
    tls_project(project, amqps_url(5671), {"ca_file": pki["ca"], "cert_file": pki["client"],
                                     "key_file": pki["client_key"]})
    res = project.run("check")
    assert res.returncode == 0, res.stderr
    assert "tls:      CA file %s\n" % pki["ca"] in res.stdout
    assert "client certificate %s, key file %s\n" % (pki["client"], pki["client_key"]) in res.stdout
    assert "verify peer on, verify host name on; TLS 1.2 or later" in res.stdout
    key_lines = open(pki["client_key"]).read().splitlines()
    for out in (res.stdout, res.stderr):
        assert "PRIVATE KEY" not in out and key_lines[1] not in out

    # verification off: shown, and a warning; the system store when no ca_file
    tls_project(project, amqps_url(5671), {"verify_hostname": False})
    res = project.run("check")
    assert res.returncode == 0, res.stderr
    assert "tls:      CA file %s (system store)" % SYSTEM_CA in res.stdout
    assert "client certificate (none)" in res.stdout
    assert "verify peer on, verify host name OFF" in res.stdout
    assert "warning: BROKER_TLS: host name verification is off" in res.stdout
    assert "1 warning" in res.stdout

    # the env overrides the files
    res = project.run("check", env={"SVCCOMM_BROKER_CA_FILE": pki["ca"]})
    assert "tls:      CA file %s\n" % pki["ca"] in res.stdout, res.stdout + res.stderr


def test_consumer_over_amqps_with_ca_file_consumes(project, broker, pki, tls_proxy):
    port = tls_proxy()
    p = tls_project(project, amqps_url(port), {"ca_file": pki["ca"]})
    proc = p.start_consumer()
    assert_consumes(p, broker, proc)
    assert "handled tls.ping n=1" in proc.log()
    assert "verification is off" not in proc.log()
    assert p.stop() == 0


def test_ca_file_from_the_environment(project, broker, pki, tls_proxy):
    port = tls_proxy()
    p = tls_project(project, amqps_url(port))
    proc = p.start_consumer(env={"SVCCOMM_BROKER_CA_FILE": pki["ca"]})
    assert_consumes(p, broker, proc)
    assert p.stop() == 0


def test_connecting_by_ip_address_matches_the_ip_san(project, broker, pki, tls_proxy):
    # rabbitmq-c 0.11's own host check reads DNS names only; svccomm checks IP SANs itself
    port = tls_proxy()
    p = tls_project(project, amqps_url(port, "127.0.0.1"), {"ca_file": pki["ca"]})
    proc = p.start_consumer()
    assert_consumes(p, broker, proc)
    assert p.stop() == 0


def test_without_ca_file_the_system_store_does_not_trust_the_test_ca(project, pki, tls_proxy):
    port = tls_proxy()
    p = tls_project(project, amqps_url(port))
    proc = p.start_consumer(wait_consuming=False)
    not_consuming(proc, re.escape(
        "cannot connect to localhost:%d: TLS: the broker's certificate failed verification for "
        "'localhost': self-signed certificate in certificate chain (trusted CAs from %s)"
        % (port, SYSTEM_CA)))


def test_a_certificate_for_another_host_fails_verification(project, pki, tls_proxy):
    port = tls_proxy(cert="wrong")
    p = tls_project(project, amqps_url(port), {"ca_file": pki["ca"]})
    proc = p.start_consumer(wait_consuming=False)
    not_consuming(proc, re.escape("failed verification for 'localhost': hostname mismatch"))
    p.stop()
    p = tls_project(project, amqps_url(port, "127.0.0.1"), {"ca_file": pki["ca"]})
    proc = p.start_consumer(wait_consuming=False)
    not_consuming(proc, re.escape("failed verification for '127.0.0.1': IP address mismatch"))


def test_verify_hostname_false_connects_and_warns(project, broker, pki, tls_proxy):
    port = tls_proxy(cert="wrong")
    p = tls_project(project, amqps_url(port), {"ca_file": pki["ca"], "verify_hostname": False})
    proc = p.start_consumer()
    assert_consumes(p, broker, proc)
    assert re.search(r"warning \[amqp\] TLS to localhost: host name verification is off", proc.log())
    assert p.stop() == 0


def test_verify_peer_false_connects_and_warns(project, broker, pki, tls_proxy):
    port = tls_proxy()
    p = tls_project(project, amqps_url(port), {"verify_peer": False})
    proc = p.start_consumer()
    assert_consumes(p, broker, proc)
    assert re.search(r"warning \[amqp\] TLS to localhost: certificate verification is off",
                     proc.log())
    assert p.stop() == 0


def test_a_missing_ca_file_is_a_startup_error_naming_it(project, tmp_path):
    missing = str(tmp_path / "no-such-ca.pem")
    tls_project(project, amqps_url(5671), {"ca_file": missing})
    res = project.run("runconsumer", timeout=30)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr == ('svccomm: ./settings.lua: BROKER_TLS.ca_file: cannot read "%s" '
                          "(No such file or directory)\n" % missing)
    tls_project(project, amqps_url(5671))
    res = project.run("runpublisher", env={"SVCCOMM_BROKER_CA_FILE": missing}, timeout=30)
    assert res.returncode == 2, res.stdout + res.stderr
    assert ('BROKER_TLS.ca_file (from SVCCOMM_BROKER_CA_FILE): cannot read "%s"' % missing
            in res.stderr)


def test_mistakes_in_broker_tls_are_startup_errors(project, pki, tmp_path):
    tls_project(project, amqps_url(5671), {"ca_flie": pki["ca"]})
    res = project.run("check")
    assert res.returncode == 2
    assert "BROKER_TLS.ca_flie: unknown field (did you mean ca_file?)" in res.stderr
    unreadable = tmp_path / "unreadable.pem"
    unreadable.write_text("x")
    unreadable.chmod(0)
    if os.geteuid() != 0:  # root reads anything
        tls_project(project, amqps_url(5671), {"ca_file": str(unreadable)})
        res = project.run("check")
        assert res.returncode == 2
        assert 'BROKER_TLS.ca_file: cannot read "%s" (Permission denied)' % unreadable in res.stderr
    # BROKER_TLS with a plain amqp:// URL would send the credentials in clear: refused
    tls_project(project, os.environ["SVCCOMM_BROKER_URL"], {"ca_file": pki["ca"]})
    res = project.run("check")
    assert res.returncode == 2
    assert "BROKER_TLS: is set but BROKER_CONNECTION_URL is not an amqps:// URL" in res.stderr


def test_client_certificate_is_sent(project, broker, pki, tls_proxy):
    port = tls_proxy(client_cert=True)
    p = tls_project(project, amqps_url(port), {"ca_file": pki["ca"]})
    proc = p.start_consumer(wait_consuming=False)
    # TLS 1.3: the proxy's alert arrives after the handshake, at the first read (the login)
    not_consuming(proc, re.escape("RabbitMQ: login: a SSL error occurred (TLS: tlsv13 alert "
                                  "certificate required)"))
    p.stop()
    p = tls_project(project, amqps_url(port), {"ca_file": pki["ca"], "cert_file": pki["client"],
                                         "key_file": pki["client_key"]})
    proc = p.start_consumer()
    assert_consumes(p, broker, proc)
    assert p.stop() == 0


def test_relay_publishes_over_amqps(project, broker, pki, tls_proxy):
    port = tls_proxy(client_cert=True)
    ex, q = "tls_ex_" + svc.suffix(), "tls_q_" + svc.suffix()
    broker.exchange(ex)
    broker.queue(q, [ex])
    p = project.setup_relay({"BROKER_CONNECTION_URL": amqps_url(port),
                             "BROKER_TLS": {"ca_file": pki["ca"], "cert_file": pki["client"],
                                            "key_file": pki["client_key"]}})
    p.outbox_insert([{"exchange": ex, "routing_key": "tls.ev", "body": '{"n": 7}'}])
    p.start_relay()
    got = broker.collect(q, 1)
    assert [b for _, _, b in got] == [b'{"n": 7}'], p.log()
    svc.wait_until(lambda: p.outbox_count() == 0, 10, what="row deleted after the confirm")
    assert "cannot connect" not in p.log()
    assert p.stop() == 0
