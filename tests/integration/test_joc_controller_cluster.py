"""JOC and controller clusters, with real processes: JOC resynchronises from the controller's snapshot
when the controller released events JOC never stored (a new JOC, or JOC's database restored from an
old backup), and JOC's calls follow the controller to another node when one goes away."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from gen.ostinato.common.v1 import cluster_pb2, commands_pb2, items_pb2, order_pb2
from gen.ostinato.controller.v1 import controller_pb2, controller_pb2_grpc
from gen.ostinato.joc.v1 import joc_pb2, joc_pb2_grpc
from ostinato import rpc, signing, tls
from ostinato.launch import Launched, launch
from ostinato.topology import Topology
from tests.integration.certificates import Certificates
from tests.integration.support import Joc, eventually, shell_job

pytestmark = pytest.mark.integration

S = order_pb2.OrderState
HELLO = {"instructions": [{"execute": {"jobName": "hello"}}], "jobs": {"hello": shell_job("echo hello")}}
PROMPT = {
    "instructions": [{"prompt": {"question": "go on?"}}, {"execute": {"jobName": "hello"}}],
    "jobs": {"hello": shell_job("echo hello")},
}


def start_joc(data_dir: Path, controller: str, *args: str) -> Launched:
    return launch(
        "joc",
        "joc_svc",
        ["--listen", "127.0.0.1:0", "--data-dir", str(data_dir), "--controller", controller, *args],
        data_dir,
    )


@contextlib.asynccontextmanager
async def joc_process(
    data_dir: Path, controller: str, security: tls.Security, *args: str
) -> AsyncIterator[tuple[Launched, Joc]]:
    """JOC with its flags `args`; the test talks to it with `security`."""
    launched = await asyncio.to_thread(start_joc, data_dir, controller, *args)
    try:
        async with rpc.channel(launched.address, security) as channel:
            yield launched, Joc.connect(channel)
    finally:
        await asyncio.to_thread(launched.stop)


async def overview(topology: Topology) -> controller_pb2.GetOverviewResponse:
    async with topology.channel(topology.addresses["controller"], as_name="joc") as channel:
        stub = controller_pb2_grpc.ControllerServiceStub(channel)
        return await stub.GetOverview(controller_pb2.GetOverviewRequest(), timeout=5)


async def orders_of(joc: Joc) -> dict[str, joc_pb2.OrderSummary]:
    return {s.order.id: s for s in (await joc.orders.ListOrders(joc_pb2.ListOrdersRequest())).orders}


async def audit(joc: Joc, action: str) -> list[joc_pb2.AuditEntry]:
    stub = joc_pb2_grpc.AuditServiceStub(joc.channel)
    return list((await stub.ListAuditEntries(joc_pb2.ListAuditEntriesRequest(action=action))).entries)


async def add(joc: Joc, workflow: str, order_id: str, at: datetime | None = None) -> None:
    request = joc_pb2.AddOrderRequest(workflow_path=workflow, order_id=order_id)
    if at is not None:
        request.scheduled_for.FromDatetime(at)
    await joc.orders.AddOrder(request)


async def answer(joc: Joc, order_id: str) -> None:
    command = commands_pb2.OrderCommand(order_id=order_id, answer_prompt=commands_pb2.AnswerPrompt())
    response = await joc.orders.CommandOrders(joc_pb2.CommandOrdersRequest(commands=[command]))
    assert [r.error for r in response.results] == [""], response


async def released_past(topology: Topology, event_id: int) -> None:
    """Waits until the controller dropped the events up to `event_id` (JOC released them)."""

    async def released() -> bool:
        return (await overview(topology)).released_until_id >= event_id

    await eventually(released, what=f"the controller released event {event_id}")


async def last_event_id(joc: Joc, order_id: str) -> int:
    detail = await joc.orders.GetOrder(joc_pb2.GetOrderRequest(order_id=order_id))
    return max(e.id for e in detail.events)


async def assert_runs_once(joc: Joc, order_id: str) -> None:
    """A new order flows through JOC: finished, each of its events stored once, from OrderAdded."""
    await add(joc, "/hello", order_id)
    order = await joc.wait_until_ended(order_id, timeout=15)
    assert order.state == S.ORDER_STATE_FINISHED
    detail = await joc.orders.GetOrder(joc_pb2.GetOrderRequest(order_id=order_id))
    ids = [e.id for e in detail.events]
    assert ids == sorted(set(ids)), ids
    kinds = [e.WhichOneof("kind") for e in detail.events]
    assert kinds[0] == "order_added" and kinds.count("order_finished") == 1, kinds
    assert detail.summary.resynced_at_event_id == 0


async def test_a_new_joc_resynchronises_from_the_controllers_snapshot(
    topology: Topology, joc: Joc, tmp_path: Path
) -> None:
    await joc.deploy_workflow("/hello", HELLO)
    await joc.deploy_workflow("/prompt", PROMPT)
    await add(joc, "/hello", "later", at=datetime.now(UTC) + timedelta(days=1))
    await add(joc, "/prompt", "asking")
    await joc.wait_for("asking", "order_prompted")
    await add(joc, "/hello", "done")
    await joc.wait_until_ended("done")
    await released_past(topology, await last_event_id(joc, "done"))
    topology.services["joc"].stop()

    controller = f"controller={topology.addresses['controller']}"
    as_joc = topology.tls_args("joc")
    async with joc_process(tmp_path / "new-joc", controller, topology.security(), *as_joc) as (launched, new):
        # It holds what the controller holds, as it stands; the order that ended before is gone.
        async def resynced() -> bool:
            return set(await orders_of(new)) == {"later", "asking"}

        await eventually(resynced, what="the new JOC lists the controller's orders")
        orders = await orders_of(new)
        assert orders["later"].order.state == S.ORDER_STATE_FRESH
        assert orders["asking"].order.state == S.ORDER_STATE_PROMPTING
        assert orders["asking"].order.prompt_question == "go on?"
        snapshot_at = orders["asking"].resynced_at_event_id
        assert snapshot_at > 0 and orders["later"].resynced_at_event_id == snapshot_at
        assert not any(s.left_unseen for s in orders.values())
        assert "resynchronised from the controller's snapshot" in launched.log_text()
        [entry] = await audit(new, "resync")
        assert entry.account == "(joc)" and f"snapshot at event {snapshot_at}" in entry.object
        assert "2 orders taken" in entry.object

        # Events after the snapshot flow in as ever: the prompted order goes on to its end ...
        await answer(new, "asking")
        order = await new.wait_until_ended("asking", timeout=15)
        assert order.state == S.ORDER_STATE_FINISHED
        detail = await new.orders.GetOrder(joc_pb2.GetOrderRequest(order_id="asking"))
        ids = [e.id for e in detail.events]
        assert ids == sorted(set(ids)) and min(ids) > snapshot_at
        # ... and a new order from its start, each event once.
        await assert_runs_once(new, "after")


async def test_joc_restored_from_an_old_backup_marks_orders_that_left_while_it_was_away(
    topology: Topology, joc: Joc, tmp_path: Path
) -> None:
    await joc.deploy_workflow("/hello", HELLO)
    await joc.deploy_workflow("/prompt", PROMPT)
    await add(joc, "/hello", "later", at=datetime.now(UTC) + timedelta(days=1))
    await add(joc, "/prompt", "asking")
    await joc.wait_for("asking", "order_prompted")
    topology.services["joc"].stop()
    backup = tmp_path / "backup"
    shutil.copytree(topology.data_dir / "joc", backup)
    await asyncio.to_thread(topology.start_service, "joc")

    # While the backup ages: the prompted order ends, another one runs and ends.
    await answer(joc, "asking")
    await joc.wait_until_ended("asking")
    await add(joc, "/hello", "unseen")
    await joc.wait_until_ended("unseen")
    await released_past(topology, await last_event_id(joc, "unseen"))
    topology.services["joc"].stop()

    (backup / "joc.address").unlink(missing_ok=True)
    controller = f"controller={topology.addresses['controller']}"
    as_joc = topology.tls_args("joc")
    async with joc_process(backup, controller, topology.security(), *as_joc) as (_, restored):

        async def resynced() -> bool:
            return (await orders_of(restored))["asking"].left_unseen

        await eventually(resynced, what="the restored JOC marks the order that left")
        orders = await orders_of(restored)
        assert set(orders) == {"later", "asking"}  # "unseen" came and went while JOC was away
        asking = orders["asking"]
        assert asking.order.state == S.ORDER_STATE_UNSPECIFIED  # how it ended is unknown
        assert asking.last_seen_state == S.ORDER_STATE_PROMPTING and asking.resynced_at_event_id > 0
        assert orders["later"].order.state == S.ORDER_STATE_FRESH and not orders["later"].left_unseen
        listed = await restored.orders.ListOrders(joc_pb2.ListOrdersRequest(state=S.ORDER_STATE_PROMPTING))
        assert list(listed.orders) == []
        [entry] = await audit(restored, "resync")
        assert "1 left the controller while JOC was away" in entry.object and "(asking)" in entry.object
        # Watching the order that left ends at once, with the order as JOC knows it.
        responses = [
            r
            async for r in restored.orders.WatchOrder(
                joc_pb2.WatchOrderRequest(order_id="asking"), timeout=10
            )
        ]
        assert responses[-1].order.state == S.ORDER_STATE_UNSPECIFIED
        await assert_runs_once(restored, "after")


# ---- JOC's calls follow the controller to another node


def start_controller(data_dir: Path, trust: Path, certificates: Certificates) -> Launched:
    args = ["--data-dir", str(data_dir), "--id", "c", "--trust", str(trust)]
    args += certificates.args(data_dir.name, peers=["joc"])
    return launch("controller", "controller_svc", args, data_dir)


async def test_joc_calls_move_to_the_next_controller_node_when_one_is_gone(
    tmp_path: Path, certificates: Certificates
) -> None:
    """Two single-node controllers stand in for a cluster's nodes (each active): JOC talks to the
    first; when it is killed, JOC's next calls go to the second."""
    key, cert = tmp_path / "root-key.pem", tmp_path / "root-certificate.pem"
    for path, pem in zip((key, cert), signing.generate_root("test root"), strict=True):
        path.write_text(pem)
    first, second = await asyncio.gather(
        asyncio.to_thread(start_controller, tmp_path / "c1", cert, certificates),
        asyncio.to_thread(start_controller, tmp_path / "c2", cert, certificates),
    )
    try:
        controller = f"c={first.address},{second.address}"
        signed_by = ("--signing-key", str(key), "--signing-cert", str(cert), *certificates.args("joc"))
        async with joc_process(tmp_path / "joc", controller, certificates.security("cli"), *signed_by) as (
            launched,
            joc,
        ):
            # A workflow that needs no agent: the controller finishes its orders by itself.
            workflow = '{"instructions": [{"finish": {}}]}'
            await joc.inventory.PutObject(
                joc_pb2.PutObjectRequest(path="/end", type=items_pb2.ITEM_TYPE_WORKFLOW, json=workflow)
            )
            deployed = await joc.deployment.Deploy(joc_pb2.DeployRequest(paths=["/end"]))
            assert [d.status for d in deployed.deployments] == [joc_pb2.DEPLOYMENT_STATUS_DEPLOYED]
            added = await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/end", order_id="one"))
            assert added.controller_id == "c"
            cluster = joc_pb2_grpc.ClusterServiceStub(joc.channel)
            status = await cluster.GetClusterStatus(joc_pb2.GetClusterStatusRequest())
            assert [n.address for n in status.controller.nodes] == [first.address]

            first.kill()
            # The second node never had the workflow: its NOT_FOUND shows JOC reached it.
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/end", order_id="two"))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND and "/end" in (info.value.details() or "")
            # Redeployment and orders go there now.
            redeployed = await joc.deployment.Redeploy(joc_pb2.RedeployRequest(folder="/"))
            assert [d.status for d in redeployed.deployments] == [joc_pb2.DEPLOYMENT_STATUS_DEPLOYED]
            added = await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/end", order_id="two"))
            assert added.workflow_version_id == redeployed.deployments[0].version_id
            status = await cluster.GetClusterStatus(joc_pb2.GetClusterStatusRequest())
            [node] = status.controller.nodes
            assert node.address == second.address and node.role == cluster_pb2.NODE_ROLE_ACTIVE
            assert "following node " + second.address in launched.log_text()

            # With both gone JOC says so at once, naming the nodes.
            second.kill()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await joc.orders.AddOrder(
                    joc_pb2.AddOrderRequest(workflow_path="/end", order_id="three"), timeout=10
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"nodes {first.address}, {second.address}" in (info.value.details() or "")
            status = await cluster.GetClusterStatus(joc_pb2.GetClusterStatusRequest())
            assert {n.address for n in status.controller.nodes} == {first.address, second.address}
            assert {n.role for n in status.controller.nodes} == {cluster_pb2.NODE_ROLE_UNREACHABLE}
            assert status.agents_error
    finally:
        first.kill()
        second.kill()
