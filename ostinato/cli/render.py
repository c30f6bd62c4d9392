"""How the CLI words things: tables, times, types, order states and one line per order event."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any

from gen.ostinato.common.v1 import events_pb2, items_pb2, order_pb2, workflow_pb2

# ---- describing orders (pure)

STATE_PREFIX = "ORDER_STATE_"


def state_word(state: int) -> str:
    if state == order_pb2.ORDER_STATE_UNSPECIFIED:
        return "unknown"
    name = order_pb2.OrderState.Name(order_pb2.OrderState.ValueType(state))
    return name.removeprefix(STATE_PREFIX).lower()


def summary_state(summary: Any) -> str:
    """An order's state as JOC knows it; an order that left its controller while JOC was away
    says so (how it ended is unknown)."""
    if summary.left_unseen:
        return f"unknown (left unseen, was {state_word(summary.last_seen_state)})"
    return state_word(summary.order.state)


def position_text(position: order_pb2.Position) -> str:
    from ostinato.workflow import positions

    return positions.text(position)


def outcome_text(outcome: workflow_pb2.Outcome) -> str:
    word = workflow_pb2.OutcomeKind.Name(outcome.kind).removeprefix("OUTCOME_KIND_").lower()
    if outcome.kind in (workflow_pb2.OUTCOME_KIND_SUCCEEDED, workflow_pb2.OUTCOME_KIND_FAILED):
        word += f" (return code {outcome.return_code})"
    elif outcome.signal:
        word += f" (signal {outcome.signal})"
    return f"{word}: {outcome.message}" if outcome.message else word


def describe(event: events_pb2.Event, order: order_pb2.Order) -> str | None:
    """One line about an order event for `order add --wait`, or None for bookkeeping events."""
    kind = event.WhichOneof("kind")
    text: str | None
    if kind == "order_added":
        added = event.order_added.order
        text = f"added to {added.workflow_path} version {added.workflow_version_id}"
        if added.HasField("scheduled_for"):
            text += f", scheduled for {time_text(added.scheduled_for)}"
    elif kind == "order_started":
        text = "started"
    elif kind == "order_attached":
        text = f"attached to agent {event.order_attached.agent}"
    elif kind == "order_processing_started":
        text = f"processing on {event.order_processing_started.processing.subagent_id or 'a subagent'}"
        if order.attempt > 1:
            text += f" (attempt {order.attempt})"
    elif kind == "order_processed":
        text = f"processed: {outcome_text(event.order_processed.outcome)}"
    elif kind == "order_moved":
        text = f"moved to {position_text(event.order_moved.to)}"
    elif kind == "order_failed":
        outcome = event.order_failed.outcome
        if outcome.kind == workflow_pb2.OUTCOME_KIND_FAILED:
            text = outcome_text(outcome)  # "failed (return code 1)"
        else:
            text = f"failed: {outcome_text(outcome)}" if outcome.kind or outcome.message else "failed"
    elif kind == "order_finished":
        outcome = event.order_finished.outcome
        failed = outcome.kind not in (
            workflow_pb2.OUTCOME_KIND_UNSPECIFIED,
            workflow_pb2.OUTCOME_KIND_SUCCEEDED,
        )
        text = f"finished: {outcome_text(outcome)}" if failed else "finished"
    elif kind == "order_deleted":
        text = "deleted"
    elif kind is None and event.id:
        # JOC's mark where it resynchronised the order from the controller's snapshot.
        text = "taken from the controller's snapshot (JOC missed events of it)"
        if order.state == order_pb2.ORDER_STATE_UNSPECIFIED:
            text = "left the controller while JOC was away (how it ended is unknown)"
    else:
        text = None
    return f"{event.order_id} {text}" if text else None


# ---- tables, times, types


def time_text(ts: Any) -> str:
    return str(ts.ToDatetime(tzinfo=UTC).astimezone().isoformat(timespec="seconds"))


def print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]).rstrip())


def type_text(item_type: int) -> str:
    name = items_pb2.ItemType.Name(items_pb2.ItemType.ValueType(item_type))
    return name.removeprefix("ITEM_TYPE_").lower().replace("_", "-")
