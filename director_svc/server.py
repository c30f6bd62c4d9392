"""The director's shell: journal, gRPC servicer for the controller, subagent drivers, timer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from director_svc.core import (
    AttachItems,
    AttachOrders,
    CommandOrders,
    DetachOrders,
    DirectorCore,
    DirectorState,
    ReleaseEvents,
    Stimulus,
    Tick,
)
from director_svc.subagents import SubagentDriver
from gen.ostinato.common.v1 import commands_pb2, events_pb2
from gen.ostinato.director.v1 import director_pb2, director_pb2_grpc
from ostinato import rpc, signing, tls
from ostinato.cluster.config import NodeConfig
from ostinato.cluster.node import JournaledNode
from ostinato.cluster.serve import serve_node
from ostinato.errors import FailedPrecondition, OstinatoError
from ostinato.journal.shell import now_ms
from subagent_svc import server as subagent_server

log = logging.getLogger(__name__)

# The built-in subagent kills its jobs when its own director has not been in session this long.
BUILTIN_DIRECTOR_TIMEOUT_S = 10.0


@dataclass
class DirectorConfig:
    node: NodeConfig
    agent: str = "agent-1"
    subagents: dict[str, str] = field(default_factory=dict)  # id -> address, in priority order
    # Heartbeats to each subagent at this interval; a subagent silent for 4 of them is lost.
    subagent_heartbeat_s: float = 1.0
    # Id of a subagent built into this director process (None: the director only orchestrates).
    builtin_subagent: str | None = None
    # Verifies attached items' signatures (--trust). None: not verified, for tests that build a
    # config in code only; the command line always gives one (trusting nothing without --trust).


class Director(JournaledNode):
    def __init__(self, config: DirectorConfig) -> None:
        super().__init__(config.node)
        self.config = config
        self.agent = self.cluster_name = config.agent
        self.director_id = f"{config.agent}@{config.node.member.raft}"
        self.drivers: dict[str, SubagentDriver] = {}
        self.highest_controller_term = 0

    def activate(self, state: DirectorState) -> None:
        self.core = DirectorCore(state, self.agent, self.config.subagents)
        log.info("director of %s: %d orders", self.agent, len(state.orders))
        for subagent_id, address in self.config.subagents.items():
            driver = SubagentDriver(self, subagent_id, address, self.config.subagent_heartbeat_s)
            self.drivers[subagent_id] = driver
            self.spawn(driver.run(), f"subagent-{subagent_id}")
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

    def check_sender(self, sender: director_pb2.Sender) -> None:
        """Fencing: a controller node with an older term than one already heard is deposed."""
        if sender.term < self.highest_controller_term:
            raise FailedPrecondition(
                f"stale controller term {sender.term} (current {self.highest_controller_term})",
                field="sender.term",
            )
        self.highest_controller_term = sender.term

    def on_commit(self, events: list[Any]) -> None:
        for driver in self.drivers.values():
            driver.wake()

    async def _on_wake(self, due: int | None) -> None:
        """Starts orders whose time came (scheduled, sleeping, retry delays)."""
        if due is not None and due <= now_ms():
            await self.handle(Tick())


class DirectorServicer(director_pb2_grpc.DirectorServiceServicer):
    def __init__(self, director: Director) -> None:
        self.d = director

    async def AttachItems(
        self, request: director_pb2.AttachItemsRequest, context: grpc.aio.ServicerContext
    ) -> director_pb2.AttachItemsResponse:
        self.d.check_sender(request.sender)
        items = list(request.items)
        # Signatures first, over the exact JSON bytes: the core parses only verified items.
        signing.verify_items(self.d.config.node.trust, items)
        await self.d.handle(AttachItems(tuple(items)))
        return director_pb2.AttachItemsResponse()

    async def AttachOrders(
        self, request: director_pb2.AttachOrdersRequest, context: grpc.aio.ServicerContext
    ) -> director_pb2.AttachOrdersResponse:
        self.d.check_sender(request.sender)
        await self.d.handle(AttachOrders(tuple(request.orders)))
        return director_pb2.AttachOrdersResponse()

    async def DetachOrders(
        self, request: director_pb2.DetachOrdersRequest, context: grpc.aio.ServicerContext
    ) -> director_pb2.DetachOrdersResponse:
        self.d.check_sender(request.sender)
        await self.d.handle(DetachOrders(tuple(request.order_ids)))
        return director_pb2.DetachOrdersResponse()

    async def CommandOrders(
        self, request: director_pb2.CommandOrdersRequest, context: grpc.aio.ServicerContext
    ) -> director_pb2.CommandOrdersResponse:
        self.d.check_sender(request.sender)
        stimulus = CommandOrders(tuple(request.commands))
        results: list[commands_pb2.OrderCommandResult] = []

        def decide(now: int) -> list[events_pb2.Event]:
            results.extend(self.d.core.command_results(stimulus))
            return self.d.core.handle(stimulus, now)

        await self.d.shell.command(decide)
        return director_pb2.CommandOrdersResponse(results=results)

    async def Batch(
        self, request: director_pb2.BatchRequest, context: grpc.aio.ServicerContext
    ) -> director_pb2.BatchResponse:
        self.d.check_sender(request.sender)
        items = list(request.items)
        signing.verify_items(self.d.config.node.trust, items)
        stimuli: list[Stimulus] = []
        if items:
            stimuli.append(AttachItems(tuple(items)))
        if request.attach_orders:
            stimuli.append(AttachOrders(tuple(request.attach_orders)))
        commands = CommandOrders(tuple(request.commands))
        if request.commands:
            stimuli.append(commands)
        if request.detach_order_ids:
            stimuli.append(DetachOrders(tuple(request.detach_order_ids)))
        results: list[commands_pb2.OrderCommandResult] = []
        refused: list[OstinatoError] = []

        def decide(now: int) -> list[events_pb2.Event]:
            # Each part decides whole or refuses before deciding anything: what the parts before
            # a refused one decided is journaled, and the refusal is answered after that.
            events: list[events_pb2.Event] = []
            for stimulus in stimuli:
                if stimulus is commands:
                    results.extend(self.d.core.command_results(commands))
                try:
                    events += self.d.core.handle(stimulus, now)
                except OstinatoError as e:
                    refused.append(e)
                    break
            return events

        await self.d.shell.command(decide)
        if refused:
            raise refused[0]
        return director_pb2.BatchResponse(results=results)

    async def WatchEvents(
        self, request: director_pb2.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[director_pb2.WatchEventsResponse]:
        self.d.check_sender(request.sender)
        async for events in self.d.shell.watch(request.after, request.heartbeat_seconds):
            yield director_pb2.WatchEventsResponse(events=events)

    async def ReleaseEvents(
        self, request: director_pb2.ReleaseEventsRequest, context: grpc.aio.ServicerContext
    ) -> director_pb2.ReleaseEventsResponse:
        self.d.check_sender(request.sender)
        await self.d.handle(ReleaseEvents(request.until_id))
        return director_pb2.ReleaseEventsResponse()

    async def GetOverview(
        self, request: director_pb2.GetOverviewRequest, context: grpc.aio.ServicerContext
    ) -> director_pb2.GetOverviewResponse:
        state = self.d.core.state
        return director_pb2.GetOverviewResponse(
            agent_name=self.d.agent,
            last_event_id=self.d.shell.committed_id,
            released_until_id=state.log.released_until,
            order_count=len(state.orders),
            term=self.d.term,
            subagents=[
                director_pb2.SubagentOverview(
                    id=d.subagent_id,
                    address=d.address,
                    connected=d.ready,
                    running_processes=len(self.d.core.processing_keys(d.subagent_id)),
                )
                for d in self.d.drivers.values()
            ],
        )


async def serve(config: DirectorConfig, stop: asyncio.Event) -> None:
    builtin = None
    if config.builtin_subagent:
        # A subagent like any other, on a loopback port of its own, that the director dials first.
        # Its jobs outlive a crashed director; a restart kills them as orphans, as any subagent does.
        # It accepts this director alone, by the certificate both use.
        own = tls.current()
        builtin = await subagent_server.start(
            config.builtin_subagent,
            config.node.data_dir / "builtin-subagent",
            "127.0.0.1:0",
            director_timeout=BUILTIN_DIRECTOR_TIMEOUT_S,
            verifier=config.node.trust or signing.Verifier(),
            security=own if own.insecure else own.accepting([own.subject()]),
        )
        config.subagents = {config.builtin_subagent: builtin.server.address, **config.subagents}
    director = Director(config)
    registration = (
        director_pb2_grpc.add_DirectorServiceServicer_to_server,
        DirectorServicer(director),
        rpc.service_name(director_pb2, "DirectorService"),
    )
    try:
        await serve_node("director", director, DirectorState, registration, stop)
    finally:
        if builtin is not None:
            await builtin.stop()
