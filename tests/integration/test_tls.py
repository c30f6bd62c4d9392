"""Mutual TLS with certificates made by the `openssl` command, as an operator makes them (README):
who is refused (no certificate, another CA, expired, the wrong identity, plain text), the rogue
session that once took a subagent over, certificate renewal without a restart, and `ostinato pki`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gen.ostinato.common.v1 import order_pb2
from gen.ostinato.joc.v1 import joc_pb2
from gen.ostinato.subagent.v1 import subagent_pb2 as pb
from gen.ostinato.subagent.v1 import subagent_pb2_grpc
from ostinato import rpc, tls
from ostinato.launch import Launched, launch
from ostinato.topology import Topology, TopologyConfig
from tests.integration.certificates import Certificates
from tests.integration.support import Joc, eventually, shell_job
from tests.integration.test_subagent import Director

pytestmark = pytest.mark.integration

CA_CONFIG = """
[ ca ]
default_ca = ca_default
[ ca_default ]
dir = .
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = policy_any
copy_extensions = none
unique_subject = no
[ policy_any ]
organizationName = optional
commonName = supplied
[ leaf ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyAgreement
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
"""
# The README's leaf.cnf, for this host.
LEAF = """basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyAgreement
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
"""


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"openssl {' '.join(args)}: {done.stderr}"


@dataclass
class OpenSslCa:
    """A CA made by openssl, issuing ECDSA certificates for services (as in the README)."""

    dir: Path

    @classmethod
    def make(cls, folder: Path, name: str) -> OpenSslCa:
        folder.mkdir(parents=True)
        (folder / "ca.cnf").write_text(CA_CONFIG)
        (folder / "leaf.cnf").write_text(LEAF)
        (folder / "index.txt").write_text("")
        (folder / "serial").write_text("01\n")
        openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "30", "-subj", f"/O=ops/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder,
        )  # fmt: skip
        return cls(folder)

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    def issue(self, file: str, cn: str, expired: bool = False) -> tls.Security:
        """FILE.pem and FILE.key for subject CN=cn,O=ops, valid for localhost and 127.0.0.1: the
        README's commands (an expired one needs `openssl ca`, which sets dates in the past)."""
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{file}.key", cwd=self.dir)
        openssl(
            "req", "-new", "-key", f"{file}.key", "-subj", f"/O=ops/CN={cn}", "-out", f"{file}.csr",
            cwd=self.dir,
        )  # fmt: skip
        if expired:
            openssl(
                "ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key",
                "-extensions", "leaf", "-startdate", "20200101000000Z", "-enddate", "20200201000000Z",
                "-notext", "-in", f"{file}.csr", "-out", f"{file}.pem", cwd=self.dir,
            )  # fmt: skip
        else:
            openssl(
                "x509", "-req", "-in", f"{file}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "30", "-extfile", "leaf.cnf", "-out", f"{file}.pem", cwd=self.dir,
            )  # fmt: skip
        return tls.Security(self.dir / f"{file}.pem", self.dir / f"{file}.key", self.ca)

    def args(self, security: tls.Security, peers: list[str]) -> list[str]:
        args = ["--tls-cert", str(security.cert), "--tls-key", str(security.key), "--tls-ca", str(self.ca)]
        return args + [a for p in peers for a in ("--tls-peer", p)]


@dataclass
class Ops:
    ca: OpenSslCa
    subagent: tls.Security
    director: tls.Security
    controller: tls.Security
    expired_director: tls.Security
    stranger: tls.Security  # CN=director-a too, from another CA


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Ops:
    base = tmp_path_factory.mktemp("openssl")
    ca = OpenSslCa.make(base / "ops", "ops CA")
    other = OpenSslCa.make(base / "other", "another CA")
    return Ops(
        ca,
        subagent=ca.issue("subagent-1", "subagent-1"),
        director=ca.issue("director-a", "director-a"),
        controller=ca.issue("controller-a", "controller-a"),
        expired_director=ca.issue("director-a-old", "director-a", expired=True),
        stranger=other.issue("director-a", "director-a"),
    )


@pytest.fixture
def subagent(ops: Ops, tmp_path: Path) -> Iterator[Launched]:
    """A subagent that accepts only the director CN=director-a,O=ops."""
    data = tmp_path / "subagent"
    launched = launch(
        "subagent",
        "subagent_svc",
        ["--data-dir", str(data), "--id", "subagent-1", *ops.ca.args(ops.subagent, ["CN=director-a, O=ops"])],
        data,
    )
    yield launched
    launched.stop()


async def session_refused(channel: grpc.aio.Channel) -> tuple[grpc.StatusCode, str]:
    """The rogue director of the issue: a session with a term far ahead, and a command at once.
    Returns how the call ended (a write may fail first when the subagent ends the call early)."""
    async with channel:
        call = subagent_pb2_grpc.SubagentServiceStub(channel).Session()
        hello = pb.Hello(
            agent_name="agent-1", director_id="rogue", term=1_000_000_000_000, heartbeat_seconds=1
        )
        rogue = pb.StartProcess(process_key="rogue", shell_script="id > f")
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await call.write(pb.SessionRequest(hello=hello))
            # Read before writing on: a write racing the subagent's refusal would end the call
            # with gRPC's own INTERNAL on this side instead of the status the subagent sent.
            response = await asyncio.wait_for(call.read(), 10)
            await call.write(pb.SessionRequest(start_process=rogue))
            raise AssertionError(f"the subagent answered the rogue director: {response}")
        return await call.code(), await call.details()


async def test_only_the_director_identity_reaches_the_subagent(
    subagent: Launched, ops: Ops, tmp_path: Path
) -> None:
    director = await Director(subagent.address, term=5, security=ops.director).open()
    assert director.welcome.subagent_id == "subagent-1"

    # The right CA with the wrong identity: refused before any core sees the hello.
    code, details = await session_refused(rpc.channel(subagent.address, ops.controller))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "CN=controller-a,O=ops" in details, (code, details)
    # One of another CA, an expired one, none at all, plain text: the handshake fails.
    for security in (ops.stranger, ops.expired_director, tls.INSECURE):
        code, details = await session_refused(rpc.channel(subagent.address, security))
        assert code == grpc.StatusCode.UNAVAILABLE, (security, code, details)
    no_certificate = grpc.ssl_channel_credentials(ops.ca.ca.read_bytes())
    code, details = await session_refused(grpc.aio.secure_channel(subagent.address, no_certificate))
    assert code == grpc.StatusCode.UNAVAILABLE, (code, details)

    # The real director's session lives on (no term was raised), and nothing ran.
    before = director.heartbeats_received
    await eventually(lambda: director.heartbeats_received >= before + 2, what="heartbeats after the attacks")
    assert director.pending() == 0, "the subagent reported a process"
    assert not (subagent.log_path.parent / "work" / "f").exists() and not Path("f").exists()
    await director.close()

    log = subagent.log_text()
    assert "refused CN=controller-a,O=ops" in log and "(SAN localhost, 127.0.0.1)" in log, log[-3000:]
    assert "certificate has expired" in log, log[-3000:]  # grpc's own line for the handshake


def test_a_service_refuses_to_start_without_tls_or_insecure(tmp_path: Path, ops: Ops) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "subagent_svc", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "--tls-cert, --tls-key and --tls-ca are required" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "subagent_svc", "--data-dir", str(tmp_path), *ops.ca.args(ops.subagent, [])],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "--tls-peer" in done.stderr, done.stderr
    wrong_key = [*ops.ca.args(ops.subagent, ["CN=x"])]
    wrong_key[wrong_key.index("--tls-key") + 1] = str(ops.director.key)
    done = subprocess.run(
        [sys.executable, "-m", "subagent_svc", "--data-dir", str(tmp_path), *wrong_key],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "is not the key of" in done.stderr, done.stderr


# ---- renewal


def served_certificate(address: str, client: tls.Security) -> x509.Certificate:
    """The certificate a server presents to a new connection."""
    assert client.ca and client.cert and client.key
    context = ssl.create_default_context(cafile=str(client.ca))
    context.load_cert_chain(str(client.cert), str(client.key))
    context.set_alpn_protocols(["h2"])
    host, port = address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls_socket,
    ):
        der = tls_socket.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def replace_files(served: tls.Security, renewed: tls.Security) -> None:
    """What a renewal script does: new files moved over the old ones (never half-written)."""
    assert served.cert and served.key and renewed.cert and renewed.key
    for new, old in ((renewed.key, served.key), (renewed.cert, served.cert)):
        tmp = old.with_suffix(".tmp")
        tmp.write_bytes(new.read_bytes())
        os.replace(tmp, old)


async def test_a_renewed_server_certificate_serves_the_next_connection(ops: Ops, tmp_path: Path) -> None:
    files = tls.Security(
        tmp_path / "server.pem", tmp_path / "server.key", ops.ca.ca, ("CN=director-a,O=ops",)
    )
    assert files.cert and files.key and ops.subagent.cert and ops.subagent.key
    files.cert.write_bytes(ops.subagent.cert.read_bytes())
    files.key.write_bytes(ops.subagent.key.read_bytes())
    server = await rpc.start_server("127.0.0.1:0", [], security=files)
    try:
        first = await asyncio.to_thread(served_certificate, server.address, ops.director)
        old_channel = rpc.channel(server.address, ops.director)
        health = health_pb2_grpc.HealthStub(old_channel)
        await health.Check(health_pb2.HealthCheckRequest(), timeout=5)

        renewed = ops.ca.issue("subagent-1-renewed", "subagent-1")
        replace_files(files, renewed)
        second = await asyncio.to_thread(served_certificate, server.address, ops.director)
        assert second.serial_number != first.serial_number
        assert renewed.cert is not None
        assert second == x509.load_pem_x509_certificate(renewed.cert.read_bytes())
        # The connection open before keeps its certificate and goes on working.
        await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        await old_channel.close()
        # A new gRPC connection is accepted with the renewed certificate.
        async with rpc.channel(server.address, ops.director) as channel:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        await server.stop(0)


async def test_a_client_opens_a_new_channel_when_its_files_change(ops: Ops, tmp_path: Path) -> None:
    files = tls.Security(tmp_path / "client.pem", tmp_path / "client.key", ops.ca.ca)
    assert files.cert and files.key and ops.director.cert and ops.director.key
    files.cert.write_bytes(ops.director.cert.read_bytes())
    files.key.write_bytes(ops.director.key.read_bytes())
    server = await rpc.start_server(
        "127.0.0.1:0", [], security=ops.subagent.accepting(["CN=director-a,O=ops"])
    )
    target = rpc.ClusterTarget([server.address], security=files)
    try:
        first = target.channel()
        await health_pb2_grpc.HealthStub(first).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert target.channel() is first
        replace_files(files, ops.ca.issue("director-a-renewed", "director-a"))
        second = target.channel()
        assert second is not first
        await health_pb2_grpc.HealthStub(second).Check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        await target.close()
        await server.stop(0)


# ---- ostinato pki


def test_pki_commands_make_certificates_services_accept(tmp_path: Path) -> None:
    def ostinato(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ostinato.cli", *args], capture_output=True, text=True, timeout=30
        )

    pki_dir = tmp_path / "pki"
    made = ostinato("pki", "init", str(pki_dir), "--organization", "acme")
    assert made.returncode == 0, made.stderr
    assert ostinato("pki", "init", str(pki_dir)).returncode == 1  # never replaces a CA
    issued = ostinato("pki", "issue", str(pki_dir), "subagent-1", "--san", "localhost", "--san", "127.0.0.1")
    assert issued.returncode == 0, issued.stderr
    assert "--tls-peer 'CN=subagent-1,O=acme'" in issued.stdout
    issued = ostinato("pki", "issue", str(pki_dir), "director", "--subject", "CN=director-a, O=acme, C=DE")
    assert issued.returncode == 0 and "subject CN=director-a,O=acme,C=DE" in issued.stdout, issued.stdout
    assert oct((pki_dir / "director.key").stat().st_mode & 0o777) == "0o600"
    director = tls.Security(pki_dir / "director.pem", pki_dir / "director.key", pki_dir / "ca.pem")
    identity = tls.identity_of(director.cert.read_bytes())  # type: ignore[union-attr]
    data = tmp_path / "subagent"
    subagent = launch(
        "subagent",
        "subagent_svc",
        [
            *["--data-dir", str(data), "--id", "subagent-1", "--tls-cert", str(pki_dir / "subagent-1.pem")],
            *["--tls-key", str(pki_dir / "subagent-1.key"), "--tls-ca", str(pki_dir / "ca.pem")],
            *["--tls-peer", identity.subject],
        ],
        data,
    )
    try:

        async def session() -> str:
            opened = await Director(subagent.address, security=director).open()
            await opened.close()
            return opened.welcome.subagent_id

        assert asyncio.run(session()) == "subagent-1"
    finally:
        subagent.stop()


async def test_plain_text_only_when_every_side_says_insecure(
    tmp_path: Path, certificates: Certificates
) -> None:
    config = TopologyConfig.ephemeral(subagents=1)
    config.insecure = True
    topology = Topology(tmp_path / "plain", config)
    topology.start()
    try:
        async with topology.channel(topology.joc_address) as channel:
            joc = Joc.connect(channel)
            await joc.deploy_workflow(
                "/plain", {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job("true")}}
            )
            added = await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/plain"))
            assert (await joc.wait_until_ended(added.order_id)).state == order_pb2.ORDER_STATE_FINISHED
        # A TLS client is refused by a plain-text server too: both sides must agree.
        async with certificates.channel(topology.joc_address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        topology.stop()
    for name, service in topology.services.items():
        assert "runs in PLAIN TEXT (--insecure)" in service.log_text(), name
