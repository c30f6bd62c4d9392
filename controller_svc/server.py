"""The controller's shell: journal, gRPC servicer, agent drivers and the timer for fresh orders."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from controller_svc import convert
from controller_svc.agents import AgentDriver
from controller_svc.core import (
    AddOrders,
    CommandOrder,
    ControllerCore,
    ControllerState,
    Deploy,
    Fence,
    ReleaseEvents,
    Stimulus,
    Tick,
)
from gen.ostinato.common.v1 import cluster_pb2, commands_pb2, events_pb2
from gen.ostinato.controller.v1 import controller_pb2, controller_pb2_grpc
from ostinato import limits, rpc, signing, tracing
from ostinato.cluster.config import NodeConfig
from ostinato.cluster.node import JournaledNode
from ostinato.cluster.serve import serve_node
from ostinato.errors import FailedPrecondition, InvalidArgument, NotFound
from ostinato.journal.shell import now_ms

log = logging.getLogger(__name__)

# Orders in one response of StreamSnapshot, at most (and at most limits.BATCH_BYTES of them).
SNAPSHOT_PART_ORDERS = 10_000


@dataclass
class ControllerConfig:
    node: NodeConfig
    controller_id: str = "controller"
    agents: dict[str, list[str]] = field(default_factory=dict)  # name -> its director nodes' addresses
    # Verifies deployed items' signatures (--trust). None: not verified, for tests that build a
    # config in code only; the command line always gives one (trusting nothing without --trust).


class Controller(JournaledNode):
    def __init__(self, config: ControllerConfig) -> None:
        super().__init__(config.node)
        self.config = config
        self.controller_id = self.cluster_name = config.controller_id
        self.drivers: dict[str, AgentDriver] = {}

    def activate(self, state: ControllerState) -> None:
        self.core = ControllerCore(state, frozenset(self.config.agents))
        log.info("controller %s: %d orders", self.controller_id, len(state.orders))
        for name, addresses in self.config.agents.items():
            driver = AgentDriver(self, name, addresses)
            self.drivers[name] = driver
            self.spawn(driver.run(), f"agent-{name}")
        self.spawn(self.wake_loop(self.core.next_wake_ms, self._on_wake), "timer")

    def deactivate(self) -> None:
        self.drivers = {}

    @property
    def committed_id(self) -> int:
        return self.shell.committed_id

    async def output_room(self) -> None:
        await self.shell.output_room()

    async def handle(self, stimulus: Stimulus) -> list[events_pb2.Event]:
        """The core decides on the stimulus; returns its events once they are committed."""
        return await self.shell.command(lambda now: self.core.handle(stimulus, now))

    def driver(self, agent: str) -> AgentDriver:
        if agent not in self.drivers:
            raise NotFound(f"unknown agent {agent!r} (agents: {sorted(self.drivers)})", field="agent")
        return self.drivers[agent]

    def on_commit(self, events: list[events_pb2.Event]) -> None:
        for driver in self.drivers.values():
            driver.wake()

    async def _on_wake(self, due: int | None) -> None:
        """Starts fresh orders whose first instruction is the controller's when their time comes."""
        if due is not None and due <= now_ms():
            await self.handle(Tick())


Decide = Callable[[int], list[events_pb2.Event]]


class ControllerServicer(controller_pb2_grpc.ControllerServiceServicer):
    def __init__(self, controller: Controller) -> None:
        self.c = controller

    async def fenced(self, context: grpc.aio.ServicerContext, decide: Decide) -> None:
        """Runs a JOC command's decision behind the fence of the call's JOC epoch, in one journal
        step: a stale epoch is refused (StaleEpoch) before the command is decided, and a newer one
        is journaled in the same batch as the command's events, so no command of a deposed JOC
        can slip in between. A command refused after a newer epoch was noted still journals the
        epoch (the working state holds it already), then raises its refusal."""
        epoch = rpc.epoch_of(context)
        refused: list[Exception] = []

        def behind_fence(now: int) -> list[events_pb2.Event]:
            events = self.c.core.handle(Fence(epoch), now)
            try:
                return events + decide(now)
            except Exception as e:
                if not events:
                    raise
                refused.append(e)
                return events

        await self.c.shell.command(behind_fence)
        if refused:
            raise refused[0]

    async def DeployItems(
        self, request: controller_pb2.DeployItemsRequest, context: grpc.aio.ServicerContext
    ) -> controller_pb2.DeployItemsResponse:
        items = list(request.items)
        for i, item in enumerate(items):
            limits.check_signed_item(item, f"items[{i}]")
        # Signatures first, over the exact JSON bytes: the core parses only verified items.
        signing.verify_items(self.c.config.node.trust, items)
        stimulus = Deploy(tuple(items))
        await self.fenced(context, lambda now: self.c.core.handle(stimulus, now))
        return controller_pb2.DeployItemsResponse(event_id=self.c.shell.committed_id)

    async def AddOrders(
        self, request: controller_pb2.AddOrdersRequest, context: grpc.aio.ServicerContext
    ) -> controller_pb2.AddOrdersResponse:
        for i, order in enumerate(request.orders):
            _check_new_order(order, f"orders[{i}]")
        stimulus = AddOrders(tuple(convert.new_order(o) for o in request.orders))
        tracing.annotate(
            order_id=[o.id for o in request.orders],
            workflow=sorted({o.workflow_path for o in request.orders}),
        )
        result: list[controller_pb2.AddedOrder] = []

        def decide(now: int) -> list[events_pb2.Event]:
            events = self.c.core.handle(stimulus, now)
            result.extend(convert.added_order(a) for a in self.c.core.added(stimulus, events))
            return events

        await self.fenced(context, decide)
        return controller_pb2.AddOrdersResponse(orders=result)

    async def CommandOrders(
        self, request: controller_pb2.CommandOrdersRequest, context: grpc.aio.ServicerContext
    ) -> controller_pb2.CommandOrdersResponse:
        for i, command in enumerate(request.commands):
            limits.check_order_command(command, f"commands[{i}]")
        results: list[commands_pb2.OrderCommandResult] = []

        def decide(now: int) -> list[events_pb2.Event]:
            # One at a time, so each is judged on the state the ones before it left.
            events: list[events_pb2.Event] = []
            for command in request.commands:
                try:
                    events += self.c.core.handle(CommandOrder(command), now)
                    results.append(commands_pb2.OrderCommandResult(order_id=command.order_id))
                except InvalidArgument as e:
                    results.append(commands_pb2.OrderCommandResult(order_id=command.order_id, error=str(e)))
            return events

        await self.fenced(context, decide)
        return controller_pb2.CommandOrdersResponse(results=results)

    async def TransferOrders(
        self, request: controller_pb2.TransferOrdersRequest, context: grpc.aio.ServicerContext
    ) -> controller_pb2.TransferOrdersResponse:
        stimulus = convert.transfer_orders(request)
        response = controller_pb2.TransferOrdersResponse()

        def decide(now: int) -> list[events_pb2.Event]:
            events = self.c.core.handle(stimulus, now)
            version, order_ids = self.c.core.transferred(stimulus, events)
            response.workflow_version_id = version
            response.order_ids.extend(order_ids)
            return events

        await self.fenced(context, decide)
        return response

    async def WatchEvents(
        self, request: controller_pb2.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[controller_pb2.WatchEventsResponse]:
        async for events in self.c.shell.watch(request.after, request.heartbeat_seconds):
            yield controller_pb2.WatchEventsResponse(events=events)

    async def ReleaseEvents(
        self, request: controller_pb2.ReleaseEventsRequest, context: grpc.aio.ServicerContext
    ) -> controller_pb2.ReleaseEventsResponse:
        stimulus = ReleaseEvents(request.until_id)
        await self.fenced(context, lambda now: self.c.core.handle(stimulus, now))
        return controller_pb2.ReleaseEventsResponse()

    async def GetSnapshot(
        self, request: controller_pb2.GetSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> controller_pb2.GetSnapshotResponse:
        # The committed state, not the working one: it may hold events that are not yet safe.
        response = self.c.journal.read_committed(
            lambda state: controller_pb2.GetSnapshotResponse(
                event_id=state.last_event_id, orders=list(state.orders.values())
            )
        )
        if (size := response.ByteSize()) > limits.MESSAGE_BYTES:
            raise FailedPrecondition(
                f"the orders take {limits.size_text(size)}, more than one message may: use StreamSnapshot"
            )
        return response

    async def StreamSnapshot(
        self, request: controller_pb2.StreamSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[controller_pb2.StreamSnapshotResponse]:
        # Copied in one read of the committed state, so that every part is as of the same event.
        event_id, parts = self.c.journal.read_committed(
            lambda state: (
                state.last_event_id,
                [
                    controller_pb2.StreamSnapshotResponse(event_id=state.last_event_id, orders=part)
                    for part in limits.batches(list(state.orders.values()), SNAPSHOT_PART_ORDERS)
                ],
            )
        )
        for part in parts or [controller_pb2.StreamSnapshotResponse(event_id=event_id)]:
            yield part

    async def GetAgentClusterStatus(
        self, request: controller_pb2.GetAgentClusterStatusRequest, context: grpc.aio.ServicerContext
    ) -> controller_pb2.GetAgentClusterStatusResponse:
        driver = self.c.driver(request.agent)
        answers: tuple[Any, Any] = await asyncio.gather(
            driver.call_cluster("GetClusterStatus", cluster_pb2.GetClusterStatusRequest(), timeout=5),
            driver.overview(timeout=5),
            return_exceptions=True,
        )
        status, overview = answers
        if isinstance(status, BaseException):
            raise status
        response = controller_pb2.GetAgentClusterStatusResponse(status=status.status)
        if isinstance(overview, BaseException):
            response.subagents_error = str(overview)
        else:
            response.subagents.extend(
                cluster_pb2.SubagentStatus(
                    id=s.id, address=s.address, connected=s.connected, running_processes=s.running_processes
                )
                for s in overview.subagents
            )
        return response

    async def AgentSwitchover(
        self, request: controller_pb2.AgentSwitchoverRequest, context: grpc.aio.ServicerContext
    ) -> controller_pb2.AgentSwitchoverResponse:
        response = await self.c.driver(request.agent).call_cluster(
            "Switchover", cluster_pb2.SwitchoverRequest(to_node=request.to_node), timeout=15
        )
        return controller_pb2.AgentSwitchoverResponse(
            from_node=response.from_node, to_node=response.to_node, term=response.term
        )

    async def GetOverview(
        self, request: controller_pb2.GetOverviewRequest, context: grpc.aio.ServicerContext
    ) -> controller_pb2.GetOverviewResponse:
        state = self.c.core.state
        return controller_pb2.GetOverviewResponse(
            controller_id=self.c.controller_id,
            last_event_id=self.c.shell.committed_id,
            released_until_id=state.log.released_until,
            order_count=len(state.orders),
            term=self.c.term,
            joc_epoch=state.joc_epoch,
            agents=[
                controller_pb2.AgentOverview(
                    name=d.name,
                    address=d.address,
                    connected=d.connected,
                    observed_event_id=state.agent_observed.get(d.name, 0),
                )
                for d in self.c.drivers.values()
            ],
        )


def _check_new_order(order: controller_pb2.NewOrder, field: str) -> None:
    """What the core does not judge: the sizes of what the order would carry into the journal."""
    limits.check_name(order.id, f"{field}.id", "an order id")
    limits.check_path_length(order.workflow_path, f"{field}.workflow_path")
    limits.check_name(order.workflow_version_id, f"{field}.workflow_version_id", "a version id")
    limits.check_name(order.trace_parent, f"{field}.trace_parent", "a trace parent")
    limits.check_arguments(order.arguments, f"{field}.arguments")
    if order.HasField("scheduled_for"):
        limits.check_timestamp(order.scheduled_for, f"{field}.scheduled_for")


async def serve(config: ControllerConfig, stop: asyncio.Event) -> None:
    controller = Controller(config)
    registration = (
        controller_pb2_grpc.add_ControllerServiceServicer_to_server,
        ControllerServicer(controller),
        rpc.service_name(controller_pb2, "ControllerService"),
    )
    await serve_node("controller", controller, ControllerState, registration, stop)
