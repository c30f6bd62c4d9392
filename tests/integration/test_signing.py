"""Signatures made by `openssl` (RSA, ECDSA, a CA chain, an expired certificate, a stranger's key),
checked by the verifier directly and by real controller, director and subagent processes."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from gen.ostinato.common.v1 import events_pb2, items_pb2, order_pb2, workflow_pb2
from gen.ostinato.controller.v1 import controller_pb2, controller_pb2_grpc
from gen.ostinato.director.v1 import director_pb2, director_pb2_grpc
from gen.ostinato.joc.v1 import joc_pb2
from ostinato import signing
from ostinato.errors import InvalidArgument, SignatureRejected
from ostinato.launch import Launched, launch
from ostinato.topology import Topology, TopologyConfig
from tests.integration.certificates import Certificates
from tests.integration.pki import Pki, make_pki, sign_file
from tests.integration.support import Joc, shell_job

pytestmark = pytest.mark.integration

WF = items_pb2.ITEM_TYPE_WORKFLOW


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def workflow_json(path: str, version: str = "v1", script: str = "echo hi") -> str:
    return json.dumps(
        {
            "instructions": [{"execute": {"jobName": "j"}}],
            "jobs": {"j": {"agent": "agent-1", "executable": {"shellScript": {"script": script}}}},
            "path": path,
            "versionId": version,
        },
        sort_keys=True,
    )


def openssl_signed(
    pki: Pki, tmp: Path, text: str, key: str, certificate: str, item_type: int = WF
) -> items_pb2.SignedItem:
    """An item signed the operator's way: the JSON in a file, `openssl dgst -sign`, the PEM."""
    value = json.loads(text)
    file = tmp / f"{value['path'].strip('/').replace('/', '_')}-{key}.json"
    file.write_text(text)
    sign_file(pki.key(key), file, file.with_suffix(".sig"))
    signature = signing.signature_of(file.with_suffix(".sig").read_bytes(), certificate)
    return items_pb2.SignedItem(
        type=item_type,  # type: ignore[arg-type]
        path=value["path"],
        version_id=value.get("versionId", ""),
        json=text,
        signature=signature,
    )


def tampered(item: items_pb2.SignedItem) -> items_pb2.SignedItem:
    changed = items_pb2.SignedItem()
    changed.CopyFrom(item)
    changed.json = item.json.replace("echo hi", "rm -rf ~")
    return changed


def cases(pki: Pki, tmp: Path) -> dict[str, tuple[items_pb2.SignedItem, str]]:
    """Items by name, each with "" (accepted) or what the rejection must say."""
    good_rsa = openssl_signed(pki, tmp, workflow_json("/sig/rsa"), "rsa", pki.pem("rsa"))
    good_chain = openssl_signed(pki, tmp, workflow_json("/sig/chain"), "leaf", pki.chain_pem)
    unsigned = items_pb2.SignedItem(
        type=WF, path="/sig/unsigned", version_id="v1", json=workflow_json("/sig/unsigned")
    )
    return {
        "rsa": (good_rsa, ""),
        "ecdsa": (openssl_signed(pki, tmp, workflow_json("/sig/ecdsa"), "ecdsa", pki.pem("ecdsa")), ""),
        "ca chain": (good_chain, ""),
        "tampered": (tampered(good_rsa), "signature does not match the JSON text"),
        "tampered chain": (tampered(good_chain), "signature does not match the JSON text"),
        "wrong key": (
            openssl_signed(pki, tmp, workflow_json("/sig/wrong"), "stranger", pki.pem("rsa")),
            "signature does not match the JSON text",
        ),
        "untrusted": (
            openssl_signed(pki, tmp, workflow_json("/sig/stranger"), "stranger", pki.pem("stranger")),
            "is not trusted",
        ),
        "chain without intermediate": (
            openssl_signed(pki, tmp, workflow_json("/sig/leafonly"), "leaf", pki.pem("leaf")),
            "is not trusted",
        ),
        "expired": (
            openssl_signed(pki, tmp, workflow_json("/sig/expired"), "expired", pki.pem("expired")),
            "expired on 2020-02-01",
        ),
        "unsigned": (unsigned, "unsigned"),
        "other path": (
            _renamed(openssl_signed(pki, tmp, workflow_json("/sig/a"), "rsa", pki.pem("rsa")), "/sig/b"),
            "signed for path '/sig/a'",
        ),
    }


def _renamed(item: items_pb2.SignedItem, path: str) -> items_pb2.SignedItem:
    item.path = path
    return item


def trusted(pki: Pki) -> signing.Verifier:
    return signing.Verifier.from_files([pki.cert("rsa"), pki.cert("ecdsa"), pki.cert("root")])


def test_verifier_directly(pki: Pki, tmp_path: Path) -> None:
    verifier = trusted(pki)
    for name, (item, why) in cases(pki, tmp_path).items():
        if not why:
            assert verifier.verify(item) in ("CN=rsa signer", "CN=ecdsa signer", "CN=leaf"), name
            continue
        with pytest.raises(SignatureRejected) as info:
            verifier.verify(item)
        assert why in str(info.value), (name, str(info.value))
        assert str(info.value).startswith(f"workflow {item.path}: "), str(info.value)

    # Validity is judged at the time given: the chain is not valid yet in 2020, no more in 2100.
    good = cases(pki, tmp_path)["ca chain"][0]
    with pytest.raises(SignatureRejected, match="is not valid before"):
        verifier.verify(good, datetime(2020, 1, 1, tzinfo=UTC))
    with pytest.raises(SignatureRejected, match="expired on"):
        verifier.verify(good, datetime.now(UTC) + timedelta(days=365))
    # Nothing trusted: everything signed is rejected; unsigned items of types that need no
    # signature pass.
    with pytest.raises(SignatureRejected, match="trusts no certificate"):
        signing.Verifier().verify(good)
    lock = items_pb2.SignedItem(type=items_pb2.ITEM_TYPE_LOCK, path="/l", json='{"limit": 1, "path": "/l"}')
    assert signing.Verifier().verify(lock) == ""
    with pytest.raises(InvalidArgument, match="not a PEM"):
        signing.Verifier.from_pem(["no certificate"])


def test_signer_and_openssl_agree(pki: Pki, tmp_path: Path) -> None:
    """What JOC signs (low, medium) openssl verifies, and the other way round (above)."""
    for name in ("rsa", "ecdsa"):
        signer = signing.Signer(pki.key(name).read_text(), pki.pem(name))
        text = workflow_json(f"/own/{name}")
        item = signer.sign_item(
            items_pb2.SignedItem(type=WF, path=f"/own/{name}", version_id="v1", json=text)
        )
        assert item.signature.algorithm == ("SHA256withRSA" if name == "rsa" else "SHA256withECDSA")
        (tmp_path / "x.json").write_text(text)
        (tmp_path / "x.sig").write_bytes(item.signature.signature)
        subprocess.run(
            [
                "openssl",
                "x509",
                "-in",
                str(pki.cert(name)),
                "-pubkey",
                "-noout",
                "-out",
                str(tmp_path / "pub.pem"),
            ],
            check=True,
        )
        done = subprocess.run(
            ["openssl", "dgst", "-sha256", "-verify", "pub.pem", "-signature", "x.sig", "x.json"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert done.stdout.strip() == "Verified OK", done.stdout + done.stderr
        assert trusted(pki).verify(item) == f"CN={name} signer"
    with pytest.raises(InvalidArgument, match="does not belong"):
        signing.Signer(pki.key("rsa").read_text(), pki.pem("ecdsa"))


# ---- real controller and director processes


@pytest.fixture(scope="module")
def services(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory, certificates: Certificates
) -> Iterator[dict[str, Launched]]:
    base = tmp_path_factory.mktemp("services")
    trust = [a for name in ("rsa", "ecdsa", "root") for a in ("--trust", str(pki.cert(name)))]
    started: dict[str, Launched] = {}
    try:
        started["controller"] = launch(
            "controller",
            "controller_svc",
            [
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                str(base / "c"),
                "--agent",
                "agent-1=127.0.0.1:1",
                *trust,
                *certificates.args("controller", peers=["joc"]),
            ],
            base / "c",
        )
        started["director"] = launch(
            "director",
            "director_svc",
            [
                *[
                    "--listen",
                    "127.0.0.1:0",
                    "--data-dir",
                    str(base / "d"),
                    "--agent-name",
                    "agent-1",
                    *trust,
                ],
                *certificates.args("director", peers=["controller"]),
            ],
            base / "d",
        )
        started["trusting nothing"] = launch(
            "controller",
            "controller_svc",
            [
                *["--listen", "127.0.0.1:0", "--data-dir", str(base / "n"), "--agent", "agent-1=127.0.0.1:1"],
                *certificates.args("controller", peers=["joc"]),
            ],
            base / "n",
        )
        yield started
    finally:
        for s in started.values():
            s.process.terminate()
        for s in started.values():
            s.stop()


def test_controller_and_director_verify_every_item(
    services: dict[str, Launched], pki: Pki, tmp_path: Path, certificates: Certificates
) -> None:
    with (
        certificates.sync_channel(services["controller"].address, as_name="joc") as c_channel,
        certificates.sync_channel(services["director"].address, as_name="controller") as d_channel,
        certificates.sync_channel(services["trusting nothing"].address, as_name="joc") as n_channel,
    ):
        controller = controller_pb2_grpc.ControllerServiceStub(c_channel)
        director = director_pb2_grpc.DirectorServiceStub(d_channel)
        sender = director_pb2.Sender(controller_id="test", term=1)

        def deploy(item: items_pb2.SignedItem) -> None:
            controller.DeployItems(controller_pb2.DeployItemsRequest(items=[item]), timeout=10)

        def attach(item: items_pb2.SignedItem) -> None:
            director.AttachItems(director_pb2.AttachItemsRequest(sender=sender, items=[item]), timeout=10)

        for name, (item, why) in cases(pki, tmp_path).items():
            for service, call in (("controller", deploy), ("director", attach)):
                if not why:
                    call(item)
                    continue
                with pytest.raises(grpc.RpcError) as info:
                    call(item)
                error = info.value
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (name, service, error)
                assert item.path in error.details() and why in error.details(), (
                    name,
                    service,
                    error.details(),
                )

        # A good item beside a bad one: the request is refused whole, nothing is half-deployed.
        good, _ = cases(pki, tmp_path)["rsa"]
        bad, _ = cases(pki, tmp_path)["expired"]
        with pytest.raises(grpc.RpcError) as info:
            controller.DeployItems(controller_pb2.DeployItemsRequest(items=[good, bad]), timeout=10)
        assert bad.path in info.value.details()

        # A controller started without --trust accepts no signed item.
        nothing = controller_pb2_grpc.ControllerServiceStub(n_channel)
        with pytest.raises(grpc.RpcError) as info:
            nothing.DeployItems(controller_pb2.DeployItemsRequest(items=[good]), timeout=10)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "trusts no certificate" in info.value.details()


def test_a_signature_survives_the_journal(
    services: dict[str, Launched], pki: Pki, tmp_path: Path, certificates: Certificates
) -> None:
    """The controller keeps the exact signed JSON and signature: what it hands agents verifies."""
    item = openssl_signed(pki, tmp_path, workflow_json("/sig/kept", "v7"), "leaf", pki.chain_pem)
    with certificates.sync_channel(services["controller"].address, as_name="joc") as channel:
        controller = controller_pb2_grpc.ControllerServiceStub(channel)
        deployed = controller.DeployItems(controller_pb2.DeployItemsRequest(items=[item]), timeout=10)
        watched = controller.WatchEvents(controller_pb2.WatchEventsRequest(after=0, heartbeat_seconds=0.2))
        found: events_pb2.ItemDeployed | None = None
        for response in watched:
            for event in response.events:
                if (
                    event.WhichOneof("kind") == "item_deployed"
                    and event.item_deployed.workflow.path == "/sig/kept"
                ):
                    found = event.item_deployed
            if found is not None or (response.events and response.events[-1].id >= deployed.event_id):
                break
        watched.cancel()
    assert found is not None
    kept = items_pb2.SignedItem(
        type=WF, path="/sig/kept", version_id="v7", json=found.signed_json, signature=found.signature
    )
    assert kept.json == item.json
    assert trusted(pki).verify(kept) == "CN=leaf"


# ---- subagents verify what they run


class DistrustingSubagents(Topology):
    """Controller and director trust JOC's root key; the subagents trust only `trusted`."""

    def __init__(self, data_dir: Path, config: TopologyConfig, trusted: Path) -> None:
        super().__init__(data_dir, config)
        self.trusted = trusted

    def _args(self, name: str) -> tuple[str, str, list[str]]:
        kind, module, args = super()._args(name)
        if name in self.config.subagents:
            args = [
                a for a, before in zip(args, ["", *args[:-1]], strict=True) if "--trust" not in (a, before)
            ]
            args += ["--trust", str(self.trusted)]
        return kind, module, args


async def test_a_job_the_subagent_cannot_verify_fails_with_the_reason(tmp_path: Path, pki: Pki) -> None:
    topology = DistrustingSubagents(
        tmp_path / "t", TopologyConfig.ephemeral(subagents=1), pki.cert("stranger")
    )
    topology.start()
    try:
        async with topology.channel(topology.joc_address) as channel:
            joc = Joc.connect(channel)
            ran = tmp_path / "ran"
            await joc.deploy_workflow(
                "/distrusted",
                {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job(f"touch {ran}")}},
            )
            added = await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/distrusted"))
            order = await joc.wait_until_ended(added.order_id)
    finally:
        topology.stop()
    assert order.state == order_pb2.ORDER_STATE_FAILED
    [historic] = order.historic_outcomes
    outcome = historic.outcome
    assert outcome.kind == workflow_pb2.OUTCOME_KIND_FAILED and outcome.return_code == 126
    assert "subagent subagent-1 refused to start the job" in outcome.message, outcome
    assert "CN=ostinato local root" in outcome.message and "is not trusted" in outcome.message, outcome
    assert not ran.exists()
