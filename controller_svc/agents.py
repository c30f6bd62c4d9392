"""The controller's link to one director agent: it dials, hands over items and orders whose
attachment is committed, takes back detachable orders, and mirrors the agent's events.

Everything it sends is idempotent on the director, so after any reconnect it simply sends what
the state says is pending again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, Any

import grpc

from controller_svc.core import WorkKey
from gen.ostinato.common.v1 import cluster_pb2_grpc
from gen.ostinato.director.v1 import director_pb2, director_pb2_grpc
from ostinato import rpc

if TYPE_CHECKING:
    from controller_svc.server import Controller

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
BATCH = 500


class AgentDriver:
    def __init__(self, controller: Controller, name: str, addresses: list[str]) -> None:
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
        state = self.controller.core.state
        after = state.agent_observed.get(self.name, 0)
        call = stub.WatchEvents(
            director_pb2.WatchEventsRequest(sender=self._sender(), after=after, heartbeat_seconds=HEARTBEAT_S)
        )
        await asyncio.wait_for(call.wait_for_connection(), 5)
        log.info("agent %s at %s connected, events after %d", self.name, self.address, after)
        self.connected = True
        watching = asyncio.create_task(self._watch(stub, call))
        sent: set[WorkKey] = set()
        sent_items: set[tuple[str, str]] = set()
        try:
            while True:
                self._wake.clear()
                await self._push(stub, sent, sent_items)
                waking = asyncio.create_task(self._wake.wait())
                await asyncio.wait({waking, watching}, return_when=asyncio.FIRST_COMPLETED)
                waking.cancel()
                if watching.done():
                    watching.result()
                    return
        finally:
            watching.cancel()
            call.cancel()

    async def _watch(
        self, stub: director_pb2_grpc.DirectorServiceStub, call: grpc.aio.UnaryStreamCall
    ) -> None:
        while True:
            # Heartbeats arrive every HEARTBEAT_S; silence means the director is frozen or gone.
            response = await asyncio.wait_for(call.read(), HEARTBEAT_S * 4)
            if response is grpc.aio.EOF:
                return
            if not response.events:
                continue
            events = list(response.events)
            # Flow control: while JOC has not released much output, leave the agent's with it.
            await self.controller.shell.output_room()
            await self.controller.shell.command(
                functools.partial(self.controller.core.on_agent_events, self.name, events)
            )
            await stub.ReleaseEvents(
                director_pb2.ReleaseEventsRequest(sender=self._sender(), until_id=events[-1].id), timeout=10
            )

    async def _push(
        self,
        stub: director_pb2_grpc.DirectorServiceStub,
        sent: set[WorkKey],
        sent_items: set[tuple[str, str]],
    ) -> None:
        core = self.controller.core
        # Forget what was sent for orders that moved on, so the set stays as small as the work.
        sent -= core.stale_keys(sent)
        # Chosen all at once, without awaiting: the keys must be those of this moment. What
        # commits while this sends wakes the driver again.
        work = core.agent_work(self.name, self.controller.shell.committed_id, sent)
        items = [i for i in core.items_to_attach(self.name) if (i.path, i.version_id) not in sent_items]
        if items:  # job resources and subagent clusters first: the orders below may need them
            await stub.AttachItems(
                director_pb2.AttachItemsRequest(sender=self._sender(), items=items), timeout=30
            )
            sent_items.update((i.path, i.version_id) for i in items)
        for start in range(0, len(work.attach), BATCH):
            batch = work.attach[start : start + BATCH]
            needed = {(o.workflow_path, o.workflow_version_id) for _, o in batch} - sent_items
            if needed:
                items = [core.state.signed_items[key] for key in sorted(needed)]
                await stub.AttachItems(
                    director_pb2.AttachItemsRequest(sender=self._sender(), items=items), timeout=30
                )
                sent_items |= needed
            await stub.AttachOrders(
                director_pb2.AttachOrdersRequest(sender=self._sender(), orders=[o for _, o in batch]),
                timeout=30,
            )
            sent.update(key for key, _ in batch)
        if work.commands:
            commands = [c for _, c in work.commands]
            request = director_pb2.CommandOrdersRequest(sender=self._sender(), commands=commands)
            await stub.CommandOrders(request, timeout=30)
            sent.update(key for key, _ in work.commands)
        if work.detach:
            ids = [i for _, i in work.detach]
            await stub.DetachOrders(
                director_pb2.DetachOrdersRequest(sender=self._sender(), order_ids=ids), timeout=30
            )
            sent.update(key for key, _ in work.detach)
