"""A controller's event stream applied to the orders projection: the cursor, batches of events
and resynchronisation from a snapshot."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from gen.ostinato.common.v1 import events_pb2, order_pb2
from joc_svc import naming
from joc_svc.projection import Projected, Route, events_after, next_order, resync_marker, route
from joc_svc.schema import cursors, order_events, order_logs, orders
from joc_svc.store.base import StoreBase
from joc_svc.store.deployments import record_attached
from joc_svc.store.orders import find_order, find_orders, order_row
from ostinato.errors import FailedPrecondition
from ostinato.workflow.orders import TERMINAL_STATES


@dataclass(frozen=True, slots=True)
class Resynced:
    """What a resynchronisation from a controller's snapshot changed."""

    event_id: int
    previous_cursor: int
    taken: list[str]  # orders JOC did not know or knew otherwise: now as the snapshot shows them
    left_unseen: list[str]  # orders that left the controller while JOC was away; end unknown
    gone: list[str]  # orders JOC saw end that the controller has deleted meanwhile
    applied: list[Applied]  # one per changed order, for the streams watching it


class ControllerBehind(FailedPrecondition):
    """A controller's snapshot is older than the events JOC stored from it: the controller's
    journal was renewed or restored from an older backup. JOC never moves its cursor back."""


@dataclass(frozen=True, slots=True)
class Applied:
    """An event that changed JOC's view of an order, with the order after it (for watchers)."""

    event: events_pb2.Event
    projected: Projected


class IngestStore(StoreBase):
    def cursor(self, controller_id: str) -> int:
        with self.engine.connect() as conn:
            return _cursor(conn, controller_id)

    def set_cursor(self, controller_id: str, last_event_id: int) -> None:
        with self._write() as conn:
            _set_cursor(conn, controller_id, last_event_id)

    def apply_events(
        self, controller_id: str, events: Iterable[events_pb2.Event], now: datetime
    ) -> list[Applied]:
        """Applies one batch of a controller's events in ONE transaction: orders projection, event
        history, logs and the cursor commit together, so each event counts exactly once. A batch
        costs a fixed number of statements (rows go by executemany), whatever its size."""
        applied: list[Applied] = []
        with self._write() as conn:
            cursor = _stored_cursor(conn, controller_id)
            fresh = events_after(cursor or 0, events)
            if not fresh:
                return applied
            routed = [(event, route(event)) for event in fresh]
            # Per order touched: its row as stored (None: none yet), and its projection so far.
            touched = {e.order_id for e, r in routed if r in _ORDER_ROUTES}
            stored = find_orders(conn, touched)
            projections = {i: stored[i].projected if i in stored else Projected(None) for i in touched}
            dirty: dict[str, tuple[datetime, datetime]] = {}  # first and last event time
            event_rows: list[dict[str, Any]] = []
            log_rows: list[dict[str, Any]] = []
            for event, where_to in routed:
                if where_to is Route.ITEM:
                    attached = event.item_attached
                    record_attached(
                        conn,
                        controller_id,
                        attached.agent,
                        attached.path,
                        attached.version_id,
                        _event_time(event, now),
                    )
                    continue
                if where_to is Route.IGNORE:
                    continue
                prior = projections[event.order_id]
                at = _event_time(event, now)
                if where_to is Route.LOG:
                    written = event.order_std_written
                    log_rows.append(
                        {
                            "order_id": event.order_id,
                            "seq": event.id,
                            "stream": _STREAM_WORDS[written.stream],
                            "chunk": written.chunk,
                            "timestamp": at,
                        }
                    )
                    applied.append(Applied(event, prior))
                    continue
                event_rows.append(
                    {
                        "controller_id": controller_id,
                        "event_id": event.id,
                        "order_id": event.order_id,
                        "event": event.SerializeToString(),
                    }
                )
                projected = next_order(prior.order, event)
                projections[event.order_id] = projected
                applied.append(Applied(event, projected))
                if projected.order is not None:
                    dirty[event.order_id] = (dirty.get(event.order_id, (at, at))[0], at)
            if event_rows:
                conn.execute(_INSERT_EVENT, event_rows)
            if log_rows:
                conn.execute(_INSERT_LOG, log_rows)
            inserts: list[dict[str, Any]] = []
            updates: list[dict[str, Any]] = []
            for order_id, (first_at, last_at) in dirty.items():
                values = _order_values(projections[order_id], last_at)
                if order_id not in stored:
                    inserts.append(
                        {"order_id": order_id, "controller_id": controller_id, "added_at": first_at, **values}
                    )
                else:
                    updates.append({"b_order_id": order_id, **values})
            if inserts:
                conn.execute(_INSERT_ORDER, inserts)
            if updates:
                conn.execute(_UPDATE_ORDER, updates)
            _store_cursor(conn, controller_id, fresh[-1].id, exists=cursor is not None)
        return applied

    def resync(
        self, controller_id: str, event_id: int, snapshot: Iterable[order_pb2.Order], now: datetime
    ) -> Resynced:
        """Rebuilds JOC's view of a controller's orders from its snapshot as of `event_id`, in ONE
        transaction with the cursor moving to `event_id` (events after it then apply as usual,
        none twice, none lost). Orders of the snapshot are taken as they are; orders JOC shows on
        this controller, not deleted, but absent from the snapshot were deleted meanwhile: those
        JOC saw finish or be cancelled are marked deleted, the others "left unseen" (how they
        ended is unknown: state UNSPECIFIED, the state last seen kept beside). JOC's history of
        events stays; it has a gap where the released events were."""
        taken: list[str] = []
        left: list[str] = []
        gone: list[str] = []
        applied: list[Applied] = []
        with self._write() as conn:
            cursor = _cursor(conn, controller_id)
            if event_id < cursor:
                raise ControllerBehind(
                    f"controller {controller_id}'s snapshot is at event {event_id}, before event"
                    f" {cursor} JOC stored from it: its journal was renewed or restored from an older"
                    " backup"
                )
            held: set[str] = set()
            for order in snapshot:
                held.add(order.id)
                row = find_order(conn, order.id)
                if (
                    row is not None
                    and row.order == order
                    and not row.deleted
                    and row.controller_id == controller_id
                ):
                    continue  # as JOC knows it already
                values: dict[str, Any] = {
                    "controller_id": controller_id,
                    "workflow_path": order.workflow_path,
                    "state": naming.enum_word(order_pb2.OrderState, order.state),
                    "order": order.SerializeToString(),
                    "updated_at": now,
                    "deleted_at": None,
                    "left_unseen_state": None,
                }
                if row is None:
                    conn.execute(
                        orders.insert().values(
                            order_id=order.id, added_at=now, resynced_at_event=event_id, **values
                        )
                    )
                else:
                    conn.execute(
                        orders.update()
                        .where(orders.c.order_id == order.id)
                        .values(resynced_at_event=row.resynced_at_event or event_id, **values)
                    )
                taken.append(order.id)
                applied.append(Applied(resync_marker(event_id, order.id), Projected(order)))
            stale = conn.execute(
                sa.select(orders)
                .where((orders.c.controller_id == controller_id) & orders.c.deleted_at.is_(None))
                .order_by(orders.c.order_id)
            )
            for r in stale.all():
                row = order_row(r)
                if row.order.id in held:
                    continue
                values = {"updated_at": now, "deleted_at": now}
                values["resynced_at_event"] = row.resynced_at_event or event_id
                order = row.order
                if row.order.state in TERMINAL_STATES:
                    gone.append(order.id)
                else:
                    order = order_pb2.Order()
                    order.CopyFrom(row.order)
                    order.state = order_pb2.ORDER_STATE_UNSPECIFIED
                    values["order"] = order.SerializeToString()
                    values["state"] = naming.enum_word(order_pb2.OrderState, order.state)
                    values["left_unseen_state"] = naming.enum_word(order_pb2.OrderState, row.order.state)
                    left.append(order.id)
                conn.execute(orders.update().where(orders.c.order_id == order.id).values(**values))
                applied.append(Applied(resync_marker(event_id, order.id), Projected(order, deleted=True)))
            _set_cursor(conn, controller_id, event_id)
        return Resynced(event_id, cursor, taken, left, gone, applied)


# Statements built once: building a statement (and its cache key) costs JOC more CPU than the
# database spends running it.
_SELECT_CURSOR = sa.select(cursors.c.last_event_id).where(cursors.c.controller_id == sa.bindparam("id"))
_INSERT_CURSOR = cursors.insert()
_UPDATE_CURSOR = cursors.update().where(cursors.c.controller_id == sa.bindparam("b_controller_id"))
_INSERT_ORDER = orders.insert()
_UPDATE_ORDER = orders.update().where(orders.c.order_id == sa.bindparam("b_order_id"))
_INSERT_EVENT = order_events.insert()
_INSERT_LOG = order_logs.insert()
_ORDER_ROUTES = (Route.ORDER, Route.LOG)
_STREAM_WORDS = {v: naming.enum_word(events_pb2.StdStream, v) for v in events_pb2.StdStream.values()}


def _order_values(projected: Projected, last_at: datetime) -> dict[str, Any]:
    """The columns an event changes in the order's row."""
    assert projected.order is not None
    return {
        "workflow_path": projected.order.workflow_path,
        "state": naming.enum_word(order_pb2.OrderState, projected.order.state),
        "order": projected.order.SerializeToString(),
        "updated_at": last_at,
        "deleted_at": last_at if projected.deleted else None,
        # An event after a resynchronisation marked the order gone: the controller holds it.
        "left_unseen_state": None,
    }


def _stored_cursor(conn: sa.Connection, controller_id: str) -> int | None:
    """The last event id stored from the controller; None before its first."""
    value = conn.execute(_SELECT_CURSOR, {"id": controller_id}).scalar_one_or_none()
    return None if value is None else int(value)


def _cursor(conn: sa.Connection, controller_id: str) -> int:
    return _stored_cursor(conn, controller_id) or 0


def _store_cursor(conn: sa.Connection, controller_id: str, last_event_id: int, exists: bool) -> None:
    if exists:
        conn.execute(_UPDATE_CURSOR, {"b_controller_id": controller_id, "last_event_id": last_event_id})
    else:
        conn.execute(_INSERT_CURSOR, {"controller_id": controller_id, "last_event_id": last_event_id})


def _set_cursor(conn: sa.Connection, controller_id: str, last_event_id: int) -> None:
    _store_cursor(conn, controller_id, last_event_id, _stored_cursor(conn, controller_id) is not None)


def _event_time(event: events_pb2.Event, now: datetime) -> datetime:
    return event.timestamp.ToDatetime(tzinfo=UTC) if event.HasField("timestamp") else now
