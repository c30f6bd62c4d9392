"""The controller's shell: journal, gRPC servicer, agent drivers and the timer for fresh orders."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from controller_svc.agents import AgentDriver
from controller_svc.core import ControllerCore, ControllerState
from gen.ostinato.common.v1 import events_pb2
from gen.ostinato.controller.v1 import controller_pb2, controller_pb2_grpc
from ostinato import rpc
from ostinato.journal.replicated import Journal, cluster_password
from ostinato.journal.shell import JournalShell, now_ms

log = logging.getLogger(__name__)


@dataclass
class ControllerConfig:
    controller_id: str
    data_dir: Path
    listen: str
    raft_address: str
    agents: dict[str, str] = field(default_factory=dict)  # name -> director address
    raft_partners: list[str] = field(default_factory=list)
    cluster_password: str | None = None


class Controller:
    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.controller_id = config.controller_id
        self.drivers: dict[str, AgentDriver] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._timer_wake = asyncio.Event()

    async def start(self) -> None:
        cfg = self.config
        self.journal = Journal(
            data_dir=cfg.data_dir / "journal",
            self_address=cfg.raft_address,
            partners=cfg.raft_partners,
            password=cluster_password(cfg.data_dir, cfg.cluster_password),
            new_state=ControllerState,
        )
        state: ControllerState = await self.journal.wait_active()
        self.shell = JournalShell(self.journal, state)
        self.core = ControllerCore(state, frozenset(cfg.agents))
        self.shell.on_commit(self._on_commit)
        log.info(
            "controller %s active at event %d, %d orders",
            self.controller_id,
            state.last_event_id,
            len(state.orders),
        )
        for name, address in cfg.agents.items():
            driver = AgentDriver(self, name, address)
            self.drivers[name] = driver
            self._tasks.append(asyncio.create_task(driver.run(), name=f"agent-{name}"))
        self._tasks.append(asyncio.create_task(self._timer(), name="timer"))

    @property
    def term(self) -> int:
        return self.journal.term

    def _on_commit(self, events: list[events_pb2.Event]) -> None:
        for driver in self.drivers.values():
            driver.wake()
        self._timer_wake.set()

    async def _timer(self) -> None:
        """Starts fresh orders whose first instruction is the controller's when their time comes."""
        while True:
            due = self.core.next_wake_ms()
            delay = 60.0 if due is None else max(0.0, (due - now_ms()) / 1000)
            self._timer_wake.clear()
            try:
                await asyncio.wait_for(self._timer_wake.wait(), min(delay, 60.0))
            except TimeoutError:
                pass
            if due is not None and due <= now_ms():
                await self.shell.command(self.core.wake)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.journal.close()


class ControllerServicer(controller_pb2_grpc.ControllerServiceServicer):
    def __init__(self, controller: Controller) -> None:
        self.c = controller

    async def DeployItems(
        self, request: controller_pb2.DeployItemsRequest, context: grpc.aio.ServicerContext
    ) -> controller_pb2.DeployItemsResponse:
        items = list(request.items)
        await self.c.shell.command(lambda now: self.c.core.deploy(items, now))
        return controller_pb2.DeployItemsResponse(event_id=self.c.shell.committed_id)

    async def AddOrders(
        self, request: controller_pb2.AddOrdersRequest, context: grpc.aio.ServicerContext
    ) -> controller_pb2.AddOrdersResponse:
        result: list[controller_pb2.AddedOrder] = []

        def decide(now: int) -> list[events_pb2.Event]:
            events, added = self.c.core.add_orders(list(request.orders), now)
            result.extend(added)
            return events

        await self.c.shell.command(decide)
        return controller_pb2.AddOrdersResponse(orders=result)

    async def WatchEvents(
        self, request: controller_pb2.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[controller_pb2.WatchEventsResponse]:
        async for events in self.c.shell.watch(request.after, request.heartbeat_seconds):
            yield controller_pb2.WatchEventsResponse(events=events)

    async def ReleaseEvents(
        self, request: controller_pb2.ReleaseEventsRequest, context: grpc.aio.ServicerContext
    ) -> controller_pb2.ReleaseEventsResponse:
        await self.c.shell.command(lambda now: self.c.core.state.release(request.until_id, now))
        return controller_pb2.ReleaseEventsResponse()

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


async def serve(config: ControllerConfig, stop: asyncio.Event) -> None:
    from ostinato.service import announce

    controller = Controller(config)
    await controller.start()
    server = await rpc.start_server(
        config.listen,
        [
            (
                controller_pb2_grpc.add_ControllerServiceServicer_to_server,
                ControllerServicer(controller),
                rpc.service_name(controller_pb2, "ControllerService"),
            )
        ],
    )
    announce("controller", server.address, config.data_dir)
    await stop.wait()
    await server.stop(1.0)
    await controller.stop()
