"""Coalescing of concurrent AddOrder calls: what waits for a controller at one moment goes to it in
ONE AddOrders call and is recorded in ONE transaction, and each caller gets its own answer.

Each caller has its order id before it waits (JOC makes one unless the caller gave it), so a caller
that retries after a lost answer asks for the same order again: the controller's AddOrders is
idempotent by id and remembers ended ids. One batch per controller is in flight at a time; calls
arriving meanwhile form the next batch, so an idle JOC sends a lone order at once.

The controller refuses a whole request when one of its orders is bad (unknown workflow, invalid
arguments or id) and adds none of it. JOC cannot tell a bad order beforehand (the controller's
workflows and argument rules decide), so a batch refused with such an error is split in halves
and sent again until each bad order is alone in its request: it gets the controller's error as a
lone AddOrder would, and the others are added.

The controller call of a batch runs in the context of the batch's first caller, so its span joins
that caller's trace; each order still carries its own caller's trace to the jobs it runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from dataclasses import dataclass, field
from datetime import datetime

import grpc

from gen.ostinato.common.v1 import order_pb2
from gen.ostinato.controller.v1 import controller_pb2
from joc_svc.controllers import ControllerLink
from joc_svc.store import Store
from joc_svc.store.audit import AuditEntry
from ostinato.errors import OstinatoError

log = logging.getLogger(__name__)

# One AddOrders call carries at most this many orders, and this many bytes of them.
BATCH_ORDERS = 500
BATCH_BYTES = 4 * 1024 * 1024
# The controller's answers that blame an order of the request rather than the request or the controller.
_ORDER_ERRORS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)


@dataclass
class Waiting:
    """One caller's order, until the controller and the database have it."""

    new_order: controller_pb2.NewOrder
    asked_at: datetime  # also the row's "added" time
    audit: AuditEntry
    timeout: float  # the caller's budget for the controller call
    answer: asyncio.Future[controller_pb2.AddedOrder]
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


class OrderBatcher:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._waiting: dict[str, list[Waiting]] = {}  # per controller id, in arrival order
        self._sending: dict[str, asyncio.Task[None]] = {}

    async def add(
        self,
        link: ControllerLink,
        new_order: controller_pb2.NewOrder,
        asked_at: datetime,
        audit: AuditEntry,
        timeout: float,
    ) -> controller_pb2.AddedOrder:
        """The controller's answer for this order once it is recorded; raises the controller's
        error (OstinatoError) for it."""
        waiting = Waiting(new_order, asked_at, audit, timeout, asyncio.get_running_loop().create_future())
        self._waiting.setdefault(link.id, []).append(waiting)
        if link.id not in self._sending:
            self._send_next(link)
        # A caller that goes away cancels its future: not sent if it still waits, else recorded anyway.
        return await waiting.answer

    def waiting(self, controller_id: str) -> int:
        """Calls waiting for the next batch to the controller."""
        return sum(not w.answer.done() for w in self._waiting.get(controller_id, ()))

    def _send_next(self, link: ControllerLink) -> None:
        batch = self._take(link.id)
        if not batch:
            self._sending.pop(link.id, None)
            return
        task = asyncio.create_task(self._send(link, batch), context=batch[0].context)
        self._sending[link.id] = task
        task.add_done_callback(lambda _: self._send_next(link))

    def _take(self, controller_id: str) -> list[Waiting]:
        """What waits now, within the bounds; an order id at most once (a second call for the
        same id goes in the next batch, and is told the order exists)."""
        queue = self._waiting.get(controller_id, [])
        batch: list[Waiting] = []
        rest: list[Waiting] = []
        ids: set[str] = set()
        size = 0
        for waiting in queue:
            if waiting.answer.done():
                continue
            n = waiting.new_order.ByteSize()
            full = len(batch) >= BATCH_ORDERS or (batch and size + n > BATCH_BYTES)
            if full or waiting.new_order.id in ids:
                rest.append(waiting)
                continue
            batch.append(waiting)
            ids.add(waiting.new_order.id)
            size += n
        self._waiting[controller_id] = rest
        return batch

    async def _send(self, link: ControllerLink, batch: list[Waiting]) -> None:
        answers: list[controller_pb2.AddedOrder | Exception]
        try:
            answers = [*await self._add_at_controller(link, batch)]
            accepted = [
                (w, a)
                for w, a in zip(batch, answers, strict=True)
                if isinstance(a, controller_pb2.AddedOrder)
            ]
            if accepted:
                await asyncio.to_thread(
                    self.store.add_orders,
                    [(_fresh_row(w.new_order, a), w.asked_at) for w, a in accepted],
                    link.id,
                    [w.audit for w, _ in accepted],
                )
        except Exception as e:  # the database failed: every caller of the batch hears it
            answers = [e] * len(batch)
        for waiting, answer in zip(batch, answers, strict=True):
            if waiting.answer.done():
                continue
            if isinstance(answer, Exception):
                waiting.answer.set_exception(answer)
            else:
                waiting.answer.set_result(answer)

    async def _add_at_controller(
        self, link: ControllerLink, batch: list[Waiting]
    ) -> list[controller_pb2.AddedOrder | OstinatoError]:
        return await add_at_controller(link, [w.new_order for w in batch], max(w.timeout for w in batch))


async def add_at_controller(
    link: ControllerLink, new_orders: list[controller_pb2.NewOrder], timeout: float
) -> list[controller_pb2.AddedOrder | OstinatoError]:
    """The controller's answer per order, in order: a refused request is split until each bad
    order is alone in one (see the module's doc). Any other error is every order's answer."""
    request = controller_pb2.AddOrdersRequest(orders=new_orders)
    try:
        response = await link.call("AddOrders", request, timeout)
    except grpc.aio.AioRpcError as e:
        if len(new_orders) > 1 and e.code() in _ORDER_ERRORS:
            half = len(new_orders) // 2
            log.debug(
                "controller %s refused a batch of %d orders (%s); halving",
                link.id,
                len(new_orders),
                e.details(),
            )
            return [
                *await add_at_controller(link, new_orders[:half], timeout),
                *await add_at_controller(link, new_orders[half:], timeout),
            ]
        return [link.error(e)] * len(new_orders)
    by_id = {a.id: a for a in response.orders}
    return [by_id.get(o.id) or controller_pb2.AddedOrder(id=o.id) for o in new_orders]


def _fresh_row(new: controller_pb2.NewOrder, added: controller_pb2.AddedOrder) -> order_pb2.Order:
    """JOC's row for an order until the controller's events tell more: FRESH; its OrderAdded
    replaces the row's order."""
    order = order_pb2.Order(
        id=new.id,
        workflow_path=new.workflow_path,
        workflow_version_id=added.workflow_version_id,
        arguments=dict(new.arguments),
        state=order_pb2.ORDER_STATE_FRESH,
        trace_parent=new.trace_parent,
    )
    if new.HasField("scheduled_for"):
        order.scheduled_for.CopyFrom(new.scheduled_for)
    return order
