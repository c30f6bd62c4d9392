"""How the CLI words things: tables, times, types, order states and one line per order event."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gen.ostinato.common.v1 import events_pb2, items_pb2, order_pb2
from ostinato.workflow.events import kind_of

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


def describe(event: events_pb2.Event, order: order_pb2.Order) -> str | None:
    """One line about an order event for `order add --wait`, or None for bookkeeping events."""
    says = kind_of(event).says
    text = says(event, order) if says is not None else None
    if event.WhichOneof("kind") is None and event.id:
        # JOC's mark where it resynchronised the order from the controller's snapshot.
        text = "taken from the controller's snapshot (JOC missed events of it)"
        if order.state == order_pb2.ORDER_STATE_UNSPECIFIED:
            text = "left the controller while JOC was away (how it ended is unknown)"
    return f"{event.order_id} {text}" if text else None


# ---- tables, times, types


def print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]).rstrip())


def type_text(item_type: int) -> str:
    name = items_pb2.ItemType.Name(items_pb2.ItemType.ValueType(item_type))
    return name.removeprefix("ITEM_TYPE_").lower().replace("_", "-")
