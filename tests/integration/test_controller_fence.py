"""A real controller fences a deposed JOC out by its lease epoch (request metadata
ostinato-joc-epoch): commands from an older epoch than the newest seen are refused with
FAILED_PRECONDITION, reason STALE_EPOCH, and the newest epoch survives a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from gen.ostinato.common.v1 import items_pb2
from gen.ostinato.controller.v1 import controller_pb2, controller_pb2_grpc
from ostinato import rpc, signing
from ostinato.launch import Launched, launch
from ostinato.workflow.model import canonical_json, parse_workflow
from tests.integration.certificates import Certificates

pytestmark = pytest.mark.integration


def workflow() -> str:
    """A workflow that needs no agent: the controller finishes its orders by itself."""
    wf = parse_workflow('{"instructions": [{"finish": {}}]}', "/end")
    wf.version_id = "v1"
    return canonical_json(wf)


def start_controller(data_dir: Path, trust: Path, certificates: Certificates) -> Launched:
    args = ["--data-dir", str(data_dir), "--id", "c", "--trust", str(trust)]
    args += certificates.args("controller", peers=["joc"])
    return launch("controller", "controller_svc", args, data_dir)


class Caller:
    """Calls the controller as JOC does, with or without an epoch."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = controller_pb2_grpc.ControllerServiceStub(channel)

    @staticmethod
    def metadata(epoch: int | None) -> list[tuple[str, str]]:
        return [] if epoch is None else [(rpc.JOC_EPOCH_KEY, str(epoch))]

    async def add(self, order_id: str, epoch: int | None, workflow: str = "/end") -> None:
        order = controller_pb2.NewOrder(id=order_id, workflow_path=workflow)
        request = controller_pb2.AddOrdersRequest(orders=[order])
        await self.stub.AddOrders(request, metadata=self.metadata(epoch), timeout=10)

    async def refusal(self, order_id: str, epoch: int | None, workflow: str = "/end") -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await self.add(order_id, epoch, workflow)
        return info.value

    async def overview(self) -> controller_pb2.GetOverviewResponse:
        return await self.stub.GetOverview(controller_pb2.GetOverviewRequest(), timeout=10)

    async def added(self, order_id: str) -> bool:
        """Whether the controller knows the order id: AddOrders of an id held or ended lately (within
        ENDED_ORDER_RETENTION_MS) says it existed. Adds it otherwise."""
        order = controller_pb2.NewOrder(id=order_id, workflow_path="/end")
        answer = await self.stub.AddOrders(controller_pb2.AddOrdersRequest(orders=[order]), timeout=10)
        return bool(answer.orders[0].existed)


async def test_a_stale_joc_epoch_is_refused_and_the_newest_survives_a_restart(
    tmp_path: Path, certificates: Certificates
) -> None:
    key, cert = tmp_path / "root-key.pem", tmp_path / "root-certificate.pem"
    for path, pem in zip((key, cert), signing.generate_root("test root"), strict=True):
        path.write_text(pem)
    signer = signing.Signer(key.read_text(), cert.read_text())
    data_dir = tmp_path / "controller"
    controller = await asyncio.to_thread(start_controller, data_dir, cert, certificates)
    try:
        async with certificates.channel(controller.address, as_name="joc") as channel:
            c = Caller(channel)
            item = items_pb2.SignedItem(
                type=items_pb2.ITEM_TYPE_WORKFLOW, path="/end", version_id="v1", json=workflow()
            )
            deploy = controller_pb2.DeployItemsRequest(items=[signer.sign_item(item)])
            await c.stub.DeployItems(deploy, metadata=c.metadata(1), timeout=10)
            assert (await c.overview()).joc_epoch == 1

            await c.add("by-2", epoch=2)
            assert (await c.overview()).joc_epoch == 2

            stale = await c.refusal("by-1", epoch=1)
            assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert rpc.error_reason(stale) == "STALE_EPOCH"
            assert stale.details() == "JOC epoch 1 is stale: epoch 2 took over"
            # Every JOC command is fenced, not AddOrders alone.
            release = controller_pb2.ReleaseEventsRequest(until_id=1)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await c.stub.ReleaseEvents(release, metadata=c.metadata(1), timeout=10)
            assert rpc.error_reason(info.value) == "STALE_EPOCH"

            await c.add("untagged", epoch=None)  # tools and tests carry no epoch
            overview = await c.overview()
            assert overview.joc_epoch == 2

            # A newer JOC whose first command is refused for what it asks still fenced the old one.
            unknown = await c.refusal("nowhere", epoch=3, workflow="/missing")
            assert unknown.code() == grpc.StatusCode.NOT_FOUND
            assert rpc.error_reason(await c.refusal("by-2-again", epoch=2)) == "STALE_EPOCH"
            assert (await c.overview()).joc_epoch == 3

            assert await c.added("by-2") and await c.added("untagged")
            assert not await c.added("by-1") and not await c.added("by-2-again")
    finally:
        controller.kill()

    # The epoch was journaled: a controller started again on the same data refuses as before.
    controller = await asyncio.to_thread(start_controller, data_dir, cert, certificates)
    try:
        async with certificates.channel(controller.address, as_name="joc") as channel:
            c = Caller(channel)
            assert (await c.overview()).joc_epoch == 3
            assert rpc.error_reason(await c.refusal("late", epoch=2)) == "STALE_EPOCH"
            await c.add("by-3", epoch=3)
    finally:
        controller.stop()
