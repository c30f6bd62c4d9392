"""OpenPGP signatures made by the real `gpg` (`--detach-sign --armor`): the verifier directly; real
controller, director and subagent processes trusting a key (--trust-pgp); and the round trip of
security level high: export, sign each file with gpg, import, orders run."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from gen.ostinato.common.v1 import events_pb2, items_pb2
from gen.ostinato.controller.v1 import controller_pb2, controller_pb2_grpc
from gen.ostinato.director.v1 import director_pb2, director_pb2_grpc
from gen.ostinato.subagent.v1 import subagent_pb2 as pb
from ostinato import pgp, signing
from ostinato.errors import InvalidArgument, SignatureRejected
from ostinato.launch import Launched, launch
from ostinato.topology import ROOT, Topology, TopologyConfig
from tests.integration.certificates import Certificates
from tests.integration.gpg import GpgKey, make_key
from tests.integration.test_subagent import Director

pytestmark = pytest.mark.integration

WF = items_pb2.ITEM_TYPE_WORKFLOW
SCRIPT = 'echo "$GREETING"'


@dataclass
class Keys:
    alice: GpgKey  # RSA, gpg's default
    bob: GpgKey  # Ed25519
    mallory: GpgKey  # trusted by nobody
    old: GpgKey  # expired (made and used in 2020)

    @property
    def trusted(self) -> list[Path]:
        return [self.alice.public, self.bob.public, self.old.public]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("gpg")
    return Keys(
        make_key(folder, "alice"),
        make_key(folder, "bob", "ed25519"),
        make_key(folder, "mallory"),
        make_key(folder, "old", expired=True),
    )


def workflow_json(path: str, version: str, script: str = "echo signed by gpg") -> str:
    value = {
        "path": path,
        "versionId": version,
        "instructions": [{"execute": {"jobName": "j"}}],
        "jobs": {"j": {"agent": "agent-1", "executable": {"shellScript": {"script": script}}}},
    }
    return json.dumps(value, sort_keys=True)


def gpg_signed(key: GpgKey, folder: Path, text: str, item_type: int = WF) -> items_pb2.SignedItem:
    """The JSON in a file, signed by `gpg --detach-sign --armor`, as the import reads it."""
    value = json.loads(text)
    file = folder / f"{value['path'].strip('/').replace('/', '_')}-{key.email}.json"
    file.write_text(text)
    signature = key.sign(file).read_bytes()
    return items_pb2.SignedItem(
        type=item_type,  # type: ignore[arg-type]
        path=value["path"],
        version_id=value.get("versionId", ""),
        json=text,
        signature=events_pb2.Signature(signature=signature, algorithm=signing.OPENPGP),
    )


def tampered(item: items_pb2.SignedItem) -> items_pb2.SignedItem:
    changed = items_pb2.SignedItem()
    changed.CopyFrom(item)
    changed.json = item.json.replace("echo", "rm -rf ~; echo")
    return changed


def cases(keys: Keys, folder: Path) -> dict[str, tuple[items_pb2.SignedItem, str]]:
    """Items and why a verifier trusting alice, bob and old refuses each ("" = accepted)."""
    good = gpg_signed(keys.alice, folder, workflow_json("/pgp/alice", "v1"))
    return {
        "alice": (good, ""),
        "bob": (gpg_signed(keys.bob, folder, workflow_json("/pgp/bob", "v1")), ""),
        "tampered": (tampered(good), "does not match the JSON text"),
        "mallory": (gpg_signed(keys.mallory, folder, workflow_json("/pgp/mallory", "v1")), "not trusted"),
        "expired": (gpg_signed(keys.old, folder, workflow_json("/pgp/old", "v1")), "expired on"),
    }


def test_the_verifier_checks_gpg_signatures(keys: Keys, tmp_path: Path) -> None:
    verifier = signing.Verifier.from_files([], keys.trusted)
    for name, (item, why) in cases(keys, tmp_path).items():
        if not why:
            assert verifier.verify(item).startswith("OpenPGP key "), name
            assert f"({name} <{name}@example.com>)" in verifier.verify(item)
            continue
        with pytest.raises(SignatureRejected, match=why):
            verifier.verify(item)

    good, _ = cases(keys, tmp_path)["alice"]
    with pytest.raises(SignatureRejected, match="trusts no OpenPGP key"):
        signing.Verifier.from_files([]).verify(good)
    moved = items_pb2.SignedItem()
    moved.CopyFrom(good)
    moved.path = "/pgp/elsewhere"
    with pytest.raises(SignatureRejected, match="signed for path '/pgp/alice'"):
        verifier.verify(moved)
    garbage = items_pb2.SignedItem()
    garbage.CopyFrom(good)
    garbage.signature.signature = b"not a signature"
    with pytest.raises(SignatureRejected, match="not an OpenPGP signature"):
        verifier.verify(garbage)
    assert pgp.issuer_of(good.signature.signature).startswith("OpenPGP key ")
    with pytest.raises(InvalidArgument, match="not OpenPGP public keys"):
        pgp.PgpKeys.from_files([ROOT / "README.md"])


# ---- real controller, director and subagent processes


@pytest.fixture(scope="module")
def services(
    keys: Keys, tmp_path_factory: pytest.TempPathFactory, certificates: Certificates
) -> Iterator[dict[str, Launched]]:
    base = tmp_path_factory.mktemp("pgp-services")
    trust = [a for key in keys.trusted for a in ("--trust-pgp", str(key))]
    started: dict[str, Launched] = {}
    try:
        started["controller"] = launch(
            "controller",
            "controller_svc",
            [
                *["--data-dir", str(base / "c"), "--agent", "agent-1=127.0.0.1:1", *trust],
                *certificates.args("pgp-controller", peers=["joc"]),
            ],
            base / "c",
        )
        started["director"] = launch(
            "director",
            "director_svc",
            [
                *["--data-dir", str(base / "d"), *trust],
                *certificates.args("pgp-director", peers=["controller"]),
            ],
            base / "d",
        )
        started["subagent"] = launch(
            "subagent",
            "subagent_svc",
            [
                *["--data-dir", str(base / "s"), "--id", "s", *trust],
                *certificates.args("s", peers=["director"]),
            ],
            base / "s",
        )
        yield started
    finally:
        for s in started.values():
            s.process.terminate()
        for s in started.values():
            s.stop()


async def test_controller_director_and_subagent_verify_gpg_signatures(
    services: dict[str, Launched], keys: Keys, tmp_path: Path, certificates: Certificates
) -> None:
    items = cases(keys, tmp_path)
    sender = director_pb2.Sender(controller_id="test", term=1)
    async with (
        certificates.channel(services["controller"].address, as_name="joc") as c_channel,
        certificates.channel(services["director"].address, as_name="controller") as d_channel,
    ):
        controller = controller_pb2_grpc.ControllerServiceStub(c_channel)
        director = director_pb2_grpc.DirectorServiceStub(d_channel)
        for name, (item, why) in items.items():
            for service, call in (
                ("controller", controller.DeployItems(controller_pb2.DeployItemsRequest(items=[item]))),
                (
                    "director",
                    director.AttachItems(director_pb2.AttachItemsRequest(sender=sender, items=[item])),
                ),
            ):
                if not why:
                    await call
                    continue
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call
                details = info.value.details() or ""
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, (name, service)
                assert item.path in details and why in details, (name, service, details)

    # Each handed over before its start: the copy of a version handed over last counts.
    subagent = await Director(services["subagent"].address, security=certificates.security("director")).open()
    for name, (item, why) in items.items():
        await subagent.send(attach_signed=pb.AttachSigned(items=[item]))
        script = json.loads(item.json)["jobs"]["j"]["executable"]["shellScript"]["script"]
        await subagent.start_only(name, script, workflow_path=item.path, workflow_version_id=item.version_id)
        exited = (await subagent.until_exited(name, ack=True))[-1].process_exited
        if not why:
            assert not exited.not_started and exited.return_code == 0, (name, exited)
        else:
            assert exited.not_started and why in exited.message, (name, exited.message)
    await subagent.close()


# ---- security level high: export, gpg, import


def ostinato(topology: Topology, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ostinato.cli", *args[:2], "--joc", topology.joc_address]
    command += [*topology.cli_args(), *args[2:]]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_gpg_signed_objects_deploy_and_their_orders_run(keys: Keys, tmp_path: Path) -> None:
    config = TopologyConfig.ephemeral(subagents=1)
    config.security_level = "high"
    config.trust_pgp = [keys.alice.public]
    topology = Topology(tmp_path / "topology", config)
    topology.start()
    try:
        sources = tmp_path / "sources"
        (sources / "app").mkdir(parents=True)
        (sources / "app/env.jobresource.json").write_text('{"env": {"GREETING": "\'signed greetings\'"}}')
        (sources / "app/hello.workflow.json").write_text(
            json.dumps(
                {
                    "jobResourcePaths": ["/app/env"],
                    "instructions": [{"execute": {"jobName": "j"}}],
                    "jobs": {
                        "j": {
                            "agent": "agent-1",
                            "executable": {"shellScript": {"script": 'echo "$GREETING"'}},
                        }
                    },
                }
            )
        )
        put = ostinato(topology, "inventory", "put", str(sources))
        assert put.returncode == 0, put.stderr

        def signed_archive(key: GpgKey, name: str, change: str = "") -> Path:
            """A new export (a new version), each .json signed by gpg, perhaps changed after."""
            archive = tmp_path / f"{name}-export.zip"
            exported = ostinato(topology, "deploy", "export", "--for-signing", "/app", "-o", str(archive))
            assert exported.returncode == 0, exported.stderr
            folder = tmp_path / name
            with zipfile.ZipFile(archive) as z:
                z.extractall(folder)
            for file in sorted(folder.rglob("*.json")):
                if file.name != "manifest.json":
                    key.sign(file)  # FILE.json.asc, gpg's own name
                    if change and file.name == "hello.workflow.json":
                        file.write_text(file.read_text().replace("echo", change))
            result = tmp_path / f"{name}.zip"
            with zipfile.ZipFile(result, "w") as z:
                for file in folder.rglob("*"):
                    z.write(file, file.relative_to(folder))
            return result

        # Refused by the controller, which JOC reports at once.
        refused = ostinato(topology, "deploy", "import", str(signed_archive(keys.mallory, "by-mallory")))
        assert refused.returncode == 1 and "which is not trusted" in refused.stderr, (
            refused.stdout + refused.stderr
        )
        changed = ostinato(
            topology, "deploy", "import", str(signed_archive(keys.alice, "changed", "id; echo"))
        )
        assert changed.returncode == 1 and "does not match the JSON text" in changed.stderr, changed.stderr
        imported = ostinato(topology, "deploy", "import", str(signed_archive(keys.alice, "by-alice")))
        assert imported.returncode == 0, imported.stdout + imported.stderr
        history = ostinato(topology, "deploy", "history", "/app/hello")
        assert "OpenPGP key" in history.stdout, history.stdout

        run = ostinato(topology, "order", "add", "/app/hello", "--wait")
        assert run.returncode == 0, run.stdout + run.stderr
        assert "signed greetings" in run.stdout and "finished" in run.stdout.splitlines()[-1], run.stdout
    finally:
        topology.stop()
