"""Orders across two agents, and a lock contended by 20 orders, through real processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gen.ostinato.common.v1 import events_pb2, items_pb2, order_pb2
from gen.ostinato.joc.v1 import joc_pb2
from ostinato import signing
from ostinato.launch import Launched, launch
from ostinato.topology import Topology
from tests.integration.certificates import Certificates
from tests.integration.support import Joc, shell_job

S = order_pb2.OrderState


@pytest.fixture
def two_agents(tmp_path: Path, certificates: Certificates) -> Iterator[str]:
    """JOC, a controller, and two director agents with a subagent each; yields JOC's address."""
    started: list[Launched] = []
    key_pem, cert_pem = signing.generate_root("test root")
    (tmp_path / "root-key.pem").write_text(key_pem)
    (tmp_path / "root-cert.pem").write_text(cert_pem)
    trust = ["--trust", str(tmp_path / "root-cert.pem")]

    # Who calls whom: a subagent accepts its director, a director the controller, the controller JOC.
    callers = {"east-sub": ["east"], "west-sub": ["west"], "east": ["controller"], "west": ["controller"]}
    callers["controller"] = ["joc"]

    def start(kind: str, module: str, name: str, *args: str) -> str:
        d = tmp_path / name
        args = ("--listen", "127.0.0.1:0", "--data-dir", str(d), *args)
        started.append(launch(kind, module, [*args, *certificates.args(name, callers.get(name, []))], d))
        return started[-1].address

    try:
        directors = {}
        for agent in ("east", "west"):
            sub = start("subagent", "subagent_svc", f"{agent}-sub", "--id", f"{agent}-sub", *trust)
            directors[agent] = start(
                "director",
                "director_svc",
                agent,
                "--agent-name",
                agent,
                "--subagent",
                f"{agent}-sub={sub}",
                *trust,
            )
        agents = [f"--agent={a}={d}" for a, d in directors.items()]
        controller = start("controller", "controller_svc", "controller", *agents, *trust)
        signing_args = [
            "--signing-key",
            str(tmp_path / "root-key.pem"),
            "--signing-cert",
            str(tmp_path / "root-cert.pem"),
        ]
        yield start("joc", "joc_svc", "joc", "--controller", f"controller={controller}", *signing_args)
    finally:
        for launched in reversed(started):
            launched.stop()


async def test_an_order_moves_between_two_agents(two_agents: str, certificates: Certificates) -> None:
    channel = certificates.channel(two_agents)
    joc = Joc.connect(channel)
    await joc.deploy_workflow("/across", {
        "instructions": [{"execute": {"jobName": "extract"}}, {"execute": {"jobName": "load"}},
                         {"execute": {"jobName": "report"}}],
        "jobs": {"extract": shell_job("echo extracted", agent="east"),
                 "load": shell_job("echo loaded", agent="west"),
                 "report": shell_job("echo reported", agent="east")},
    })  # fmt: skip
    added = await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/across"))
    order = await joc.wait_until_ended(added.order_id)
    assert order.state == S.ORDER_STATE_FINISHED
    detail = await joc.orders.GetOrder(joc_pb2.GetOrderRequest(order_id=added.order_id))
    where = [e.order_processing_started.processing.subagent_id for e in detail.events
             if e.WhichOneof("kind") == "order_processing_started"]  # fmt: skip
    assert where == ["east-sub", "west-sub", "east-sub"]
    hand_overs = [
        e.order_attachable.agent for e in detail.events if e.WhichOneof("kind") == "order_attachable"
    ]
    assert hand_overs == ["east", "west", "east"]
    await channel.close()


async def test_twenty_orders_contend_for_a_lock_of_limit_two(topology: Topology, joc: Joc) -> None:
    await joc.inventory.PutObject(
        joc_pb2.PutObjectRequest(path="/pool", type=items_pb2.ITEM_TYPE_LOCK, json=json.dumps({"limit": 2}))
    )
    workflow = {
        "instructions": [{"lock": {"lockPath": "/pool", "count": 1, "block": {"instructions": [
            {"execute": {"jobName": "hold"}}]}}}],
        "jobs": {"hold": {**shell_job("sleep 0.1"), "processLimit": 20}},
    }  # fmt: skip
    await joc.inventory.PutObject(
        joc_pb2.PutObjectRequest(
            path="/contended", type=items_pb2.ITEM_TYPE_WORKFLOW, json=json.dumps(workflow)
        )
    )
    response = await joc.deployment.Deploy(joc_pb2.DeployRequest(paths=["/pool", "/contended"]))
    assert {d.status for d in response.deployments} == {joc_pb2.DEPLOYMENT_STATUS_DEPLOYED}, response
    added = await asyncio.gather(
        *(joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/contended")) for _ in range(20))
    )
    ended = await asyncio.gather(*(joc.wait_until_ended(a.order_id, timeout=90) for a in added))
    assert {o.state for o in ended} == {S.ORDER_STATE_FINISHED}
    # The journal's events, as JOC received them, in the controller's order.
    events: list[events_pb2.Event] = []
    for a in added:
        events += (await joc.orders.GetOrder(joc_pb2.GetOrderRequest(order_id=a.order_id))).events
    events.sort(key=lambda e: e.id)
    holders: set[str] = set()
    most = 0
    for e in events:
        kind = e.WhichOneof("kind")
        if kind == "order_lock_acquired":
            holders.add(e.order_id)
        elif kind == "order_lock_released":
            holders.remove(e.order_id)
        most = max(most, len(holders))
    assert most == 2, "never more than the limit, and the limit was reached"
    assert sum(e.WhichOneof("kind") == "order_lock_queued" for e in events) >= 10
