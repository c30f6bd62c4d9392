"""The orders projection as JOC shows it: order rows, their events and job output."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from gen.ostinato.common.v1 import events_pb2, order_pb2
from joc_svc import naming
from joc_svc.projection import Projected
from joc_svc.schema import order_events, order_logs, orders
from joc_svc.store.audit import AuditEntry, write_audit
from joc_svc.store.base import StoreBase, utc
from ostinato.errors import NotFound


@dataclass(frozen=True, slots=True)
class OrderRow:
    order: order_pb2.Order
    controller_id: str
    added_at: datetime
    updated_at: datetime
    deleted: bool
    # The snapshot event id JOC first resynchronised the order from (0: never): its stored
    # history has a gap before it.
    resynced_at_event: int = 0
    # The order left its controller while JOC was away (its end is unknown): the state JOC saw last.
    left_unseen_state: int | None = None

    @property
    def projected(self) -> Projected:
        return Projected(self.order, self.deleted)


@dataclass(frozen=True, slots=True)
class OrderFilter:
    """Which orders a page shows. `workflow` is a path, or a folder ending in "/" (everything
    below it); `text` a part of the order id; `state` an OrderState word; `late`: fresh orders
    whose start passed LATE_AFTER ago."""

    state: str = ""
    workflow: str = ""
    text: str = ""
    late: bool = False


@dataclass(frozen=True, slots=True)
class OrderPage:
    rows: list[OrderRow]
    total: int  # orders that match the filter
    counts: dict[str, int]  # per state word, of the orders that match the filter but its state
    late: int  # late orders among those


@dataclass(frozen=True, slots=True)
class LogRow:
    seq: int
    stream: int  # events_pb2.StdStream
    chunk: str
    timestamp: datetime


class OrderStore(StoreBase):
    def add_orders(
        self,
        added: Sequence[tuple[order_pb2.Order, datetime]],
        controller_id: str,
        audit: Sequence[AuditEntry] = (),
    ) -> list[bool]:
        """Records orders the controller accepted, each with the time it was asked for, unless its
        events got here first (False for those), and the audit lines of the request, in ONE
        transaction."""
        with self._write() as conn:
            known = set(find_orders(conn, {order.id for order, _ in added}))
            rows = []
            recorded = []
            for order, at in added:
                recorded.append(order.id not in known)
                if order.id in known:
                    continue
                known.add(order.id)
                rows.append(
                    {
                        "order_id": order.id,
                        "controller_id": controller_id,
                        "workflow_path": order.workflow_path,
                        "state": naming.enum_word(order_pb2.OrderState, order.state),
                        "order": order.SerializeToString(),
                        "added_at": at,
                        "updated_at": at,
                    }
                )
            if rows:
                conn.execute(_INSERT_ORDER, rows)
            write_audit(conn, audit)
            return recorded

    def list_orders(
        self, state: int = order_pb2.ORDER_STATE_UNSPECIFIED, workflow_path: str = "", limit: int = 0
    ) -> list[OrderRow]:
        query = sa.select(orders).order_by(orders.c.added_at.desc(), orders.c.order_id)
        if state:
            query = query.where(orders.c.state == naming.enum_word(order_pb2.OrderState, state))
        if workflow_path:
            query = query.where(orders.c.workflow_path == workflow_path)
        if limit > 0:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [order_row(r) for r in conn.execute(query)]

    def page_orders(self, chosen: OrderFilter, offset: int, limit: int, now: datetime) -> OrderPage:
        """One page of the orders that match, newest first, with the counts by state: what the
        web view's table shows. Costs a page of rows, a count per state and a look at the fresh
        orders older than LATE_AFTER, however many orders there are."""
        where = _matching(chosen)
        with self.engine.connect() as conn:
            by_state = sa.select(orders.c.state, sa.func.count().label("n")).group_by(orders.c.state)
            counts = {r.state: int(r.n) for r in conn.execute(by_state.where(where))}
            late_ids = _late(conn, where, now)
            if chosen.late:
                ids = late_ids[offset : offset + limit]
                found = find_orders(conn, set(ids))
                rows = [found[i] for i in ids if i in found]
                total = len(late_ids)
            else:
                query = sa.select(orders).where(where).order_by(orders.c.added_at.desc(), orders.c.order_id)
                if chosen.state:
                    query = query.where(orders.c.state == chosen.state)
                rows = [order_row(r) for r in conn.execute(query.offset(offset).limit(limit))]
                total = counts.get(chosen.state, 0) if chosen.state else sum(counts.values())
        return OrderPage(rows, total, counts, len(late_ids))

    def started_times(self, order_ids: Iterable[str]) -> dict[str, datetime]:
        """When each order started (its OrderStarted event), for the orders that have: the event
        is among an order's first ones, so only those are read, however long its history."""
        ids = list(dict.fromkeys(order_ids))
        if not ids:
            return {}
        number = (
            sa.func.row_number()
            .over(partition_by=order_events.c.order_id, order_by=order_events.c.event_id)
            .label("n")
        )
        first = (
            sa.select(order_events.c.order_id, order_events.c.event, number)
            .where(order_events.c.order_id.in_(ids))
            .subquery()
        )
        found: dict[str, datetime] = {}
        with self.engine.connect() as conn:
            early = sa.select(first.c.order_id, first.c.event).where(first.c.n <= _STARTED_WITHIN)
            for r in conn.execute(early):
                if r.order_id in found:
                    continue
                event = events_pb2.Event.FromString(r.event)
                if event.WhichOneof("kind") == "order_started":
                    found[r.order_id] = event.timestamp.ToDatetime(tzinfo=UTC)
        return found

    def order_controllers(self, order_ids: Iterable[str]) -> dict[str, str]:
        """order id -> the controller holding it, for the orders JOC knows."""
        ids = list(dict.fromkeys(order_ids))
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(orders.c.order_id, orders.c.controller_id).where(orders.c.order_id.in_(ids))
            )
            return {r.order_id: r.controller_id for r in rows}

    def get_order(self, order_id: str) -> OrderRow:
        with self.engine.connect() as conn:
            return _one_order(conn, order_id)

    def order_events(self, order_id: str) -> list[events_pb2.Event]:
        """The order's events, job output excluded."""
        with self.engine.connect() as conn:
            return _order_events(conn, order_id)

    def order_logs(self, order_id: str, after_seq: int = 0, limit: int = 0) -> list[LogRow]:
        """The order's output after `after_seq`, at most `limit` chunks (0: all)."""
        with self.engine.connect() as conn:
            _one_order(conn, order_id)
            return _order_logs(conn, order_id, after_seq, limit)

    def order_history(self, order_id: str) -> tuple[OrderRow, list[events_pb2.Event]]:
        """The order row and all its events with job output as OrderStdWritten events, in id order,
        read in one transaction so that it matches the row."""
        with self.engine.begin() as conn:
            row = _one_order(conn, order_id)
            events = _order_events(conn, order_id)
            events += [log_event(order_id, r) for r in _order_logs(conn, order_id, 0)]
        events.sort(key=lambda e: e.id)
        return row, events


# A fresh order whose start passed this long ago is late (as the daily plan's orders).
LATE_AFTER = timedelta(seconds=60)
# OrderStarted comes after OrderAdded and the attachment's few events.
_STARTED_WITHIN = 8


def _matching(chosen: OrderFilter) -> Any:
    where: Any = sa.true()
    if chosen.workflow.endswith("/"):
        where = where & orders.c.workflow_path.startswith(chosen.workflow, autoescape=True)
    elif chosen.workflow:
        where = where & (orders.c.workflow_path == chosen.workflow)
    if chosen.text:
        where = where & orders.c.order_id.contains(chosen.text, autoescape=True)
    return where


def _late(conn: sa.Connection, where: Any, now: datetime) -> list[str]:
    """The late orders among those matching, newest first. Only fresh orders added LATE_AFTER
    ago can be late; their start time is inside the order."""
    query = (
        sa.select(orders.c.order_id, orders.c.order, orders.c.added_at)
        .where(where & (orders.c.state == "FRESH") & orders.c.deleted_at.is_(None))
        .where(orders.c.added_at <= now - LATE_AFTER)
        .order_by(orders.c.added_at.desc(), orders.c.order_id)
    )
    late = []
    for r in conn.execute(query):
        order = order_pb2.Order.FromString(r.order)
        start = utc(r.added_at)
        if order.HasField("scheduled_for"):
            start = order.scheduled_for.ToDatetime(tzinfo=UTC)
        if start + LATE_AFTER < now:
            late.append(r.order_id)
    return late


def log_event(order_id: str, row: LogRow) -> events_pb2.Event:
    """A stored log chunk as the OrderStdWritten event it came from."""
    event = events_pb2.Event(id=row.seq, order_id=order_id)
    event.timestamp.FromDatetime(row.timestamp)
    event.order_std_written.stream = row.stream  # type: ignore[assignment]
    event.order_std_written.chunk = row.chunk
    return event


def order_row(r: Any) -> OrderRow:
    return OrderRow(
        order_pb2.Order.FromString(r.order),
        r.controller_id,
        utc(r.added_at),
        utc(r.updated_at),
        r.deleted_at is not None,
        int(r.resynced_at_event or 0),
        naming.enum_value(order_pb2.OrderState, r.left_unseen_state) if r.left_unseen_state else None,
    )


# Statements built once: building a statement (and its cache key) costs JOC more CPU than the
# database spends running it.
_SELECT_ORDERS = sa.select(orders).where(orders.c.order_id.in_(sa.bindparam("ids", expanding=True)))
_INSERT_ORDER = orders.insert()
# Order ids per SELECT ... IN: well below the bound parameters SQLite and PostgreSQL take.
_IDS_PER_SELECT = 500


def find_orders(conn: sa.Connection, order_ids: set[str]) -> dict[str, OrderRow]:
    """The stored rows of the orders JOC has, in one query per 500 ids."""
    found: dict[str, OrderRow] = {}
    ids = sorted(order_ids)
    for i in range(0, len(ids), _IDS_PER_SELECT):
        for r in conn.execute(_SELECT_ORDERS, {"ids": ids[i : i + _IDS_PER_SELECT]}):
            found[r.order_id] = order_row(r)
    return found


def find_order(conn: sa.Connection, order_id: str) -> OrderRow | None:
    r = conn.execute(sa.select(orders).where(orders.c.order_id == order_id)).first()
    return order_row(r) if r else None


def _one_order(conn: sa.Connection, order_id: str) -> OrderRow:
    row = find_order(conn, order_id)
    if row is None:
        raise NotFound(f"no order {order_id}", field="order_id")
    return row


def _order_events(conn: sa.Connection, order_id: str) -> list[events_pb2.Event]:
    rows = conn.execute(
        sa.select(order_events.c.event)
        .where(order_events.c.order_id == order_id)
        .order_by(order_events.c.event_id)
    )
    return [events_pb2.Event.FromString(r.event) for r in rows]


def _order_logs(conn: sa.Connection, order_id: str, after_seq: int, limit: int = 0) -> list[LogRow]:
    query = (
        sa.select(order_logs)
        .where((order_logs.c.order_id == order_id) & (order_logs.c.seq > after_seq))
        .order_by(order_logs.c.seq)
    )
    rows = conn.execute(query.limit(limit) if limit else query)
    return [
        LogRow(r.seq, naming.enum_value(events_pb2.StdStream, r.stream), r.chunk, utc(r.timestamp))
        for r in rows
    ]
