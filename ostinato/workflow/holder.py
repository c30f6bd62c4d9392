"""The part of controller and director state that holds deployed workflows and orders. Pure."""

from __future__ import annotations

from gen.ostinato.common.v1 import events_pb2, order_pb2, workflow_pb2
from ostinato.journal.state import JournaledState
from ostinato.workflow.orders import apply_order_event


class OrderHolder(JournaledState):
    """`leaving_kinds`: order events after which the order is no longer held here (its events
    stay in the log until released)."""

    leaving_kinds: frozenset[str] = frozenset({"order_deleted"})

    def __init__(self) -> None:
        super().__init__()
        self.workflows: dict[tuple[str, str], workflow_pb2.Workflow] = {}
        self.orders: dict[str, order_pb2.Order] = {}
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
            order = self.orders.pop(event.order_id, None)
            self.order_event_id.pop(event.order_id, None)
            if order is not None:
                key = (order.workflow_path, order.workflow_version_id)
                self.version_users[key] -= 1
                if not self.version_users[key]:
                    del self.version_users[key]
                    self.version_unused(key)
        elif kind is not None and kind.startswith("order_"):
            known = event.order_id in self.orders
            order = apply_order_event(self.orders.get(event.order_id), event)
            assert order is not None
            self.orders[event.order_id] = order
            self.order_event_id[event.order_id] = event.id
            if not known:
                key = (order.workflow_path, order.workflow_version_id)
                self.version_users[key] = self.version_users.get(key, 0) + 1

    def version_unused(self, key: tuple[str, str]) -> None:
        """The last order of a workflow version left. Kept by default: an agent cannot tell
        whether the controller will send more orders of it."""

    def workflow_of(self, order: order_pb2.Order) -> workflow_pb2.Workflow:
        return self.workflows[(order.workflow_path, order.workflow_version_id)]
