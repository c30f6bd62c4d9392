"""The director's shell: journal, gRPC servicer for the controller, subagent drivers, timer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from director_svc.core import DirectorCore, DirectorState
from director_svc.subagents import SubagentDriver
from gen.ostinato.director.v1 import director_pb2, director_pb2_grpc
from ostinato import rpc
from ostinato.errors import FailedPrecondition
from ostinato.journal.replicated import Journal, cluster_password
from ostinato.journal.shell import JournalShell, now_ms

log = logging.getLogger(__name__)


@dataclass
class DirectorConfig:
    agent: str
    data_dir: Path
    listen: str
    raft_address: str
    subagents: dict[str, str] = field(default_factory=dict)  # id -> address, in priority order
    raft_partners: list[str] = field(default_factory=list)
    cluster_password: str | None = None


class Director:
    def __init__(self, config: DirectorConfig) -> None:
        self.config = config
        self.agent = config.agent
        self.director_id = f"{config.agent}@{config.raft_address}"
        self.drivers: dict[str, SubagentDriver] = {}
        self.highest_controller_term = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._timer_wake = asyncio.Event()

    async def start(self) -> None:
        cfg = self.config
        self.journal = Journal(
            data_dir=cfg.data_dir / "journal",
            self_address=cfg.raft_address,
            partners=cfg.raft_partners,
            password=cluster_password(cfg.data_dir, cfg.cluster_password),
            new_state=DirectorState,
        )
        state: DirectorState = await self.journal.wait_active()
        self.shell = JournalShell(self.journal, state)
        self.core = DirectorCore(state, cfg.agent, list(cfg.subagents))
        self.shell.on_commit(self._on_commit)
        log.info(
            "director of %s active at event %d, %d orders", self.agent, state.last_event_id, len(state.orders)
        )
        for subagent_id, address in cfg.subagents.items():
            driver = SubagentDriver(self, subagent_id, address)
            self.drivers[subagent_id] = driver
            self._tasks.append(asyncio.create_task(driver.run(), name=f"subagent-{subagent_id}"))
        self._tasks.append(asyncio.create_task(self._timer(), name="timer"))

    @property
    def term(self) -> int:
        return self.journal.term

    def available(self) -> set[str]:
        return {d.subagent_id for d in self.drivers.values() if d.ready}

    def availability_changed(self) -> None:
        self._timer_wake.set()

    def check_sender(self, sender: director_pb2.Sender) -> None:
        """Fencing: a controller node with an older term than one already heard is deposed."""
        if sender.term < self.highest_controller_term:
            raise FailedPrecondition(
                f"stale controller term {sender.term} (current {self.highest_controller_term})",
                field="sender.term",
            )
        self.highest_controller_term = sender.term

    def _on_commit(self, events: list[Any]) -> None:
        for driver in self.drivers.values():
            driver.wake()
        self._timer_wake.set()

    async def _timer(self) -> None:
        """Starts fresh orders at their time and hands ready orders to subagents that came."""
        available_before: set[str] = set()
        while True:
            due = self.core.next_wake_ms()
            delay = 60.0 if due is None else max(0.0, (due - now_ms()) / 1000)
            self._timer_wake.clear()
            try:
                await asyncio.wait_for(self._timer_wake.wait(), min(delay, 60.0))
            except TimeoutError:
                pass
            available = self.available()
            if (due is not None and due <= now_ms()) or (available - available_before):
                await self.shell.command(lambda now, available=available: self.core.wake(now, available))
            available_before = available

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.journal.close()


class DirectorServicer(director_pb2_grpc.DirectorServiceServicer):
    def __init__(self, director: Director) -> None:
        self.d = director

    async def AttachItems(
        self, request: director_pb2.AttachItemsRequest, context: grpc.aio.ServicerContext
    ) -> director_pb2.AttachItemsResponse:
        self.d.check_sender(request.sender)
        items = list(request.items)
        await self.d.shell.command(lambda now: self.d.core.attach_items(items, now))
        return director_pb2.AttachItemsResponse()

    async def AttachOrders(
        self, request: director_pb2.AttachOrdersRequest, context: grpc.aio.ServicerContext
    ) -> director_pb2.AttachOrdersResponse:
        self.d.check_sender(request.sender)
        orders = list(request.orders)
        await self.d.shell.command(lambda now: self.d.core.attach_orders(orders, now, self.d.available()))
        return director_pb2.AttachOrdersResponse()

    async def DetachOrders(
        self, request: director_pb2.DetachOrdersRequest, context: grpc.aio.ServicerContext
    ) -> director_pb2.DetachOrdersResponse:
        self.d.check_sender(request.sender)
        ids = list(request.order_ids)
        await self.d.shell.command(lambda now: self.d.core.detach_orders(ids, now))
        return director_pb2.DetachOrdersResponse()

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
        await self.d.shell.command(lambda now: self.d.core.state.release(request.until_id, now))
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
                    id=d.subagent_id, address=d.address, connected=d.ready, running_processes=d.running
                )
                for d in self.d.drivers.values()
            ],
        )


async def serve(config: DirectorConfig, stop: asyncio.Event) -> None:
    from ostinato.service import announce

    director = Director(config)
    await director.start()
    server = await rpc.start_server(
        config.listen,
        [
            (
                director_pb2_grpc.add_DirectorServiceServicer_to_server,
                DirectorServicer(director),
                rpc.service_name(director_pb2, "DirectorService"),
            )
        ],
    )
    announce("director", server.address, config.data_dir)
    await stop.wait()
    await server.stop(1.0)
    await director.stop()
