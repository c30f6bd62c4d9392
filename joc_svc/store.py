"""JOC's database: inventory, deployment history, the orders projection, order events and logs, the
controller event cursors and the audit log. SQLAlchemy Core over a URL (SQLite default, PostgreSQL).

Every method is blocking and short; the servicers and the event ingestion call them through
asyncio.to_thread so the event loop never waits on the database. Writes take one process-wide lock:
SQLite has a single writer anyway, and a deferred SQLite transaction that reads before it writes
fails at once (no busy wait) when another connection wrote in between.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from gen.ostinato.common.v1 import events_pb2, items_pb2, order_pb2
from gen.ostinato.joc.v1 import joc_pb2
from joc_svc import naming
from joc_svc.projection import Projected, Route, events_after, next_order, route
from ostinato.errors import InvalidArgument, NotFound

metadata = sa.MetaData()

# SQLite autoincrements only an INTEGER PRIMARY KEY; PostgreSQL gets BIGINT identity.
_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Time = sa.DateTime(timezone=True)

objects = sa.Table(
    "inventory_objects",
    metadata,
    sa.Column("path", sa.String, primary_key=True),
    sa.Column("type", sa.String, primary_key=True),  # ItemType word, e.g. WORKFLOW
    sa.Column("json", sa.Text, nullable=False),
    sa.Column("modified_at", _Time, nullable=False),
    sa.Column("deployed_version_id", sa.String, nullable=False, default=""),
)

deployments = sa.Table(
    "deployments",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("path", sa.String, nullable=False, index=True),
    sa.Column("type", sa.String, nullable=False),
    sa.Column("version_id", sa.String, nullable=False),
    sa.Column("controller_id", sa.String, nullable=False),
    sa.Column("status", sa.String, nullable=False),  # DEPLOYED or NOT_DEPLOYED
    sa.Column("message", sa.Text, nullable=False, default=""),
    sa.Column("account", sa.String, nullable=False, default=""),
    sa.Column("requested_at", _Time, nullable=False),
    sa.Column("confirmed_at", _Time),
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("order_id", sa.String, primary_key=True),
    sa.Column("controller_id", sa.String, nullable=False),
    sa.Column("workflow_path", sa.String, nullable=False, index=True),
    sa.Column("state", sa.String, nullable=False, index=True),  # OrderState word, e.g. PROCESSING
    sa.Column("order", sa.LargeBinary, nullable=False),  # ostinato.common.v1.Order
    sa.Column("added_at", _Time, nullable=False, index=True),
    sa.Column("updated_at", _Time, nullable=False),
    # Set when the controller deleted the order from its state; JOC keeps the history.
    sa.Column("deleted_at", _Time),
)

order_events = sa.Table(
    "order_events",
    metadata,
    sa.Column("controller_id", sa.String, primary_key=True),
    sa.Column("event_id", sa.BigInteger, primary_key=True),
    sa.Column("order_id", sa.String, nullable=False, index=True),
    sa.Column("event", sa.LargeBinary, nullable=False),  # ostinato.common.v1.Event
)

order_logs = sa.Table(
    "order_logs",
    metadata,
    sa.Column("order_id", sa.String, primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),  # the OrderStdWritten event's id
    sa.Column("stream", sa.String, nullable=False),  # STDOUT or STDERR
    sa.Column("chunk", sa.Text, nullable=False),
    sa.Column("timestamp", _Time, nullable=False),
)

cursors = sa.Table(
    "controller_event_cursors",
    metadata,
    sa.Column("controller_id", sa.String, primary_key=True),
    sa.Column("last_event_id", sa.BigInteger, nullable=False),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("account", sa.String, nullable=False),
    sa.Column("action", sa.String, nullable=False),
    sa.Column("object", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("at", _Time, nullable=False, index=True),
)


@dataclass(frozen=True, slots=True)
class ObjectRow:
    path: str
    type: int  # items_pb2.ItemType
    json: str
    modified_at: datetime
    deployed_version_id: str


@dataclass(frozen=True, slots=True)
class DeploymentRow:
    path: str
    type: int
    version_id: str
    controller_id: str
    status: int  # joc_pb2.DeploymentStatus
    message: str
    account: str
    requested_at: datetime
    confirmed_at: datetime | None
    id: int = 0


@dataclass(frozen=True, slots=True)
class OrderRow:
    order: order_pb2.Order
    controller_id: str
    added_at: datetime
    updated_at: datetime
    deleted: bool

    @property
    def projected(self) -> Projected:
        return Projected(self.order, self.deleted)


@dataclass(frozen=True, slots=True)
class LogRow:
    seq: int
    stream: int  # events_pb2.StdStream
    chunk: str
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    account: str
    action: str
    object: str
    reason: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Applied:
    """An event that changed JOC's view of an order, with the order after it (for watchers)."""

    event: events_pb2.Event
    projected: Projected


def default_url(data_dir: Any) -> str:
    return f"sqlite:///{data_dir}/joc.db"


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self._write_lock = threading.Lock()
        sqlite = url.startswith("sqlite")
        self.engine = sa.create_engine(url, connect_args={"timeout": 30} if sqlite else {})
        if sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def _write(self) -> Any:
        return _Locked(self._write_lock, self.engine)

    # ---- inventory

    def put_object(self, path: str, type: int, json_text: str, now: datetime) -> ObjectRow:
        key = (objects.c.path == path) & (objects.c.type == _type_word(type))
        with self._write() as conn:
            if conn.execute(sa.select(objects.c.path).where(key)).first():
                conn.execute(objects.update().where(key).values(json=json_text, modified_at=now))
            else:
                conn.execute(
                    objects.insert().values(
                        path=path,
                        type=_type_word(type),
                        json=json_text,
                        modified_at=now,
                        deployed_version_id="",
                    )
                )
            return _object(conn.execute(sa.select(objects).where(key)).one())

    def get_object(self, path: str, type: int = items_pb2.ITEM_TYPE_UNSPECIFIED) -> ObjectRow:
        with self.engine.connect() as conn:
            return _one_object(conn, path, type)

    def list_objects(
        self, folder: str, recursive: bool, type: int = items_pb2.ITEM_TYPE_UNSPECIFIED
    ) -> list[ObjectRow]:
        prefix = naming.folder_prefix(naming.check_folder(folder))
        condition = objects.c.path.startswith(prefix, autoescape=True)
        if not recursive:
            condition &= ~objects.c.path.like(_like_escape(prefix) + "%/%", escape="\\")
        if type:
            condition &= objects.c.type == _type_word(type)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(objects).where(condition).order_by(objects.c.path, objects.c.type))
            return [_object(r) for r in rows]

    def remove_object(self, path: str, type: int = items_pb2.ITEM_TYPE_UNSPECIFIED) -> ObjectRow:
        with self._write() as conn:
            row = _one_object(conn, path, type)
            conn.execute(
                objects.delete().where(
                    (objects.c.path == row.path) & (objects.c.type == _type_word(row.type))
                )
            )
            return row

    def objects_to_deploy(self, paths: Iterable[str]) -> list[ObjectRow]:
        """The objects named by paths: an object's path names it (all its types), else a folder
        path names every object below it. NOT_FOUND names a path that names nothing."""
        found: dict[tuple[str, int], ObjectRow] = {}
        for path in paths:
            rows: list[ObjectRow] = []
            if path.rstrip("/"):
                naming.check_path(path.rstrip("/"), "paths")
                with self.engine.connect() as conn:
                    rows = [
                        _object(r) for r in conn.execute(sa.select(objects).where(objects.c.path == path))
                    ]
            if not rows:
                rows = self.list_objects(path, recursive=True)
            if not rows:
                raise NotFound(f"no inventory object or folder {path}", field="paths")
            for row in rows:
                found[(row.path, row.type)] = row
        return [found[k] for k in sorted(found)]

    # ---- deployments

    def record_deployments(self, rows: Sequence[DeploymentRow]) -> list[DeploymentRow]:
        """Writes the history rows and marks deployed objects with their new version id."""
        result = []
        with self._write() as conn:
            for row in rows:
                values = {
                    "path": row.path,
                    "type": _type_word(row.type),
                    "version_id": row.version_id,
                    "controller_id": row.controller_id,
                    "status": naming.enum_word(joc_pb2.DeploymentStatus, row.status),
                    "message": row.message,
                    "account": row.account,
                    "requested_at": row.requested_at,
                    "confirmed_at": row.confirmed_at,
                }
                new_id = conn.execute(
                    deployments.insert().values(**values).returning(deployments.c.id)
                ).scalar_one()
                result.append(
                    _deployment(conn.execute(sa.select(deployments).where(deployments.c.id == new_id)).one())
                )
                if row.status == joc_pb2.DEPLOYMENT_STATUS_DEPLOYED:
                    conn.execute(
                        objects.update()
                        .where((objects.c.path == row.path) & (objects.c.type == _type_word(row.type)))
                        .values(deployed_version_id=row.version_id)
                    )
        return result

    def list_deployments(self, path: str = "", limit: int = 0) -> list[DeploymentRow]:
        query = sa.select(deployments).order_by(deployments.c.id.desc())
        if path:
            query = query.where(deployments.c.path == path)
        if limit > 0:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [_deployment(r) for r in conn.execute(query)]

    # ---- orders

    def add_order(self, order: order_pb2.Order, controller_id: str, now: datetime) -> bool:
        """Records an order the controller accepted, unless its events got here first."""
        with self._write() as conn:
            if conn.execute(sa.select(orders.c.order_id).where(orders.c.order_id == order.id)).first():
                return False
            conn.execute(
                orders.insert().values(
                    order_id=order.id,
                    controller_id=controller_id,
                    workflow_path=order.workflow_path,
                    state=naming.enum_word(order_pb2.OrderState, order.state),
                    order=order.SerializeToString(),
                    added_at=now,
                    updated_at=now,
                )
            )
            return True

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
            return [_order(r) for r in conn.execute(query)]

    def get_order(self, order_id: str) -> OrderRow:
        with self.engine.connect() as conn:
            return _one_order(conn, order_id)

    def order_events(self, order_id: str) -> list[events_pb2.Event]:
        """The order's events, job output excluded."""
        with self.engine.connect() as conn:
            return _order_events(conn, order_id)

    def order_logs(self, order_id: str, after_seq: int = 0) -> list[LogRow]:
        with self.engine.connect() as conn:
            _one_order(conn, order_id)
            return _order_logs(conn, order_id, after_seq)

    def order_history(self, order_id: str) -> tuple[OrderRow, list[events_pb2.Event]]:
        """The order row and all its events with job output as OrderStdWritten events, in id order,
        read in one transaction so that it matches the row."""
        with self.engine.begin() as conn:
            row = _one_order(conn, order_id)
            events = _order_events(conn, order_id)
            events += [log_event(order_id, r) for r in _order_logs(conn, order_id, 0)]
        events.sort(key=lambda e: e.id)
        return row, events

    # ---- controller events

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
        history, logs and the cursor commit together, so each event counts exactly once."""
        applied: list[Applied] = []
        with self._write() as conn:
            cursor = _cursor(conn, controller_id)
            fresh = events_after(cursor, events)
            if not fresh:
                return applied
            # Per order touched: whether its row exists, and its projection so far in this batch.
            orders_seen: dict[str, tuple[bool, Projected]] = {}
            dirty: dict[str, tuple[datetime, datetime]] = {}  # first and last event time
            for event in fresh:
                where_to = route(event)
                if where_to is Route.IGNORE:
                    continue
                if event.order_id not in orders_seen:
                    row = _find_order(conn, event.order_id)
                    orders_seen[event.order_id] = (row is not None, row.projected if row else Projected(None))
                exists, prior = orders_seen[event.order_id]
                at = _event_time(event, now)
                if where_to is Route.LOG:
                    written = event.order_std_written
                    conn.execute(
                        order_logs.insert().values(
                            order_id=event.order_id,
                            seq=event.id,
                            stream=naming.enum_word(events_pb2.StdStream, written.stream),
                            chunk=written.chunk,
                            timestamp=at,
                        )
                    )
                    applied.append(Applied(event, prior))
                    continue
                conn.execute(
                    order_events.insert().values(
                        controller_id=controller_id,
                        event_id=event.id,
                        order_id=event.order_id,
                        event=event.SerializeToString(),
                    )
                )
                projected = next_order(prior.order, event)
                orders_seen[event.order_id] = (exists, projected)
                applied.append(Applied(event, projected))
                if projected.order is not None:
                    dirty[event.order_id] = (dirty.get(event.order_id, (at, at))[0], at)
            for order_id, (first_at, last_at) in dirty.items():
                exists, projected = orders_seen[order_id]
                _save_order(conn, controller_id, order_id, exists, projected, first_at, last_at)
            _set_cursor(conn, controller_id, fresh[-1].id)
        return applied

    # ---- audit

    def audit(self, account: str, action: str, object: str, reason: str, now: datetime) -> None:
        with self._write() as conn:
            conn.execute(
                audit_log.insert().values(
                    account=account, action=action, object=object, reason=reason, at=now
                )
            )

    def audit_entries(self, limit: int = 100) -> list[AuditRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit))
            return [AuditRow(r.id, r.account, r.action, r.object, r.reason, _utc(r.at)) for r in rows]


class _Locked:
    """A write transaction under the store's write lock."""

    def __init__(self, lock: threading.Lock, engine: sa.Engine) -> None:
        self._lock = lock
        self._engine = engine
        self._tx: Any = None

    def __enter__(self) -> sa.Connection:
        self._lock.acquire()
        try:
            self._tx = self._engine.begin()
            return self._tx.__enter__()
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, *exc: Any) -> None:
        try:
            self._tx.__exit__(*exc)
        finally:
            self._lock.release()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers (watch streams, listings) never wait for the ingestion's writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def log_event(order_id: str, row: LogRow) -> events_pb2.Event:
    """A stored log chunk as the OrderStdWritten event it came from."""
    event = events_pb2.Event(id=row.seq, order_id=order_id)
    event.timestamp.FromDatetime(row.timestamp)
    event.order_std_written.stream = row.stream  # type: ignore[assignment]
    event.order_std_written.chunk = row.chunk
    return event


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _type_word(type: int) -> str:
    return naming.enum_word(items_pb2.ItemType, type)


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything JOC stores is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _event_time(event: events_pb2.Event, now: datetime) -> datetime:
    return event.timestamp.ToDatetime(tzinfo=UTC) if event.HasField("timestamp") else now


def _object(r: Any) -> ObjectRow:
    return ObjectRow(
        r.path,
        naming.enum_value(items_pb2.ItemType, r.type),
        r.json,
        _utc(r.modified_at),
        r.deployed_version_id,
    )


def _one_object(conn: sa.Connection, path: str, type: int) -> ObjectRow:
    query = sa.select(objects).where(objects.c.path == path)
    if type:
        query = query.where(objects.c.type == _type_word(type))
    rows = [_object(r) for r in conn.execute(query)]
    if not rows:
        raise NotFound(f"no inventory object {path}", field="path")
    if len(rows) > 1:
        words = ", ".join(_type_word(r.type) for r in rows)
        raise InvalidArgument(f"{path} names objects of several types ({words}); give one", field="type")
    return rows[0]


def _deployment(r: Any) -> DeploymentRow:
    return DeploymentRow(
        path=r.path,
        type=naming.enum_value(items_pb2.ItemType, r.type),
        version_id=r.version_id,
        controller_id=r.controller_id,
        status=naming.enum_value(joc_pb2.DeploymentStatus, r.status),
        message=r.message,
        account=r.account,
        requested_at=_utc(r.requested_at),
        confirmed_at=_utc(r.confirmed_at) if r.confirmed_at else None,
        id=r.id,
    )


def _order(r: Any) -> OrderRow:
    return OrderRow(
        order_pb2.Order.FromString(r.order),
        r.controller_id,
        _utc(r.added_at),
        _utc(r.updated_at),
        r.deleted_at is not None,
    )


def _find_order(conn: sa.Connection, order_id: str) -> OrderRow | None:
    r = conn.execute(sa.select(orders).where(orders.c.order_id == order_id)).first()
    return _order(r) if r else None


def _one_order(conn: sa.Connection, order_id: str) -> OrderRow:
    row = _find_order(conn, order_id)
    if row is None:
        raise NotFound(f"no order {order_id}", field="order_id")
    return row


def _save_order(
    conn: sa.Connection,
    controller_id: str,
    order_id: str,
    exists: bool,
    projected: Projected,
    first_at: datetime,
    last_at: datetime,
) -> None:
    assert projected.order is not None
    values: dict[str, Any] = {
        "workflow_path": projected.order.workflow_path,
        "state": naming.enum_word(order_pb2.OrderState, projected.order.state),
        "order": projected.order.SerializeToString(),
        "updated_at": last_at,
        "deleted_at": last_at if projected.deleted else None,
    }
    if not exists:
        conn.execute(
            orders.insert().values(
                order_id=order_id, controller_id=controller_id, added_at=first_at, **values
            )
        )
    else:
        conn.execute(orders.update().where(orders.c.order_id == order_id).values(**values))


def _order_events(conn: sa.Connection, order_id: str) -> list[events_pb2.Event]:
    rows = conn.execute(
        sa.select(order_events.c.event)
        .where(order_events.c.order_id == order_id)
        .order_by(order_events.c.event_id)
    )
    return [events_pb2.Event.FromString(r.event) for r in rows]


def _order_logs(conn: sa.Connection, order_id: str, after_seq: int) -> list[LogRow]:
    rows = conn.execute(
        sa.select(order_logs)
        .where((order_logs.c.order_id == order_id) & (order_logs.c.seq > after_seq))
        .order_by(order_logs.c.seq)
    )
    return [
        LogRow(r.seq, naming.enum_value(events_pb2.StdStream, r.stream), r.chunk, _utc(r.timestamp))
        for r in rows
    ]


def _cursor(conn: sa.Connection, controller_id: str) -> int:
    value = conn.execute(
        sa.select(cursors.c.last_event_id).where(cursors.c.controller_id == controller_id)
    ).scalar_one_or_none()
    return int(value or 0)


def _set_cursor(conn: sa.Connection, controller_id: str, last_event_id: int) -> None:
    if conn.execute(
        sa.select(cursors.c.controller_id).where(cursors.c.controller_id == controller_id)
    ).first():
        conn.execute(
            cursors.update()
            .where(cursors.c.controller_id == controller_id)
            .values(last_event_id=last_event_id)
        )
    else:
        conn.execute(cursors.insert().values(controller_id=controller_id, last_event_id=last_event_id))
