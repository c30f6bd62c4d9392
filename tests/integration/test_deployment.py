"""Inventory and deployment through a real JOC (on SQLite and on PostgreSQL) and real controllers:
recursive deployment to two controllers, redeployment after a controller lost its journal,
releases, deployment to a stopped controller that comes later, pending deployments surviving a JOC
restart, and security level high (export, sign with openssl, import) with rejections recorded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from gen.ostinato.joc.v1 import joc_pb2, joc_pb2_grpc
from ostinato import signing
from ostinato.launch import Launched, free_port, launch
from tests.integration.certificates import Certificates
from tests.integration.pki import Pki, make_pki, sign_file
from tests.integration.postgres import pg_server, pg_url  # noqa: F401  (fixtures)
from tests.integration.support import wait_until

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "ostinato.cli"]


def workflow(script: str = "echo hi", resources: list[str] | None = None) -> str:
    value: dict = {
        "instructions": [{"execute": {"jobName": "j"}}],
        "jobs": {"j": {"agent": "agent-1", "executable": {"shellScript": {"script": script}}}},
    }
    if resources:
        value["jobResourcePaths"] = resources
    return json.dumps(value)


def cli(joc: Launched, *args: str) -> subprocess.CompletedProcess[str]:
    command = (
        [*args[:2], "--joc", joc.address, *args[2:]]
        if args[0] in ("inventory", "deploy")
        else [
            args[0],
            "--joc",
            joc.address,
            *args[1:],
        ]
    )
    return subprocess.run([*CLI, *command], capture_output=True, text=True, timeout=60)


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


class Processes:
    """Services started by a test, stopped together at its end."""

    def __init__(self, base: Path, certificates: Certificates) -> None:
        self.base = base
        self.certificates = certificates
        self.started: list[Launched] = []

    def controller(self, name: str, trust: list[Path], port: int = 0) -> Launched:
        data = self.base / name
        args = ["--listen", f"127.0.0.1:{port}", "--data-dir", str(data), "--id", name]
        args += ["--agent", "agent-1=127.0.0.1:1", *[a for t in trust for a in ("--trust", str(t))]]
        args += self.certificates.args(name, peers=["joc"])
        return self._add(launch("controller", "controller_svc", args, data))

    def joc(self, controllers: dict[str, str], db_url: str, *extra: str) -> Launched:
        data = self.base / "joc"
        args = ["--listen", "127.0.0.1:0", "--data-dir", str(data), "--db-url", db_url, *extra]
        args += [a for c, address in controllers.items() for a in ("--controller", f"{c}={address}")]
        args += self.certificates.args("joc")
        return self._add(launch("joc", "joc_svc", args, data))

    def _add(self, launched: Launched) -> Launched:
        self.started.append(launched)
        return launched

    def stop(self, *which: Launched) -> None:
        for launched in which:
            launched.process.terminate()
        for launched in which:
            launched.stop()

    def stop_all(self) -> None:
        self.stop(*self.started)

    def history(self, joc: Launched, path: str) -> list[joc_pb2.Deployment]:
        with self.certificates.sync_channel(joc.address) as channel:
            stub = joc_pb2_grpc.DeploymentServiceStub(channel)
            return list(
                stub.ListDeployments(joc_pb2.ListDeploymentsRequest(path=path), timeout=10).deployments
            )

    def added_version(self, joc: Launched, workflow_path: str, controller_id: str) -> str:
        """The version a controller binds a new order to: proof of what it holds. Waits while JOC
        cannot reach the controller yet (it reconnects within a second after a restart)."""
        deadline = time.monotonic() + 10
        with self.certificates.sync_channel(joc.address) as channel:
            orders = joc_pb2_grpc.OrderServiceStub(channel)
            request = joc_pb2.AddOrderRequest(workflow_path=workflow_path, controller_id=controller_id)
            while True:
                try:
                    return str(orders.AddOrder(request, timeout=10).workflow_version_id)
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/joc.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def processes(tmp_path: Path, certificates: Certificates) -> Iterator[Processes]:
    p = Processes(tmp_path / "services", certificates)
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture
def root_key(tmp_path: Path) -> tuple[Path, Path]:
    key_pem, cert_pem = signing.generate_root("test JOC root")
    (tmp_path / "root.key").write_text(key_pem)
    (tmp_path / "root.pem").write_text(cert_pem)
    return tmp_path / "root.key", tmp_path / "root.pem"


def test_inventory_deploy_to_two_controllers_redeploy_release(
    db_url: str, processes: Processes, root_key: tuple[Path, Path], tmp_path: Path
) -> None:
    key, cert = root_key
    dev = processes.controller("dev", [cert])
    prod_port = free_port()
    prod = processes.controller("prod", [cert], prod_port)
    joc = processes.joc(
        {"dev": dev.address, "prod": prod.address},
        db_url,
        "--signing-key",
        str(key),
        "--signing-cert",
        str(cert),
    )
    ex = write(
        tmp_path / "ex",
        {
            "app/hello.workflow.json": workflow(resources=["/app/env"]),
            "app/env.jobresource.json": json.dumps({"variables": {"GREETING": "'hi'"}}),
            "app/sub/second.workflow.json": workflow("echo second"),
            "plan/days.calendar.json": json.dumps({"type": "WORKING_DAYS"}),
            "plan/daily.schedule.json": json.dumps(
                {"workflowPath": "/app/hello", "calendars": [{"calendarPath": "/plan/days"}]}
            ),
        },
    )
    put = cli(joc, "inventory", "put", str(ex))
    assert put.returncode == 0, put.stderr
    assert "put workflow /app/hello" in put.stdout and "put schedule /plan/daily" in put.stdout

    # Folders, moves (references follow), validation errors naming object, path and field.
    listed = cli(joc, "inventory", "ls", "/app")
    assert [line.split()[:2] for line in listed.stdout.splitlines()[1:]] == [
        ["job-resource", "/app/env"],
        ["workflow", "/app/hello"],
    ]
    assert len(cli(joc, "inventory", "ls", "/", "-r").stdout.splitlines()) == 6
    moved = cli(joc, "inventory", "mv", "/app/env", "/app/environment")
    assert moved.returncode == 0 and "moved job-resource to /app/environment" in moved.stdout, moved.stderr
    got = json.loads(cli(joc, "inventory", "get", "/app/hello").stdout)
    assert got["jobResourcePaths"] == ["/app/environment"] and got["path"] == "/app/hello"
    write(tmp_path / "bad", {"app/broken.workflow.json": workflow(resources=["/app/missing"])})
    assert cli(joc, "inventory", "put", str(tmp_path / "bad")).returncode == 0
    refused = cli(joc, "deploy", "-i", "/app")
    assert refused.returncode == 1
    assert (
        "workflow /app/broken: jobResourcePaths[0]: no job resource /app/missing in the inventory"
        in refused.stderr
    )
    invalid = cli(joc, "inventory", "validate")
    assert invalid.returncode == 1 and "jobResourcePaths[0]" in invalid.stdout
    assert cli(joc, "inventory", "rm", "/app/broken").returncode == 0
    assert cli(joc, "inventory", "validate").stdout.strip() == "valid"

    # A folder, recursively, to both controllers; each object signed by JOC's root key.
    deployed = cli(joc, "deploy", "-i", "/app", "--reason", "release 1")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    lines = deployed.stdout.splitlines()
    assert len(lines) == 6 and all(line.startswith("deployed /app/") for line in lines), lines
    version = lines[0].split()[3]
    assert {line.split()[-1] for line in lines} == {"dev", "prod"}
    assert (
        processes.added_version(joc, "/app/hello", "dev")
        == version
        == processes.added_version(joc, "/app/sub/second", "prod")
    )
    rows = processes.history(joc, "/app/hello")
    assert {(r.controller_id, r.status, r.signer) for r in rows} == {
        ("dev", joc_pb2.DEPLOYMENT_STATUS_DEPLOYED, "CN=test JOC root"),
        ("prod", joc_pb2.DEPLOYMENT_STATUS_DEPLOYED, "CN=test JOC root"),
    }

    # prod loses its journal; redeploying the folder gives it the same versions again.
    processes.stop(prod)
    shutil.rmtree(processes.base / "prod")
    prod = processes.controller("prod", [cert], prod_port)
    with pytest.raises(grpc.RpcError) as info:
        processes.added_version(joc, "/app/hello", "prod")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    again = cli(joc, "deploy", "redeploy", "/app", "--controller", "prod")
    assert again.returncode == 0, again.stdout + again.stderr
    assert sorted(line.split()[1] for line in again.stdout.splitlines()) == [
        "/app/environment",
        "/app/hello",
        "/app/sub/second",
    ]
    assert all(f"version {version} to prod" in line for line in again.stdout.splitlines())
    assert processes.added_version(joc, "/app/hello", "prod") == version

    # Calendars and schedules are released, not deployed; their references are checked too.
    released = cli(joc, "release", "-i", "/plan")
    assert released.returncode == 0, released.stderr
    assert released.stdout.splitlines() == ["released schedule /plan/daily", "released calendar /plan/days"]
    assert cli(joc, "inventory", "ls", "/plan").stdout.splitlines()[1].split()[3] != "-"
    write(tmp_path / "plan2", {"other.schedule.json": json.dumps({"workflowPath": "/app/gone"})})
    refused = cli(joc, "release", str(tmp_path / "plan2"))
    assert refused.returncode == 1
    assert "schedule /other: workflowPath: no workflow /app/gone in the inventory" in refused.stderr

    audit = cli(joc, "audit", "--limit", "100").stdout
    for action, obj in [
        ("put", "workflow /app/hello"),
        ("move", "/app/env to /app/environment"),
        ("remove", "workflow /app/broken"),
        ("deploy", f"{version} to dev, prod"),
        ("redeploy", "/app to prod"),
        ("release", "schedule /plan/daily calendar /plan/days"),
        ("add order", "on prod"),
    ]:
        assert any(f" {action} " in line and obj in line for line in audit.splitlines()), (action, audit)
    assert any("release 1" in line for line in audit.splitlines())


def test_deployment_waits_for_a_stopped_controller_and_survives_joc_restart(
    db_url: str, processes: Processes, root_key: tuple[Path, Path], tmp_path: Path
) -> None:
    key, cert = root_key
    port = free_port()
    signing_args = ("--signing-key", str(key), "--signing-cert", str(cert))
    joc = processes.joc({"main": f"127.0.0.1:{port}"}, db_url, *signing_args)
    write(tmp_path / "one", {"w1.workflow.json": workflow()})
    write(tmp_path / "two", {"w2.workflow.json": workflow()})

    first = cli(joc, "deploy", str(tmp_path / "one"))
    assert first.returncode == 1 and "NOT deployed /w1" in first.stdout and "(pending" in first.stdout
    [row] = processes.history(joc, "/w1")
    assert (row.status, row.pending) == (joc_pb2.DEPLOYMENT_STATUS_NOT_DEPLOYED, True)
    assert "unreachable" in row.message

    controller = processes.controller("main", [cert], port)
    took = wait_until(lambda: processes.history(joc, "/w1")[0].status == joc_pb2.DEPLOYMENT_STATUS_DEPLOYED)
    print(f"deployed {took:.2f} s after the controller came up")
    assert processes.added_version(joc, "/w1", "main") == row.version_id

    # Pending while the controller is away, and JOC restarts meanwhile: delivered all the same.
    processes.stop(controller)
    second = cli(joc, "deploy", str(tmp_path / "two"), "--no-wait")
    assert second.returncode == 0 and "NOT deployed /w2" in second.stdout, second.stdout
    wait_until(lambda: processes.history(joc, "/w2")[0].attempts > 0, what="a delivery attempt")
    processes.stop(joc)
    controller = processes.controller("main", [cert], port)
    joc = processes.joc({"main": f"127.0.0.1:{port}"}, db_url, *signing_args)
    wait_until(lambda: processes.history(joc, "/w2")[0].status == joc_pb2.DEPLOYMENT_STATUS_DEPLOYED)
    [w2] = processes.history(joc, "/w2")
    assert not w2.pending and w2.confirmed_at.seconds > 0
    assert processes.added_version(joc, "/w2", "main") == w2.version_id


# ---- security level high


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def sign(folder: Path, key: Path, certificate: str, only: str = "") -> None:
    """The operator: signs each exported JSON file with openssl and adds signer.pem."""
    for file in sorted(folder.rglob("*.json")):
        if file.name != "manifest.json" and only in file.name:
            sign_file(key, file, file.with_suffix(".sig"))
    (folder / "signer.pem").write_text(certificate)


def pack(folder: Path, archive: Path, only: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as z:
        for file in sorted(folder.rglob("*")):
            if file.is_file() and (only in file.name or file.suffix == ".pem"):
                z.write(file, file.relative_to(folder))
    return archive


def test_security_level_high_export_sign_import(processes: Processes, pki: Pki, tmp_path: Path) -> None:
    controller = processes.controller("main", [pki.cert("root")])
    joc = processes.joc(
        {"main": controller.address}, f"sqlite:///{tmp_path}/joc.db", "--security-level", "high"
    )
    write(
        tmp_path / "ex",
        {
            "hi/hello.workflow.json": workflow(resources=["/hi/env"]),
            "hi/env.jobresource.json": json.dumps({"env": {"A": "'1'"}}),
        },
    )
    refused = cli(joc, "deploy", str(tmp_path / "ex"))
    assert refused.returncode == 1
    assert all(
        "security level high: JOC holds no private key" in line for line in refused.stdout.splitlines()
    )

    exported = cli(joc, "deploy", "export", "--for-signing", "/hi", "-o", str(tmp_path / "export.zip"))
    assert exported.returncode == 0, exported.stderr
    with zipfile.ZipFile(tmp_path / "export.zip") as z:
        z.extractall(tmp_path / "signing")
    text = (tmp_path / "signing/hi/hello.workflow.json").read_text()
    version = json.loads(text)["versionId"]
    assert f"exported /hi/hello version {version}" in exported.stdout

    sign(tmp_path / "signing", pki.key("leaf"), pki.chain_pem)
    good = pack(tmp_path / "signing", tmp_path / "signed.zip")
    imported = cli(joc, "deploy", "import", str(good), "--reason", "signed by ops")
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert sorted(imported.stdout.splitlines()) == [
        f"deployed /hi/env version {version} to main",
        f"deployed /hi/hello version {version} to main",
    ]
    assert processes.added_version(joc, "/hi/hello", "main") == version
    assert processes.history(joc, "/hi/hello")[0].signer == "CN=leaf"

    def rejected(name: str, change: Callable[[Path], None], key: Path, certificate: str, why: str) -> None:
        # Each signing round starts with an export: a new version (JOC refuses other content under
        # a version it has).
        folder = tmp_path / name
        assert (
            cli(joc, "deploy", "export", "--for-signing", "/hi/hello", "-o", f"{folder}.zip").returncode == 0
        )
        with zipfile.ZipFile(f"{folder}.zip") as z:
            z.extractall(folder)
        sign(folder, key, certificate, only="hello")
        change(folder)
        result = cli(joc, "deploy", "import", str(pack(folder, tmp_path / f"{name}.zip", only="hello")))
        assert result.returncode == 1, result.stdout
        [line] = result.stderr.splitlines()
        assert "/hi/hello" in line and why in line, line
        latest = processes.history(joc, "/hi/hello")[0]
        assert latest.status == joc_pb2.DEPLOYMENT_STATUS_NOT_DEPLOYED and not latest.pending
        assert why in latest.message

    def tamper(folder: Path) -> None:
        file = folder / "hi/hello.workflow.json"
        file.write_text(file.read_text().replace("echo hi", "echo evil"))

    def unchanged(folder: Path) -> None:
        pass

    tampered_again = tmp_path / "again"
    shutil.copytree(tmp_path / "signing", tampered_again)
    tamper(tampered_again)
    refused = cli(joc, "deploy", "import", str(pack(tampered_again, tmp_path / "again.zip", only="hello")))
    assert refused.returncode == 1 and f"version {version} exists with other content" in refused.stderr

    rejected("tampered", tamper, pki.key("leaf"), pki.chain_pem, "signature does not match the JSON text")
    rejected(
        "wrong-key", unchanged, pki.key("stranger"), pki.chain_pem, "signature does not match the JSON text"
    )
    rejected("expired", unchanged, pki.key("expired"), pki.pem("expired"), "expired on 2020-02-01")
    rejected("untrusted", unchanged, pki.key("stranger"), pki.pem("stranger"), "is not trusted")

    audit = cli(joc, "audit").stdout
    assert "export for signing" in audit and "import signed" in audit and "signed by ops" in audit
