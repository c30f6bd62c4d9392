"""The controller's link to one director agent: it dials, hands over items and orders whose
attachment is committed, takes back detachable orders, and mirrors the agent's events.

Everything it sends is idempotent on the director, so after any reconnect it simply sends what
the core says is pending again. Both directions batch: what the core has for the agent goes out in
as few calls as there are kinds of work, and the agent's events that wait in the stream are
journaled with one command and released to the agent at most every RELEASE_INTERVAL_S, never
waited for before reading on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

import grpc

from controller_svc.core import AgentEvents, ControllerCore, Stimulus
from gen.ostinato.common.v1 import cluster_pb2_grpc, events_pb2, items_pb2
from gen.ostinato.director.v1 import director_pb2, director_pb2_grpc
from ostinato import limits, rpc

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
BATCH = 500
# The agent's events the controller journaled are released to it at most this often, or once
# RELEASE_EVENTS more wait: each release is a commit of the agent's journal.
RELEASE_INTERVAL_S = 0.05
RELEASE_EVENTS = 2000
# Responses of the agent's event stream taken into one journal command, at most (and once they
# hold limits.BATCH_BYTES, no more).
DRAIN_RESPONSES = 200


class ControllerSide(Protocol):
    """What a driver needs of its controller node."""

    controller_id: str
    core: ControllerCore

    @property
    def term(self) -> int: ...

    @property
    def committed_id(self) -> int: ...

    async def handle(self, stimulus: Stimulus) -> list[events_pb2.Event]: ...

    async def output_room(self) -> None: ...


class AgentDriver:
    def __init__(self, controller: ControllerSide, name: str, addresses: list[str]) -> None:
        self.controller = controller
        self.name = name
        # The agent's director nodes: the driver follows the active one.
        self.target = rpc.ClusterTarget(addresses, name=f"agent {name}")
        self.connected = False
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def call_cluster(self, method: str, request: Any, timeout: float) -> Any:
        """ClusterService.`method` of the agent's director cluster, at its active node; its errors
        as this controller's own (UNAVAILABLE naming the agent when no node answers)."""
        try:
            return await self.target.call(cluster_pb2_grpc.ClusterServiceStub, method, request, timeout)
        except grpc.aio.AioRpcError as e:
            raise self.target.error(e) from None

    async def overview(self, timeout: float) -> director_pb2.GetOverviewResponse:
        """The active director node's overview (its subagents, their running processes)."""
        try:
            stub = director_pb2_grpc.DirectorServiceStub
            answer: director_pb2.GetOverviewResponse = await self.target.call(
                stub, "GetOverview", director_pb2.GetOverviewRequest(), timeout
            )
        except grpc.aio.AioRpcError as e:
            raise self.target.error(e) from None
        return answer

    def _sender(self) -> director_pb2.Sender:
        return director_pb2.Sender(controller_id=self.controller.controller_id, term=self.controller.term)

    @property
    def address(self) -> str:
        return self.target.address

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self._session(director_pb2_grpc.DirectorServiceStub(self.target.channel()))
                except asyncio.CancelledError:
                    if not rpc.channel_closed_under_us():
                        raise
                    # A cluster call on the same target followed another node and closed the
                    # channel of this session: go there too.
                    continue
                except (grpc.aio.AioRpcError, TimeoutError) as e:
                    if self.connected:
                        log.warning("agent %s at %s lost: %s", self.name, self.address, rpc.short_error(e))
                    named = isinstance(e, grpc.aio.AioRpcError) and rpc.active_address_of(e)
                    if self.target.follow(e) and named:
                        continue  # at once: a passive node named the active one
                finally:
                    self.connected = False
                await asyncio.sleep(0.2)  # reconnect pace; grpc's own backoff is capped at 1 s too
        finally:
            await self.target.close()

    async def _session(self, stub: director_pb2_grpc.DirectorServiceStub) -> None:
        core = self.controller.core
        after = core.state.agent_observed.get(self.name, 0)
        call = stub.WatchEvents(
            director_pb2.WatchEventsRequest(sender=self._sender(), after=after, heartbeat_seconds=HEARTBEAT_S)
        )
        await asyncio.wait_for(call.wait_for_connection(), 5)
        log.info("agent %s at %s connected, events after %d", self.name, self.address, after)
        self.connected = True
        core.agent_session(self.name)  # whatever is pending goes out (again) in this session
        inbox: asyncio.Queue[director_pb2.WatchEventsResponse] = asyncio.Queue()
        tasks = [
            asyncio.create_task(self._read(call, inbox)),
            asyncio.create_task(self._mirror(stub, inbox)),
            asyncio.create_task(self._push(stub)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            call.cancel()
            # Bounded: a task that does not end on cancellation must not keep the driver from
            # reconnecting (it stays cancelled, and ends when what it waits for does).
            ended, stuck = await asyncio.wait(tasks, timeout=5)
            for task in ended:
                _ = task.cancelled() or task.exception()  # retrieved: reported above or not at all
            for task in stuck:
                log.warning("agent %s: %s did not end when cancelled", self.name, task.get_coro())

    async def _read(
        self, call: grpc.aio.UnaryStreamCall, inbox: asyncio.Queue[director_pb2.WatchEventsResponse]
    ) -> None:
        while True:
            # Heartbeats arrive every HEARTBEAT_S; silence means the director is frozen or gone.
            response = await rpc.read_within(call, HEARTBEAT_S * 4)
            if response is grpc.aio.EOF:
                return
            if response.events:
                inbox.put_nowait(response)

    async def _mirror(
        self,
        stub: director_pb2_grpc.DirectorServiceStub,
        inbox: asyncio.Queue[director_pb2.WatchEventsResponse],
    ) -> None:
        """Journals what waits in the stream with one command, releases in the background."""
        releaser = _Releaser(self, stub)
        try:
            while True:
                responses = [await inbox.get()]
                size = responses[0].ByteSize()
                while not inbox.empty() and len(responses) < DRAIN_RESPONSES and size < limits.BATCH_BYTES:
                    responses.append(inbox.get_nowait())
                    size += responses[-1].ByteSize()
                events = tuple(e for r in responses for e in r.events)
                # Flow control: while JOC has not released much output, leave the agent's with it.
                await self.controller.output_room()
                await self.controller.handle(AgentEvents(self.name, events))
                releaser.journaled(events[-1].id, len(events))
        finally:
            await releaser.close()

    async def _push(self, stub: director_pb2_grpc.DirectorServiceStub) -> None:
        """Sends what the core has for the agent whenever a commit or a wake may have added some."""
        sent_items: set[tuple[str, str]] = set()
        while True:
            self._wake.clear()
            await self._send_work(stub, sent_items)
            await self._wake.wait()

    async def _send_work(
        self, stub: director_pb2_grpc.DirectorServiceStub, sent_items: set[tuple[str, str]]
    ) -> None:
        """What the core has for the agent, in one call per BATCH orders: items first (job
        resources, subagent clusters and the workflow versions the orders need), then the orders
        to attach, commands and orders to detach; the agent journals each call as one."""
        core = self.controller.core
        # Taken all at once, without awaiting: what commits while this sends wakes the driver again.
        work = core.agent_work(self.name, self.controller.committed_id)
        items = [i for i in core.items_to_attach(self.name) if (i.path, i.version_id) not in sent_items]
        order_batches = list(limits.batches(work.attach, BATCH)) or [[]]
        for n, orders in enumerate(order_batches):
            last = n == len(order_batches) - 1
            needed = {(o.workflow_path, o.workflow_version_id) for o in orders}
            if last:
                needed |= work.versions  # versions the commands move orders to
            known = core.state.signed_items
            items += [known[key] for key in sorted(needed - sent_items) if key in known]
            if sum(i.ByteSize() for i in items) > limits.BATCH_BYTES:
                await self._attach_items(stub, items, sent_items)  # big ones in calls of their own
                items = []
            request = director_pb2.BatchRequest(
                sender=self._sender(),
                items=items,
                attach_orders=orders,
                commands=work.commands if last else [],
                detach_order_ids=work.detach if last else [],
            )
            if items or orders or request.commands or request.detach_order_ids:
                await stub.Batch(request, timeout=30)
            sent_items.update((i.path, i.version_id) for i in items)
            items = []

    async def _attach_items(
        self,
        stub: director_pb2_grpc.DirectorServiceStub,
        items: list[items_pb2.SignedItem],
        sent_items: set[tuple[str, str]],
    ) -> None:
        for batch in limits.batches(items, BATCH):
            await stub.AttachItems(
                director_pb2.AttachItemsRequest(sender=self._sender(), items=batch), timeout=30
            )
            sent_items.update((i.path, i.version_id) for i in batch)


class _Releaser:
    """Releases the agent's events the controller journaled: at most one call in flight, at most
    every RELEASE_INTERVAL_S unless RELEASE_EVENTS wait, the latest id each time."""

    def __init__(self, driver: AgentDriver, stub: director_pb2_grpc.DirectorServiceStub) -> None:
        self.driver = driver
        self.stub = stub
        self.until = 0
        self.waiting = 0
        self._due = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    def journaled(self, until_id: int, count: int) -> None:
        self.until = until_id
        self.waiting += count
        self._due.set()

    async def _run(self) -> None:
        released = 0
        loop = asyncio.get_running_loop()
        while True:
            await self._due.wait()
            self._due.clear()
            if self.waiting < RELEASE_EVENTS:
                # Let more arrive: each release is a commit of the agent's journal.
                with contextlib.suppress(TimeoutError):
                    deadline = loop.time() + RELEASE_INTERVAL_S
                    while self.waiting < RELEASE_EVENTS and (left := deadline - loop.time()) > 0:
                        await asyncio.wait_for(self._due.wait(), left)
                        self._due.clear()
            until, self.waiting = self.until, 0
            if until > released:
                request = director_pb2.ReleaseEventsRequest(sender=self.driver._sender(), until_id=until)
                try:
                    await self.stub.ReleaseEvents(request, timeout=10)
                    released = until
                except grpc.aio.AioRpcError as e:
                    # Harmless: the agent keeps its events; the next batch or session releases them.
                    log.debug(
                        "ReleaseEvents(%d) at agent %s failed: %s", until, self.driver.name, e.code().name
                    )

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
