"""Asynchronous deployment: one delivery task per controller sends its pending history rows.

A deploy request only records rows ("not deployed", pending) with the exact items to deliver, in
one transaction, and wakes the controller's task. The task sends every pending row of its
controller, oldest first, in batches:
- the controller confirms (its journal committed the items): the rows become "deployed";
- the controller rejects (bad item, unknown agent, bad signature): a batch of several is sent again
  item by item so that each rejection lands on its own row, "not deployed" with the controller's
  message, for good;
- the controller cannot be reached (or fails otherwise; each send follows the controller cluster's
  active node first): the rows stay pending with the reason, and
  the task tries again with backoff, at once when a new request comes or when JOC's event stream
  from that controller reconnects.
Rows are in the database, so a restarted JOC delivers what was pending. Controllers accept the same
path and version again without effect, so a delivery repeated after a crash is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

import grpc

from gen.ostinato.common.v1 import items_pb2
from gen.ostinato.controller.v1 import controller_pb2
from joc_svc.controllers import ControllerLink
from joc_svc.store import DeploymentRow, Store
from ostinato import limits, metrics
from ostinato.errors import OstinatoError

log = logging.getLogger(__name__)

BATCH = 200
BACKOFF_START = 0.2
BACKOFF_MAX = 2.0
# The controller's verdict on the items themselves: retrying cannot change it.
REJECTING = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)
_REJECTIONS_KEPT = 10_000


class Delivery:
    """The delivery task of one controller. `started`/`finished` count its rounds, so a request
    can wait for the first round that began after its rows were recorded."""

    def __init__(self, link: ControllerLink, store: Store, clock: Callable[[], datetime]) -> None:
        self.link = link
        self.store = store
        self.clock = clock
        self.started = 0
        self.finished = 0
        self.reachable = True
        self._wake = asyncio.Event()
        self._rounds = asyncio.Condition()
        # Row id -> the controller's error, for the request that waits on the row to raise.
        self.rejections: dict[int, OstinatoError] = {}

    def kick(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        backoff = BACKOFF_START
        while True:
            self._wake.clear()
            self.started += 1
            try:
                reachable = await self._round()
            except Exception:
                log.exception("delivery to controller %s failed; retrying", self.link.id)
                reachable = False
            if reachable != self.reachable:
                log.log(
                    logging.INFO if reachable else logging.WARNING,
                    "controller %s %s for deployments",
                    self.link.id,
                    "reachable again" if reachable else "unreachable; pending deployments wait",
                )
                self.reachable = reachable
            self.finished += 1
            async with self._rounds:
                self._rounds.notify_all()
            if reachable:
                backoff = BACKOFF_START
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def settle(self) -> None:
        """Returns when a round that started after this call has ended."""
        need = self.started + 1
        self.kick()
        async with self._rounds:
            await self._rounds.wait_for(lambda: self.finished >= need)

    async def _round(self) -> bool:
        """Delivers every pending row; False when the controller could not be reached."""
        while True:
            batch = await asyncio.to_thread(self.store.pending_deliveries, self.link.id, BATCH)
            if not batch:
                return True
            start = 0  # in requests of at most limits.BATCH_BYTES of items
            for part in limits.batches([item for _, item in batch], BATCH):
                if not await self._send(batch[start : start + len(part)]):
                    return False
                start += len(part)

    async def _send(self, batch: Sequence[tuple[DeploymentRow, items_pb2.SignedItem]]) -> bool:
        ids = [row.id for row, _ in batch]
        request = controller_pb2.DeployItemsRequest(items=[item for _, item in batch])
        try:
            # Without waiting for a controller that is down: this task tries again by itself.
            await self.link.call("DeployItems", request, down_after=0)
        except grpc.aio.AioRpcError as e:
            error = self.link.error(e)
            if e.code() not in REJECTING:
                await asyncio.to_thread(self.store.mark_attempted, ids, str(error))
                return False
            if len(batch) > 1:
                for one in batch:
                    if not await self._send([one]):
                        return False
                return True
            log.info("controller %s rejected %s: %s", self.link.id, batch[0][1].path, error)
            await asyncio.to_thread(self.store.mark_rejected, ids[0], str(error))
            metrics.DEPLOYMENTS.labels(self.link.id, "refused").inc()
            if len(self.rejections) > _REJECTIONS_KEPT:
                self.rejections.clear()
            self.rejections[ids[0]] = error
            return True
        await asyncio.to_thread(self.store.mark_delivered, ids, self.clock())
        metrics.DEPLOYMENTS.labels(self.link.id, "deployed").inc(len(ids))
        log.info("controller %s confirmed %d deployment(s)", self.link.id, len(ids))
        return True


class Deployer:
    """The delivery tasks of all controllers JOC knows."""

    def __init__(
        self,
        store: Store,
        links: dict[str, ControllerLink],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.deliveries = {cid: Delivery(link, store, clock) for cid, link in links.items()}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for cid, delivery in self.deliveries.items():
            self._tasks.append(asyncio.create_task(delivery.run(), name=f"deliver-{cid}"))
        unknown = await asyncio.to_thread(self.store.pending_controllers) - set(self.deliveries)
        for cid in sorted(unknown):
            log.warning("pending deployments to controller %s, which JOC is not configured with", cid)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []  # started again when this JOC instance is active again

    def kick(self, controller_id: str) -> None:
        delivery = self.deliveries.get(controller_id)
        if delivery is not None:
            delivery.kick()

    async def settle(self, rows: Iterable[DeploymentRow], timeout: float) -> None:
        """Waits (at most `timeout`) until each controller of the pending rows had a delivery
        round after now; a controller that answers slowly leaves its rows pending."""
        waits = [
            self.deliveries[cid].settle()
            for cid in sorted({r.controller_id for r in rows if r.pending})
            if cid in self.deliveries
        ]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), timeout)

    def rejection(self, rows: Iterable[DeploymentRow]) -> OstinatoError | None:
        """The first controller rejection among the rows (each reported once)."""
        first = None
        for row in rows:
            delivery = self.deliveries.get(row.controller_id)
            error = delivery.rejections.pop(row.id, None) if delivery else None
            first = first or error
        return first
