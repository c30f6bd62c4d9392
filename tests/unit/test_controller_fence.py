"""The controller fences stale JOC instances out by their lease epoch (core.Fence), and the gRPC
edge reads the epoch from the call (rpc.epoch_of) and the refusal's reason (rpc.error_reason)."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator

import grpc
import pytest

from controller_svc import core as c
from controller_svc.core import ControllerCore, ControllerState
from gen.ostinato.common.v1 import events_pb2
from gen.ostinato.controller.v1 import controller_pb2, controller_pb2_grpc
from ostinato import rpc, tls
from ostinato.errors import FailedPrecondition, StaleEpoch
from ostinato.journal import snapshot
from ostinato.workflow.events import INTERNAL_KINDS

T0 = 1_700_000_000_000


def kinds(events: list[events_pb2.Event]) -> list[str]:
    return [str(e.WhichOneof("kind")) for e in events]


@pytest.fixture
def controller() -> ControllerCore:
    return ControllerCore(ControllerState(), frozenset({"agent-1"}))


def test_a_call_without_an_epoch_is_not_fenced(controller: ControllerCore) -> None:
    assert controller.handle(c.Fence(0), T0) == []
    controller.handle(c.Fence(3), T0)
    # Tools and tests that talk to the controller directly carry none, after a JOC did too.
    assert controller.handle(c.Fence(0), T0) == []
    assert controller.state.joc_epoch == 3


def test_a_newer_epoch_is_journaled_once(controller: ControllerCore) -> None:
    events = controller.handle(c.Fence(2), T0)
    assert kinds(events) == ["joc_epoch_raised"]
    assert events[0].joc_epoch_raised.epoch == 2 and events[0].id == 1 and events[0].order_id == ""
    assert controller.state.joc_epoch == 2
    assert controller.handle(c.Fence(2), T0) == []  # the same JOC again: nothing new
    assert kinds(controller.handle(c.Fence(5), T0)) == ["joc_epoch_raised"]
    assert controller.state.joc_epoch == 5 and controller.state.last_event_id == 2


def test_an_older_epoch_is_refused_before_anything_is_journaled(controller: ControllerCore) -> None:
    controller.handle(c.Fence(2), T0)
    with pytest.raises(StaleEpoch) as info:
        controller.handle(c.Fence(1), T0)
    assert str(info.value) == "JOC epoch 1 is stale: epoch 2 took over"
    assert isinstance(info.value, FailedPrecondition) and info.value.field == ""
    assert controller.state.joc_epoch == 2 and controller.state.last_event_id == 1


def test_the_epoch_event_is_bookkeeping_never_served_to_watchers(controller: ControllerCore) -> None:
    assert "joc_epoch_raised" in INTERNAL_KINDS
    controller.handle(c.Fence(2), T0)
    assert controller.state.log.after(0, controller.state.last_event_id) == []


def test_the_epoch_survives_replay_and_snapshot(controller: ControllerCore) -> None:
    controller.handle(c.Fence(2), T0)
    controller.handle(c.Fence(7), T0)
    replayed = ControllerState()
    for e in controller.state.log.events:  # bookkeeping too, as a follower node applies them
        replayed.apply(copy.deepcopy(e))
    assert replayed.joc_epoch == 7
    restored = snapshot.loads(snapshot.dumps(controller.state), ControllerState)
    assert restored.joc_epoch == 7
    # A node restored from the snapshot refuses what the node before it refused.
    again = ControllerCore(restored, frozenset({"agent-1"}))
    with pytest.raises(StaleEpoch):
        again.handle(c.Fence(6), T0)
    # A snapshot from before epochs existed restores as "none seen yet".
    data = snapshot.encode(ControllerState())
    data["attributes"]["$d"] = [kv for kv in data["attributes"]["$d"] if kv[0] != "joc_epoch"]
    assert snapshot.decode(data, ControllerState).joc_epoch == 0


# ---- the gRPC edge


class Servicer(controller_pb2_grpc.ControllerServiceServicer):
    """Answers GetOverview with the epoch the call carries, refusing it below 2."""

    async def GetOverview(
        self, request: controller_pb2.GetOverviewRequest, context: grpc.aio.ServicerContext
    ) -> controller_pb2.GetOverviewResponse:
        epoch = rpc.epoch_of(context)
        if 0 < epoch < 2:
            raise StaleEpoch(f"JOC epoch {epoch} is stale: epoch 2 took over")
        return controller_pb2.GetOverviewResponse(joc_epoch=epoch)


@pytest.fixture
async def stub() -> AsyncIterator[controller_pb2_grpc.ControllerServiceStub]:
    server = await rpc.start_server(
        "127.0.0.1:0",
        [
            (
                controller_pb2_grpc.add_ControllerServiceServicer_to_server,
                Servicer(),  # type: ignore[abstract]
                rpc.service_name(controller_pb2, "ControllerService"),
            )
        ],
        security=tls.INSECURE,
    )
    async with rpc.channel(server.address, tls.INSECURE) as channel:
        yield controller_pb2_grpc.ControllerServiceStub(channel)
    await server.stop(0)


async def overview(stub: controller_pb2_grpc.ControllerServiceStub, *epoch: str) -> int:
    metadata = [(rpc.JOC_EPOCH_KEY, e) for e in epoch]
    answer = await stub.GetOverview(controller_pb2.GetOverviewRequest(), metadata=metadata, timeout=10)
    return int(answer.joc_epoch)


async def test_the_epoch_travels_as_request_metadata(stub: controller_pb2_grpc.ControllerServiceStub) -> None:
    assert await overview(stub) == 0
    assert await overview(stub, "7") == 7
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await overview(stub, "1")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rpc.error_reason(info.value) == "STALE_EPOCH"
    assert info.value.details() == "JOC epoch 1 is stale: epoch 2 took over"


@pytest.mark.parametrize("bad", ["-1", "two", "1.5", "", " 3", "9223372036854775808", "+3"])
async def test_an_epoch_that_is_no_int64_is_an_invalid_argument(
    stub: controller_pb2_grpc.ControllerServiceStub, bad: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await overview(stub, bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rpc.error_reason(info.value) == "INVALID_ARGUMENT"
    assert (info.value.details() or "").startswith(f"{rpc.JOC_EPOCH_KEY}: ")


async def test_an_error_without_details_has_no_reason(
    stub: controller_pb2_grpc.ControllerServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetSnapshot(controller_pb2.GetSnapshotRequest(), timeout=10)  # not implemented here
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert rpc.error_reason(info.value) == ""
