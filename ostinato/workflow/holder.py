"""The part of controller and director state that holds deployed workflows and orders. Pure."""

from __future__ import annotations

from collections.abc import Iterator

from gen.ostinato.common.v1 import events_pb2, order_pb2, workflow_pb2
from ostinato.journal.state import JournaledState
from ostinato.workflow.orders import apply_order_event

S = order_pb2.OrderState


class Orders:
    """Orders by id. An order that waits for a time to start (fresh, scheduled) is kept as its
    serialised bytes: a protobuf object in Python costs about 1.7 KB, its bytes under 100, and a
    daily plan holds days of such orders in two copies (working and committed state).

    Reading a kept order (`[]`, `get`, `values`, `items`) parses a copy: the cores only read
    orders; events change them, through `apply` alone."""

    def __init__(self) -> None:
        self.live: dict[str, order_pb2.Order] = {}
        self.kept: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self.live) + len(self.kept)

    def __contains__(self, order_id: object) -> bool:
        return order_id in self.live or order_id in self.kept

    def __iter__(self) -> Iterator[str]:
        yield from self.live
        yield from self.kept

    def __getitem__(self, order_id: str) -> order_pb2.Order:
        order = self.get(order_id)
        if order is None:
            raise KeyError(order_id)
        return order

    def get(self, order_id: str) -> order_pb2.Order | None:
        order = self.live.get(order_id)
        if order is None and (data := self.kept.get(order_id)) is not None:
            return order_pb2.Order.FromString(data)
        return order

    def values(self) -> Iterator[order_pb2.Order]:
        for order_id in self:
            yield self[order_id]

    def items(self) -> Iterator[tuple[str, order_pb2.Order]]:
        for order_id in self:
            yield order_id, self[order_id]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Orders) and dict(self.items()) == dict(other.items())

    def apply(self, event: events_pb2.Event) -> order_pb2.Order:
        """The order after `event` (its transition in ostinato.workflow.orders)."""
        order_id = event.order_id
        before = self.live.pop(order_id, None)
        if before is None and (data := self.kept.pop(order_id, None)) is not None:
            before = order_pb2.Order.FromString(data)
        order = apply_order_event(before, event)
        assert order is not None
        if order.state == S.ORDER_STATE_FRESH and order.HasField("scheduled_for"):
            self.kept[order_id] = order.SerializeToString()
        else:
            self.live[order_id] = order
        return order

    def pop(self, order_id: str) -> order_pb2.Order | None:
        order = self.live.pop(order_id, None)
        if order is None and (data := self.kept.pop(order_id, None)) is not None:
            return order_pb2.Order.FromString(data)
        return order


class OrderHolder(JournaledState):
    """`leaving_kinds`: order events after which the order is no longer held here (its events
    stay in the log until released)."""

    leaving_kinds: frozenset[str] = frozenset({"order_deleted"})
    snapshot_classes: tuple[type, ...] = (*JournaledState.snapshot_classes, Orders)

    def __init__(self) -> None:
        super().__init__()
        self.workflows: dict[tuple[str, str], workflow_pb2.Workflow] = {}
        self.orders = Orders()
        # Id of the last event that touched each order: the shell acts on an order only once
        # that event is committed.
        self.order_event_id: dict[str, int] = {}
        # Orders per workflow version: a version no order uses any more may be forgotten.
        self.version_users: dict[tuple[str, str], int] = {}

    def apply_to_state(self, event: events_pb2.Event) -> None:
        kind = event.WhichOneof("kind")
        if kind == "item_deployed":
            if event.item_deployed.WhichOneof("item") != "workflow":
                return
            wf = event.item_deployed.workflow
            self.workflows[(wf.path, wf.version_id)] = wf
        elif kind in self.leaving_kinds:
            order = self.orders.pop(event.order_id)
            self.order_event_id.pop(event.order_id, None)
            if order is not None:
                self._stop_using((order.workflow_path, order.workflow_version_id))
        elif kind == "order_transferred":
            before = self.orders[event.order_id]
            self._stop_using((before.workflow_path, before.workflow_version_id))
            order = self.orders.apply(event)
            self.order_event_id[event.order_id] = event.id
            key = (order.workflow_path, order.workflow_version_id)
            self.version_users[key] = self.version_users.get(key, 0) + 1
        elif kind is not None and kind.startswith("order_"):
            known = event.order_id in self.orders
            order = self.orders.apply(event)
            self.order_event_id[event.order_id] = event.id
            if not known:
                key = (order.workflow_path, order.workflow_version_id)
                self.version_users[key] = self.version_users.get(key, 0) + 1

    def _stop_using(self, key: tuple[str, str]) -> None:
        self.version_users[key] -= 1
        if not self.version_users[key]:
            del self.version_users[key]
            self.version_unused(key)

    def restored(self) -> None:
        if isinstance(self.orders, dict):  # a snapshot of a version that held orders in a dict
            orders, self.orders = self.orders, Orders()
            for order_id, order in orders.items():
                self.orders.live[order_id] = order

    def version_unused(self, key: tuple[str, str]) -> None:
        """The last order of a workflow version left. Kept by default: an agent cannot tell
        whether the controller will send more orders of it."""

    def workflow_of(self, order: order_pb2.Order) -> workflow_pb2.Workflow:
        return self.workflows[(order.workflow_path, order.workflow_version_id)]
