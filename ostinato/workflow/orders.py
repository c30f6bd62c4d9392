"""How each order event changes an order: the one definition of order state transitions, used by
the controller core, the director core and JOC's order projection."""

from __future__ import annotations

from gen.ostinato.common.v1 import events_pb2, order_pb2, workflow_pb2
from ostinato.errors import OstinatoError
from ostinato.workflow.events import KINDS
from ostinato.workflow.positions import enclosing, next_position

S = order_pb2.OrderState
A = order_pb2.AttachedState

TERMINAL_STATES = frozenset({S.ORDER_STATE_FINISHED, S.ORDER_STATE_CANCELLED})
# States a `--wait` ends on: terminal ones and FAILED (which can still be resumed).
END_STATES = frozenset({*TERMINAL_STATES, S.ORDER_STATE_FAILED})


class InvalidTransition(OstinatoError):
    """An event that cannot apply to the order as it stands: a broken invariant, never input."""

    code_name = "INTERNAL"

    def __init__(self, order_id: str, state: int, event_kind: str) -> None:
        name = S.Name(S.ValueType(state))
        super().__init__(f"order {order_id}: event {event_kind} does not apply in state {name}")
        self.order_id = order_id
        self.state = state
        self.event_kind = event_kind


def apply_order_event(order: order_pb2.Order | None, event: events_pb2.Event) -> order_pb2.Order | None:
    """The order after `event`; mutates and returns `order` (a new one for OrderAdded/Attached)."""
    kind = event.WhichOneof("kind") or ""
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
        raise InvalidTransition(event.order_id, S.ORDER_STATE_UNSPECIFIED, kind)
    allowed = KINDS[kind].applies_in
    if allowed is not None and order.state not in allowed:
        raise InvalidTransition(order.id, order.state, kind)
    _apply(order, kind, getattr(event, kind) if kind else None)
    return order


def _apply(order: order_pb2.Order, kind: str, e: object) -> None:  # noqa: C901 - one table of transitions
    if kind == "order_attachable":
        assert isinstance(e, events_pb2.OrderAttachable)
        order.agent = e.agent
        order.attached_state = A.ATTACHED_STATE_ATTACHING
    elif kind == "order_attached":
        assert isinstance(e, events_pb2.OrderAttached)
        order.agent = e.agent
        order.attached_state = A.ATTACHED_STATE_ATTACHED
    elif kind == "order_detachable":
        order.attached_state = A.ATTACHED_STATE_DETACHABLE
    elif kind == "order_detached":
        order.agent = ""
        order.attached_state = A.ATTACHED_STATE_DETACHED
    elif kind == "order_started":
        order.state = S.ORDER_STATE_READY
        _drop_marks(order, "transfer")  # a transfer applies only to orders that have not started
    elif kind == "order_processing_started":
        assert isinstance(e, events_pb2.OrderProcessingStarted)
        order.state = S.ORDER_STATE_PROCESSING
        order.processing.CopyFrom(e.processing)
        order.attempt += 1
    elif kind == "order_std_written":
        assert isinstance(e, events_pb2.OrderStdWritten)
        if order.state == S.ORDER_STATE_PROCESSING and e.stream == events_pb2.STD_STREAM_STDERR:
            order.processing.stderr_written = True
    elif kind == "order_processed":
        assert isinstance(e, events_pb2.OrderProcessed)
        order.state = S.ORDER_STATE_PROCESSED
        _record(order, e.outcome)
        order.ClearField("processing")
    elif kind == "order_moved":
        assert isinstance(e, events_pb2.OrderMoved)
        _move(order, e.to)
    elif kind == "order_failed":
        assert isinstance(e, events_pb2.OrderFailed)
        if order.state == S.ORDER_STATE_READY and e.outcome.kind:  # not already recorded by a process
            _record(order, e.outcome)
        order.state = S.ORDER_STATE_FAILED
    elif kind == "order_finished":
        order.state = S.ORDER_STATE_FINISHED
    elif kind == "order_forked":
        assert isinstance(e, events_pb2.OrderForked)
        order.state = S.ORDER_STATE_FORKED
        order.children[:] = [c.order_id for c in e.children]
    elif kind == "order_joined":
        assert isinstance(e, events_pb2.OrderJoined)
        order.state = S.ORDER_STATE_PROCESSED
        _record(order, e.outcome)
        del order.children[:]
    elif kind == "order_caught":
        assert isinstance(e, events_pb2.OrderCaught)
        if order.state == S.ORDER_STATE_READY:
            _record(order, e.outcome)
        _move(order, e.to)
    elif kind == "order_retrying":
        assert isinstance(e, events_pb2.OrderRetrying)
        _move(order, e.to)
        order.state = S.ORDER_STATE_WAITING
        order.waiting_until.CopyFrom(e.until)
    elif kind == "order_awoke":
        order.state = S.ORDER_STATE_READY
        order.ClearField("waiting_until")
    elif kind == "order_lock_acquired":
        assert isinstance(e, events_pb2.OrderLockAcquired)
        order.held_locks.add(lock_path=e.lock_path, count=e.count)
        order.state = S.ORDER_STATE_READY
    elif kind == "order_lock_queued":
        order.state = S.ORDER_STATE_WAITING
    elif kind == "order_lock_released":
        assert isinstance(e, events_pb2.OrderLockReleased)
        kept = [h for h in order.held_locks if h.lock_path != e.lock_path]
        del order.held_locks[:]
        order.held_locks.extend(kept)
    elif kind == "order_prompted":
        assert isinstance(e, events_pb2.OrderPrompted)
        order.state = S.ORDER_STATE_PROMPTING
        order.prompt_question = e.question
    elif kind == "order_prompt_answered":
        order.prompt_question = ""
        _move(order, next_position(order.position))
    elif kind == "order_sleeping":
        assert isinstance(e, events_pb2.OrderSleeping)
        # Like a retry delay, the wait is at the position where the order goes on.
        _move(order, next_position(order.position))
        order.state = S.ORDER_STATE_WAITING
        order.waiting_until.CopyFrom(e.until)
    elif kind == "order_cycle_started":
        assert isinstance(e, events_pb2.OrderCycleStarted)
        _move(order, e.to)
        order.cycle.CopyFrom(e.cycle)
    elif kind == "order_cycle_finished":
        assert isinstance(e, events_pb2.OrderCycleFinished)
        order.position.CopyFrom(enclosing(order.position))
        if e.cycle.HasField("next_at"):
            order.cycle.CopyFrom(e.cycle)
            order.state = S.ORDER_STATE_WAITING
            order.waiting_until.CopyFrom(e.cycle.next_at)
        else:
            order.ClearField("cycle")
    elif kind == "order_marked":
        assert isinstance(e, events_pb2.OrderMarked)
        del order.marks[:]
        order.marks.extend(e.marks)
    elif kind == "order_cancelled":
        order.state = S.ORDER_STATE_CANCELLED
        del order.marks[:]
    elif kind == "order_suspended":
        order.state = S.ORDER_STATE_SUSPENDED
        _drop_marks(order, "suspend")
    elif kind == "order_resumed":
        assert isinstance(e, events_pb2.OrderResumed)
        if e.HasField("position"):
            order.position.CopyFrom(e.position)
        for k, v in e.variables.items():
            order.variables[k].CopyFrom(v)
        order.state = S.ORDER_STATE_READY
        order.ClearField("waiting_until")
        _drop_marks(order, "resume")
    elif kind == "order_kill_requested":
        order.processing.kill_requested = True
    elif kind == "order_transferred":
        assert isinstance(e, events_pb2.OrderTransferred)
        order.workflow_version_id = e.workflow_version_id
        _drop_marks(order, "transfer")
    # OrderDeleted and OrderOrderAdded leave the order as it is; containers drop deleted orders.


def _record(order: order_pb2.Order, outcome: workflow_pb2.Outcome) -> None:
    order.historic_outcomes.add(position=order.position, outcome=outcome)
    for k, v in outcome.named_values.items():
        order.variables[k].CopyFrom(v)


def _move(order: order_pb2.Order, to: order_pb2.Position) -> None:
    order.position.CopyFrom(to)
    order.state = S.ORDER_STATE_READY
    order.attempt = 0
    if not any(step.branch.startswith("cycle+") for step in to.branch_path):
        order.ClearField("cycle")


def _drop_marks(order: order_pb2.Order, kind: str) -> None:
    kept = [m for m in order.marks if m.WhichOneof("kind") != kind]
    del order.marks[:]
    order.marks.extend(kept)


def last_outcome(order: order_pb2.Order) -> workflow_pb2.Outcome | None:
    return order.historic_outcomes[-1].outcome if order.historic_outcomes else None


def succeeded(outcome: workflow_pb2.Outcome | None) -> bool:
    return outcome is None or outcome.kind == workflow_pb2.OUTCOME_KIND_SUCCEEDED


def mark_of(order: order_pb2.Order, kind: str) -> order_pb2.OrderMark | None:
    for mark in order.marks:
        if mark.WhichOneof("kind") == kind:
            return mark
    return None
