"""Pure decisions of JOC's order projection: which controller events to take, where each goes, and
the order after it. Order semantics themselves live in ostinato.workflow.orders (one place for all).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from gen.ostinato.common.v1 import events_pb2, order_pb2
from ostinato.workflow.events import Route, kind_of
from ostinato.workflow.orders import END_STATES, TERMINAL_STATES, apply_order_event

log = logging.getLogger(__name__)


def route(event: events_pb2.Event) -> Route:
    return kind_of(event).route


def events_after(cursor: int, events: Iterable[events_pb2.Event]) -> list[events_pb2.Event]:
    """The events not applied yet, in id order, each once: a resumed stream may repeat some."""
    fresh: dict[int, events_pb2.Event] = {}
    for event in events:
        if event.id > cursor:
            fresh.setdefault(event.id, event)
    return [fresh[i] for i in sorted(fresh)]


@dataclass(frozen=True, slots=True)
class Projected:
    """The order after an event. `order` stays the last known one when the event deletes it."""

    order: order_pb2.Order | None
    deleted: bool = False


def next_order(prior: order_pb2.Order | None, event: events_pb2.Event) -> Projected:
    kind = event.WhichOneof("kind")
    if kind == "order_deleted":
        # JOC keeps the history of orders the controller has forgotten.
        return Projected(prior, deleted=True)
    if kind == "order_std_written":
        return Projected(prior)
    # OrderAdded starts the order afresh: JOC's placeholder from AddOrder is not a real prior state.
    base = None
    if kind != "order_added" and prior is not None:
        # apply_order_event mutates its argument; the prior order is still referenced by watchers.
        base = order_pb2.Order()
        base.CopyFrom(prior)
    try:
        after = apply_order_event(base, event)
    except Exception:
        # One event JOC cannot apply must not wedge ingestion of every later event.
        log.exception(
            "cannot apply event %d (%s) to order %s; keeping it as it was", event.id, kind, event.order_id
        )
        return Projected(prior)
    return Projected(after if after is not None else prior)


def is_final(projected: Projected) -> bool:
    """No more events will change the order: watchers and log followers end here."""
    return projected.deleted or (projected.order is not None and projected.order.state in END_STATES)


def replay(
    events: Iterable[events_pb2.Event], latest: Projected, resynced_at: int = 0
) -> Iterator[tuple[events_pb2.Event, Projected]]:
    """Each stored event with the order after it, recomputed from the order's start, up to the
    event that ended it for good (finished, cancelled). When JOC missed the start (released before
    it was stored), the states in between are unknown: every event comes with `latest`, the order
    as JOC knows it now. So do the events after `resynced_at`, where JOC missed events and took
    the order from a controller's snapshot; the gap itself shows as an event without kind (the
    snapshot's id) with `latest`."""
    events = list(events)
    known_start = bool(events) and events[0].WhichOneof("kind") == "order_added"
    projected = Projected(None)
    gap = resynced_at > 0
    for event in events:
        if gap and event.id > resynced_at:
            gap = False
            yield resync_marker(resynced_at, event.order_id), latest
        computed = known_start and not (resynced_at and event.id > resynced_at)
        projected = next_order(projected.order, event) if computed else latest
        yield event, projected
        # Only OrderDeleted follows a finish or cancel; a failed order may be resumed later.
        if computed and (projected.deleted or _terminal(projected.order)):
            return
    if gap:
        yield resync_marker(resynced_at, latest.order.id if latest.order else ""), latest


def resync_marker(event_id: int, order_id: str) -> events_pb2.Event:
    """What watchers of an order see where JOC resynchronised it from a controller's snapshot: an
    event without kind, with the snapshot's event id."""
    return events_pb2.Event(id=event_id, order_id=order_id)


def _terminal(order: order_pb2.Order | None) -> bool:
    return order is not None and order.state in TERMINAL_STATES
