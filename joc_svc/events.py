"""Event ingestion: one task per controller follows its journal (WatchEvents), applies each batch to
the database in one transaction, releases what is stored, and wakes the streams watching orders.

The controller keeps events until JOC releases them, so JOC may be down or the controller restarted
at any time: the task reconnects forever and resumes after its stored cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import grpc

from gen.ostinato.controller.v1 import controller_pb2
from joc_svc.controllers import CALL_TIMEOUT, ControllerLink
from joc_svc.store import Applied, Store

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5.0
# Releases are throttled to one per interval while events flow; an idle stream's heartbeat
# releases whatever is left, so the controller drops stored events within seconds.
RELEASE_INTERVAL = 1.0
BACKOFF_START = 0.2
BACKOFF_MAX = 5.0


class Hub:
    """Wakes the streams that watch an order. A subscriber's queue gets every Applied of its order
    committed after it subscribed; streams subscribe before they read the database, and skip
    what they already read by event id."""

    def __init__(self) -> None:
        self._queues: dict[str, set[asyncio.Queue[Applied]]] = {}

    @contextlib.asynccontextmanager
    async def subscribe(self, order_id: str) -> AsyncIterator[asyncio.Queue[Applied]]:
        queue: asyncio.Queue[Applied] = asyncio.Queue()
        self._queues.setdefault(order_id, set()).add(queue)
        try:
            yield queue
        finally:
            queues = self._queues.get(order_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._queues[order_id]

    def publish(self, applied: list[Applied]) -> None:
        for item in applied:
            for queue in self._queues.get(item.event.order_id, ()):
                queue.put_nowait(item)


class Ingestion:
    """Follows one controller's events forever (until cancelled)."""

    def __init__(
        self,
        link: ControllerLink,
        store: Store,
        hub: Hub,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_connected: Callable[[], None] = lambda: None,
    ) -> None:
        self.link = link
        self.store = store
        self.hub = hub
        self.clock = clock
        # Called when a stream from the controller is up: pending deployments need not wait.
        self.on_connected = on_connected
        self.released_until = 0
        self._last_release = 0.0

    async def run(self) -> None:
        backoff = BACKOFF_START
        failures = 0
        while True:
            try:
                async for _ in self._follow():
                    if failures:
                        log.info(
                            "following events of controller %s at %s again", self.link.id, self.link.address
                        )
                    failures = 0
                    backoff = BACKOFF_START
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    await self._skip_released(e)
                    continue
                failures += 1
                # Say it once per outage, not every retry.
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(
                    level,
                    "cannot follow events of controller %s at %s (%s: %s); retrying",
                    self.link.id,
                    self.link.address,
                    e.code().name,
                    (e.details() or "").splitlines()[0] if e.details() else "",
                )
            except Exception:
                failures += 1
                log.exception("event ingestion from controller %s failed; retrying", self.link.id)
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _follow(self) -> AsyncIterator[None]:
        """One WatchEvents stream; yields after each response that was handled."""
        cursor = await asyncio.to_thread(self.store.cursor, self.link.id)
        request = controller_pb2.WatchEventsRequest(after=cursor, heartbeat_seconds=HEARTBEAT_SECONDS)
        first = True
        async for response in self.link.stub.WatchEvents(request):
            if first:
                first = False
                self.on_connected()
            if response.events:
                applied = await asyncio.to_thread(
                    self.store.apply_events, self.link.id, list(response.events), self.clock()
                )
                self.hub.publish(applied)
                cursor = max(cursor, max(e.id for e in response.events))
            await self._release(cursor, idle=not response.events)
            yield None

    async def _release(self, until: int, idle: bool) -> None:
        if until <= self.released_until:
            return
        if not idle and time.monotonic() - self._last_release < RELEASE_INTERVAL:
            return
        self._last_release = time.monotonic()
        try:
            await self.link.stub.ReleaseEvents(
                controller_pb2.ReleaseEventsRequest(until_id=until), timeout=CALL_TIMEOUT
            )
            self.released_until = until
        except grpc.aio.AioRpcError as e:
            # Harmless: the next response or heartbeat tries again.
            log.debug("ReleaseEvents(%d) on controller %s failed: %s", until, self.link.id, e.code().name)

    async def _skip_released(self, e: grpc.aio.AioRpcError) -> None:
        """The controller dropped events JOC never stored. Nothing recovers them here (a later
        resync will); JOC continues after the controller's oldest kept event."""
        cursor = await asyncio.to_thread(self.store.cursor, self.link.id)
        try:
            overview = await self.link.stub.GetOverview(
                controller_pb2.GetOverviewRequest(), timeout=CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError as e2:
            log.warning("controller %s: GetOverview failed (%s); retrying", self.link.id, e2.code().name)
            await asyncio.sleep(BACKOFF_MAX)
            return
        log.error(
            "EVENTS LOST: controller %s released events after %d that JOC never stored (%s); "
            "continuing from event %d; orders changed meanwhile may be stale in JOC",
            self.link.id,
            cursor,
            e.details(),
            overview.released_until_id,
        )
        if overview.released_until_id > cursor:
            await asyncio.to_thread(self.store.set_cursor, self.link.id, overview.released_until_id)
        else:
            # The controller contradicts itself; don't spin.
            await asyncio.sleep(BACKOFF_MAX)
