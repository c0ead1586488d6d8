"""The deployment recipes of deploy/ (issue 13, item 5): the systemd units pass `systemd-analyze
verify` and keep the sandboxing baseline, the Kubernetes example parses and probes what the
README says, the Dockerfile builds on Debian 12 slim and runs as a non-root user. The image is
not built here (no registry for base images). No servers needed."""
import re
import subprocess
from pathlib import Path

import pytest
import yaml

import svc

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = ("svccomm-consumer.service", "svccomm-publisher.service")


def unit_directives(path):
    """{section: {key: [values]}} of a unit file."""
    out, section = {}, None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"\[(\w+)\]", line)
        if m:
            section = out.setdefault(m.group(1), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key, []).append(value)
    return out


@pytest.fixture(scope="module")
def manpath(tmp_path_factory):
    """A man tree with the pages of this build (the units' Documentation= names them)."""
    gen = tmp_path_factory.mktemp("gen")
    r = subprocess.run([svc.svccomm_bin(), "__generate", "man", str(gen)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    root = tmp_path_factory.mktemp("man")
    (root / "man1").mkdir()
    for page in gen.rglob("*.1"):
        (root / "man1" / page.name).write_bytes(page.read_bytes())
    assert (root / "man1" / "svccomm.1").exists()
    return root


def test_systemd_units_pass_systemd_analyze_verify(tmp_path, manpath):
    """verify checks that ExecStart's binary exists: the copies run the binary of this build
    in place of /usr/bin/svccomm, everything else as shipped."""
    copies = []
    for name in UNITS:
        text = (DEPLOY / "systemd" / name).read_text()
        assert "ExecStart=/usr/bin/svccomm run" in text
        copy = tmp_path / name
        copy.write_text(text.replace("/usr/bin/svccomm", str(Path(svc.svccomm_bin()).resolve())))
        copies.append(str(copy))
    r = subprocess.run(["systemd-analyze", "verify", *copies], capture_output=True, text=True,
                       timeout=60, env={"PATH": "/usr/bin:/bin", "MANPATH": str(manpath)},
                       cwd=tmp_path)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    # and it does fail on a broken unit: the check is real
    bad = tmp_path / "svccomm-broken.service"
    bad.write_text(Path(copies[0]).read_text().replace("Restart=on-failure",
                                                       "Restart=on-failure\nProtectSystem=bogus"))
    r = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True,
                       timeout=60, env={"PATH": "/usr/bin:/bin", "MANPATH": str(manpath)},
                       cwd=tmp_path)
    assert "bogus" in r.stderr, r.stderr


def test_systemd_units_restart_sandbox_and_read_secrets_from_a_file():
    # the Debian package installs the binary as /usr/bin/svccomm (CMAKE_INSTALL_BINDIR under
    # /usr, as debian/rules builds it; scripts/build-deb.sh --test runs it from there)
    assert "/usr/bin/svccomm version" in (ROOT / "scripts" / "build-deb.sh").read_text()
    commands = {"svccomm-consumer.service": "runconsumer",
                "svccomm-publisher.service": "runpublisher"}
    for name in UNITS:
        s = unit_directives(DEPLOY / "systemd" / name)["Service"]
        assert s["ExecStart"] == ["/usr/bin/svccomm %s" % commands[name]], name
        assert s["Restart"] == ["on-failure"]
        assert s["RestartPreventExitStatus"] == ["2"]  # a configuration error
        for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                           ("ProtectHome", "yes"), ("PrivateTmp", "yes"), ("User", "svccomm")):
            assert s.get(key) == [value], (name, key)
        assert s["EnvironmentFile"] == ["/etc/svccomm/svccomm.env"]
        # no secret in the unit itself
        assert not any("://" in v for values in s.values() for v in values), name
    # the package's postinst creates the svccomm user the units run as
    assert "adduser --system" in (ROOT / "debian" / "postinst").read_text()
    env = (DEPLOY / "systemd" / "svccomm.env.example").read_text()
    assert re.search(r"^SVCCOMM_BROKER_URL=amqps?://", env, re.M)
    assert re.search(r"^SVCCOMM_DATABASE_URL=postgres", env, re.M)


def operating_readme():
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^## Operating svccomm\n(.*?)^## ", text, re.M | re.S)
    assert m, "README has no '## Operating svccomm' section"
    return m.group(1)


def test_kubernetes_example_parses_and_probes_what_the_readme_says():
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "svccomm.yaml").read_text()))
    kinds = [d["kind"] for d in docs]
    assert kinds.count("Deployment") == 2 and "Secret" in kinds
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert set(secret["stringData"]) == {"SVCCOMM_BROKER_URL", "SVCCOMM_DATABASE_URL"}

    ops = operating_readme()
    address = re.search(r'METRICS_ADDRESS[^"\n]*"0\.0\.0\.0:(\d+)"', ops)
    live = re.search(r"liveness probe on `(/\w+)`", ops)
    ready = re.search(r"readiness probe on\s+`(/\w+)`", ops)
    assert address and live and ready, "the README states the probe paths and the port"
    port = int(address.group(1))

    args = set()
    for d in (d for d in docs if d["kind"] == "Deployment"):
        pod = d["spec"]["template"]
        assert d["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        ann = pod["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == str(port)
        assert ann["prometheus.io/path"] == "/metrics"
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        (c,) = pod["spec"]["containers"]
        args.add(tuple(c["args"]))
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["SVCCOMM_METRICS_ADDRESS"] == "0.0.0.0:%d" % port
        assert [p["containerPort"] for p in c["ports"]] == [port]
        assert c["livenessProbe"]["httpGet"] == {"path": live.group(1), "port": port}
        assert c["readinessProbe"]["httpGet"] == {"path": ready.group(1), "port": port}
        assert c["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
        # SIGTERM lets the work in progress finish: longer than SHUTDOWN_TIMEOUT's default
        assert pod["spec"]["terminationGracePeriodSeconds"] > 30
    assert args == {("runconsumer",), ("runpublisher",)}
    assert (live.group(1), ready.group(1)) == ("/healthz", "/readyz")


def dockerfile_stages():
    """[(FROM line, [instructions])] of deploy/docker/Dockerfile, continuation lines joined."""
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    stages = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append((line, []))
        else:
            assert stages, "an instruction before FROM: " + line
            stages[-1][1].append(line)
    return stages


def test_dockerfile_builds_on_debian_12_slim_and_runs_as_non_root():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a build stage and a runtime stage"
    for from_line, _ in stages:
        image = from_line.split()[1]
        assert image in ("debian:12-slim", "debian:bookworm-slim"), from_line
    runtime = stages[-1][1]
    users = [i.split(None, 1)[1] for i in runtime if i.upper().startswith("USER ")]
    assert users, "the runtime stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users
    # the runtime stage installs the built package, not the toolchain or -dev packages
    installs = " ".join(i for i in runtime if "apt-get install" in i)
    assert "svccomm_" in installs and "--no-install-recommends" in installs
    assert not re.search(r"-dev\b|build-essential|cmake|gcc", installs), installs
    assert any(i.startswith("COPY --from=") for i in runtime)
    # the uid Kubernetes checks (runAsNonRoot needs a numeric one) is the image's
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "svccomm.yaml").read_text()))
    for d in (d for d in docs if d["kind"] == "Deployment"):
        assert str(d["spec"]["template"]["spec"]["securityContext"]["runAsUser"]) == user
    assert any("ENTRYPOINT" in i and "/usr/bin/svccomm" in i for i in runtime)
