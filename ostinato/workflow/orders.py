"""How each order event changes an order: the one definition of order state transitions, used by
the controller core, the director core and JOC's order projection."""

from __future__ import annotations

from gen.ostinato.common.v1 import events_pb2, order_pb2, workflow_pb2
from ostinato.errors import OstinatoError

S = order_pb2.OrderState
A = order_pb2.AttachedState

TERMINAL_STATES = frozenset({S.ORDER_STATE_FINISHED, S.ORDER_STATE_CANCELLED})
# States a `--wait` ends on: terminal ones and FAILED (which can still be resumed).
END_STATES = frozenset({*TERMINAL_STATES, S.ORDER_STATE_FAILED})


class InvalidTransition(OstinatoError):
    """An event that cannot apply to the order as it stands: a broken invariant, never input."""

    code_name = "INTERNAL"

    def __init__(self, order_id: str, state: int, event_kind: str) -> None:
        super().__init__(
            f"order {order_id}: event {event_kind} does not apply in state {S.Name(S.ValueType(state))}"
        )
        self.order_id = order_id
        self.state = state
        self.event_kind = event_kind


_ALLOWED: dict[str, frozenset[int]] = {
    "order_attachable": frozenset({S.ORDER_STATE_FRESH, S.ORDER_STATE_READY, S.ORDER_STATE_PROCESSED}),
    "order_attached": frozenset({S.ORDER_STATE_FRESH, S.ORDER_STATE_READY, S.ORDER_STATE_PROCESSED}),
    "order_started": frozenset({S.ORDER_STATE_FRESH}),
    "order_processing_started": frozenset({S.ORDER_STATE_READY}),
    "order_processed": frozenset({S.ORDER_STATE_PROCESSING}),
    "order_moved": frozenset({S.ORDER_STATE_READY, S.ORDER_STATE_PROCESSED}),
    "order_failed": frozenset({S.ORDER_STATE_READY, S.ORDER_STATE_PROCESSED}),
    "order_finished": frozenset({S.ORDER_STATE_READY, S.ORDER_STATE_PROCESSED}),
}


def apply_order_event(order: order_pb2.Order | None, event: events_pb2.Event) -> order_pb2.Order | None:
    """The order after `event`; mutates and returns `order` (a new one for OrderAdded/Attached)."""
    kind = event.WhichOneof("kind")
    if kind == "order_added":
        added = order_pb2.Order()
        added.CopyFrom(event.order_added.order)
        return added
    if kind == "order_attached" and order is None:
        # The agent learns the order by its attachment.
        attached = order_pb2.Order()
        attached.CopyFrom(event.order_attached.order)
        attached.agent = event.order_attached.agent
        attached.attached_state = A.ATTACHED_STATE_ATTACHED
        return attached
    if order is None:
        raise InvalidTransition(event.order_id, S.ORDER_STATE_UNSPECIFIED, kind or "")
    allowed = _ALLOWED.get(kind or "")
    if allowed is not None and order.state not in allowed:
        raise InvalidTransition(order.id, order.state, kind or "")

    if kind == "order_attachable":
        order.agent = event.order_attachable.agent
        order.attached_state = A.ATTACHED_STATE_ATTACHING
    elif kind == "order_attached":
        order.agent = event.order_attached.agent
        order.attached_state = A.ATTACHED_STATE_ATTACHED
    elif kind == "order_started":
        order.state = S.ORDER_STATE_READY
    elif kind == "order_processing_started":
        order.state = S.ORDER_STATE_PROCESSING
        order.processing.CopyFrom(event.order_processing_started.processing)
        order.attempt += 1
    elif kind == "order_processed":
        outcome = event.order_processed.outcome
        order.state = S.ORDER_STATE_PROCESSED
        order.historic_outcomes.add(position=order.position, outcome=outcome)
        for k, v in outcome.named_values.items():
            order.variables[k].CopyFrom(v)
        order.ClearField("processing")
    elif kind == "order_moved":
        order.position.CopyFrom(event.order_moved.to)
        order.state = S.ORDER_STATE_READY
        order.attempt = 0
    elif kind == "order_detachable":
        order.attached_state = A.ATTACHED_STATE_DETACHABLE
    elif kind == "order_detached":
        order.agent = ""
        order.attached_state = A.ATTACHED_STATE_DETACHED
    elif kind == "order_failed":
        order.state = S.ORDER_STATE_FAILED
        if event.order_failed.outcome.kind:
            order.historic_outcomes.add(position=order.position, outcome=event.order_failed.outcome)
    elif kind == "order_finished":
        order.state = S.ORDER_STATE_FINISHED
    # OrderStdWritten and OrderDeleted leave the order as it is; containers drop deleted orders.
    return order


def last_outcome(order: order_pb2.Order) -> workflow_pb2.Outcome | None:
    return order.historic_outcomes[-1].outcome if order.historic_outcomes else None


def succeeded(outcome: workflow_pb2.Outcome | None) -> bool:
    return outcome is None or outcome.kind == workflow_pb2.OUTCOME_KIND_SUCCEEDED
