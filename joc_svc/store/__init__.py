"""JOC's database: inventory, deployment history (with the delivered items and agent confirmations),
releases, the orders projection, order events and logs, the controller event cursors and the audit
log. SQLAlchemy Core over a URL (SQLite default, PostgreSQL); the schema comes from
joc_svc.migrations, the tables' definitions from joc_svc.schema.

Every method is blocking and short; the servicers and the event ingestion call them through
asyncio.to_thread so the event loop never waits on the database. Writes take one process-wide lock:
SQLite has a single writer anyway, and a deferred SQLite transaction that reads before it writes
fails at once (no busy wait) when another connection wrote in between.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from gen.ostinato.common.v1 import events_pb2, items_pb2, order_pb2
from gen.ostinato.joc.v1 import joc_pb2
from joc_svc import inventory, migrations, naming, schema
from joc_svc.projection import Projected, Route, events_after, next_order, resync_marker, route
from ostinato.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ostinato.workflow.orders import TERMINAL_STATES

# Re-exported: tests and tools name the tables through the store.
metadata = schema.metadata
objects = schema.objects
deployments = schema.deployments
deployed_items = schema.deployed_items
deployment_agents = schema.deployment_agents
releases = schema.releases
orders = schema.orders
order_events = schema.order_events
order_logs = schema.order_logs
cursors = schema.cursors
audit_log = schema.audit_log


@dataclass(frozen=True, slots=True)
class ObjectRow:
    path: str
    type: int  # items_pb2.ItemType
    json: str
    modified_at: datetime
    deployed_version_id: str
    released_at: datetime | None = None


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
    pending: bool = False
    attempts: int = 0
    signer: str = ""
    agents: tuple[tuple[str, datetime], ...] = ()  # (agent, attached at): ItemAttached events


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
        self.schema_versions = migrations.migrate(self.engine)

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

    def object_keys(self) -> set[tuple[int, str]]:
        """(type, path) of every object: what references are resolved against."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(objects.c.type, objects.c.path))
            return {(naming.enum_value(items_pb2.ItemType, r.type), r.path) for r in rows}

    def remove_folder(self, folder: str) -> list[ObjectRow]:
        """Removes every object below a folder; NOT_FOUND when there is none."""
        rows = self.list_objects(folder, recursive=True)
        if not rows:
            raise NotFound(f"no inventory objects below {folder}", field="path")
        with self._write() as conn:
            for row in rows:
                conn.execute(
                    objects.delete().where(
                        (objects.c.path == row.path) & (objects.c.type == _type_word(row.type))
                    )
                )
        return rows

    def move(self, path: str, type: int, new_path: str, now: datetime) -> list[ObjectRow]:
        """Renames or moves an object (or every object below a folder) and rewrites the references
        of other drafts to follow. The moved objects count as never deployed or released at their
        new paths (controllers still hold them at the old ones)."""
        with self._write() as conn:
            query = sa.select(objects).where(objects.c.path == path)
            if type:
                query = query.where(objects.c.type == _type_word(type))
            exact = [_object(r) for r in conn.execute(query.order_by(objects.c.type))]
            if exact:
                moves = [(row, new_path) for row in exact]
            else:
                prefix = naming.folder_prefix(naming.check_folder(path))
                below = [
                    _object(r)
                    for r in conn.execute(
                        sa.select(objects)
                        .where(objects.c.path.startswith(prefix, autoescape=True))
                        .order_by(objects.c.path, objects.c.type)
                    )
                    if not type or naming.enum_value(items_pb2.ItemType, r.type) == type
                ]
                if not below:
                    raise NotFound(f"no inventory object or folder {path}", field="path")
                target = naming.folder_prefix(naming.check_folder(new_path, "new_path"))
                moves = [(row, target + row.path[len(prefix) :]) for row in below]
            moving = {(row.path, row.type) for row, _ in moves}
            for row, target in moves:
                taken = conn.execute(
                    sa.select(objects.c.path).where(
                        (objects.c.path == target) & (objects.c.type == _type_word(row.type))
                    )
                ).first()
                if taken and (target, row.type) not in moving:
                    raise AlreadyExists(
                        f"{inventory.word(row.type)} {target} exists already", field="new_path"
                    )
            # Two steps, so that objects moving onto each other's paths do not collide.
            for i, (row, _) in enumerate(moves):
                conn.execute(
                    objects.update()
                    .where((objects.c.path == row.path) & (objects.c.type == _type_word(row.type)))
                    .values(path=f"//moving/{i}")
                )
            for i, (row, target) in enumerate(moves):
                text = row.json
                if row.type == items_pb2.ITEM_TYPE_WORKFLOW:
                    text = inventory.canonical_draft(row.type, row.json, target)  # the path inside
                conn.execute(
                    objects.update()
                    .where((objects.c.path == f"//moving/{i}") & (objects.c.type == _type_word(row.type)))
                    .values(path=target, json=text, modified_at=now, deployed_version_id="", released_at=None)
                )
            followed = {(row.type, row.path): target for row, target in moves}
            for r in conn.execute(sa.select(objects)).all():
                other = _object(r)
                rewritten = inventory.rewrite_references(other.type, other.json, followed, other.path)
                if rewritten is not None and rewritten != other.json:
                    conn.execute(
                        objects.update()
                        .where((objects.c.path == other.path) & (objects.c.type == r.type))
                        .values(json=rewritten, modified_at=now)
                    )
            return [
                _object(
                    conn.execute(
                        sa.select(objects).where(
                            (objects.c.path == target) & (objects.c.type == _type_word(row.type))
                        )
                    ).one()
                )
                for row, target in moves
            ]

    def release(self, rows: Sequence[ObjectRow], account: str, now: datetime) -> list[ObjectRow]:
        """Records the release of calendars and schedules as they are now."""
        result = []
        with self._write() as conn:
            for row in rows:
                key = (objects.c.path == row.path) & (objects.c.type == _type_word(row.type))
                conn.execute(objects.update().where(key).values(released_at=now))
                conn.execute(
                    releases.insert().values(
                        path=row.path,
                        type=_type_word(row.type),
                        json=row.json,
                        account=account,
                        released_at=now,
                    )
                )
                result.append(_object(conn.execute(sa.select(objects).where(key)).one()))
        return result

    # ---- deployments

    def record_deployments(self, rows: Sequence[DeploymentRow]) -> list[DeploymentRow]:
        """Writes history rows as they are; a DEPLOYED one marks its object with its version id."""
        result = []
        with self._write() as conn:
            for row in rows:
                result.append(_insert_deployment(conn, row))
                if row.status == joc_pb2.DEPLOYMENT_STATUS_DEPLOYED:
                    conn.execute(
                        objects.update()
                        .where((objects.c.path == row.path) & (objects.c.type == _type_word(row.type)))
                        .values(deployed_version_id=row.version_id)
                    )
        return result

    def list_deployments(
        self, path: str = "", limit: int = 0, controller_id: str = "", pending_only: bool = False
    ) -> list[DeploymentRow]:
        query = sa.select(deployments).order_by(deployments.c.id.desc())
        if path:
            query = query.where(deployments.c.path == path)
        if controller_id:
            query = query.where(deployments.c.controller_id == controller_id)
        if pending_only:
            query = query.where(deployments.c.pending.is_(True))
        if limit > 0:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return _with_agents(conn, [_deployment(r) for r in conn.execute(query)])

    def deployments_by_id(self, ids: Sequence[int]) -> list[DeploymentRow]:
        """The rows in the order of `ids`."""
        with self.engine.connect() as conn:
            found = {
                r.id: _deployment(r)
                for r in conn.execute(sa.select(deployments).where(deployments.c.id.in_(ids)))
            }
            return _with_agents(conn, [found[i] for i in ids if i in found])

    def record_pending(
        self,
        items: Sequence[tuple[items_pb2.SignedItem, str]],
        controller_ids: Sequence[str],
        account: str,
        now: datetime,
        skipped: Sequence[DeploymentRow] = (),
    ) -> list[DeploymentRow]:
        """In one transaction: each (item, signer subject) as delivered version, a pending history
        row per item and controller (in that order: items of one controller are delivered in id
        order), and the rows of objects not deployed at all."""
        rows = []
        with self._write() as conn:
            for item, _ in items:
                _keep_item(conn, item, account, now)
            for controller_id in controller_ids:
                for item, signer in items:
                    rows.append(
                        _insert_deployment(
                            conn,
                            DeploymentRow(
                                path=item.path,
                                type=item.type,
                                version_id=item.version_id,
                                controller_id=controller_id,
                                status=joc_pb2.DEPLOYMENT_STATUS_NOT_DEPLOYED,
                                message="not delivered yet",
                                account=account,
                                requested_at=now,
                                confirmed_at=None,
                                pending=True,
                                signer=signer,
                            ),
                        )
                    )
            rows += [_insert_deployment(conn, row) for row in skipped]
        return rows

    def pending_deliveries(
        self, controller_id: str, limit: int = 1000
    ) -> list[tuple[DeploymentRow, items_pb2.SignedItem]]:
        """A controller's pending rows, oldest first, each with the item to deliver."""
        query = (
            sa.select(deployments, deployed_items.c.json, deployed_items.c.signature)
            .join(
                deployed_items,
                (deployed_items.c.path == deployments.c.path)
                & (deployed_items.c.type == deployments.c.type)
                & (deployed_items.c.version_id == deployments.c.version_id),
            )
            .where((deployments.c.controller_id == controller_id) & deployments.c.pending.is_(True))
            .order_by(deployments.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            result = []
            for r in conn.execute(query):
                row = _deployment(r)
                item = _item(row.type, row.path, row.version_id, r.json, r.signature)
                result.append((row, item))
            return result

    def pending_controllers(self) -> set[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(deployments.c.controller_id).where(deployments.c.pending.is_(True)).distinct()
            )
            return {r.controller_id for r in rows}

    def mark_delivered(self, ids: Sequence[int], now: datetime) -> None:
        """The controller confirmed: deployed. Each object shows the newest version confirmed."""
        if not ids:
            return
        with self._write() as conn:
            conn.execute(
                deployments.update()
                .where(deployments.c.id.in_(ids) & deployments.c.pending.is_(True))
                .values(
                    status="DEPLOYED",
                    pending=False,
                    message="",
                    confirmed_at=now,
                    attempts=deployments.c.attempts + 1,
                )
            )
            newest: dict[tuple[str, str], tuple[int, str]] = {}
            for r in conn.execute(sa.select(deployments).where(deployments.c.id.in_(ids))):
                key = (r.path, r.type)
                if key not in newest or r.id > newest[key][0]:
                    newest[key] = (r.id, r.version_id)
            for (path, type_word), (_, version_id) in newest.items():
                conn.execute(
                    objects.update()
                    .where((objects.c.path == path) & (objects.c.type == type_word))
                    .values(deployed_version_id=version_id)
                )

    def mark_attempted(self, ids: Sequence[int], message: str) -> None:
        """A delivery failed for a reason that may pass (the controller is unreachable)."""
        if not ids:
            return
        with self._write() as conn:
            conn.execute(
                deployments.update()
                .where(deployments.c.id.in_(ids) & deployments.c.pending.is_(True))
                .values(message=message, attempts=deployments.c.attempts + 1)
            )

    def mark_rejected(self, row_id: int, message: str) -> None:
        """The controller refused the item: not deployed, for good."""
        with self._write() as conn:
            conn.execute(
                deployments.update()
                .where((deployments.c.id == row_id) & deployments.c.pending.is_(True))
                .values(message=message, pending=False, attempts=deployments.c.attempts + 1)
            )

    def versions_deployed_to(self, controller_id: str, folder: str) -> list[tuple[items_pb2.SignedItem, str]]:
        """Redeployment: for each object below a folder, the version last deployed to the
        controller, as it was delivered (with its signer)."""
        prefix = naming.folder_prefix(naming.check_folder(folder))
        query = (
            sa.select(deployments.c.path, deployments.c.type, deployments.c.version_id, deployments.c.signer)
            .where(
                (deployments.c.controller_id == controller_id)
                & (deployments.c.status == "DEPLOYED")
                & deployments.c.path.startswith(prefix, autoescape=True)
            )
            .order_by(deployments.c.id.desc())
        )
        with self.engine.connect() as conn:
            latest: dict[tuple[str, str], tuple[str, str]] = {}
            for r in conn.execute(query):
                latest.setdefault((r.path, r.type), (r.version_id, r.signer))
            result = []
            for (path, type_word), (version_id, signer) in sorted(latest.items()):
                stored = conn.execute(
                    sa.select(deployed_items).where(
                        (deployed_items.c.path == path)
                        & (deployed_items.c.type == type_word)
                        & (deployed_items.c.version_id == version_id)
                    )
                ).first()
                if stored is None:
                    continue  # deployed before JOC kept what it delivered
                item_type = naming.enum_value(items_pb2.ItemType, type_word)
                item = _item(item_type, path, version_id, stored.json, stored.signature)
                result.append((item, signer))
            return result

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
                if where_to is Route.ITEM:
                    attached = event.item_attached
                    _record_attached(
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
                row = _find_order(conn, order.id)
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
                row = _order(r)
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

    # ---- audit

    def audit(self, account: str, action: str, object: str, reason: str, now: datetime) -> None:
        with self._write() as conn:
            conn.execute(
                audit_log.insert().values(
                    account=account, action=action, object=object, reason=reason, at=now
                )
            )

    def audit_entries(self, limit: int = 100, account: str = "", action: str = "") -> list[AuditRow]:
        query = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit if limit > 0 else 100)
        if account:
            query = query.where(audit_log.c.account == account)
        if action:
            query = query.where(audit_log.c.action == action)
        with self.engine.connect() as conn:
            rows = conn.execute(query)
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
        _utc(r.released_at) if r.released_at else None,
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
        pending=bool(r.pending),
        attempts=int(r.attempts or 0),
        signer=r.signer or "",
    )


def _insert_deployment(conn: sa.Connection, row: DeploymentRow) -> DeploymentRow:
    new_id = conn.execute(
        deployments.insert()
        .values(
            path=row.path,
            type=_type_word(row.type),
            version_id=row.version_id,
            controller_id=row.controller_id,
            status=naming.enum_word(joc_pb2.DeploymentStatus, row.status),
            message=row.message,
            account=row.account,
            requested_at=row.requested_at,
            confirmed_at=row.confirmed_at,
            pending=row.pending,
            attempts=row.attempts,
            signer=row.signer,
        )
        .returning(deployments.c.id)
    ).scalar_one()
    return _deployment(conn.execute(sa.select(deployments).where(deployments.c.id == new_id)).one())


def _item(type: int, path: str, version_id: str, json_text: str, signature: bytes) -> items_pb2.SignedItem:
    item = items_pb2.SignedItem(type=type, path=path, version_id=version_id, json=json_text)  # type: ignore[arg-type]
    if signature:
        item.signature.ParseFromString(signature)
    return item


def _keep_item(conn: sa.Connection, item: items_pb2.SignedItem, account: str, now: datetime) -> None:
    """Stores a delivered version. A version is one JSON text for good (controllers take the same
    path and version again as a repetition): the same version with other JSON is refused; with
    the same JSON but another signature (signed again after a rejection) the new one is kept."""
    key = (
        (deployed_items.c.path == item.path)
        & (deployed_items.c.type == _type_word(item.type))
        & (deployed_items.c.version_id == item.version_id)
    )
    known = conn.execute(sa.select(deployed_items).where(key)).first()
    signature = item.signature.SerializeToString()
    if known is not None:
        if known.json != item.json:
            raise InvalidArgument(
                f"{item.path} version {item.version_id} exists with other content;"
                " export it again for a new version"
            )
        if known.signature != signature:
            conn.execute(deployed_items.update().where(key).values(signature=signature))
    else:
        conn.execute(
            deployed_items.insert().values(
                path=item.path,
                type=_type_word(item.type),
                version_id=item.version_id,
                json=item.json,
                signature=signature,
                created_at=now,
                account=account,
            )
        )


def _record_attached(
    conn: sa.Connection, controller_id: str, agent: str, path: str, version_id: str, at: datetime
) -> None:
    key = (
        (deployment_agents.c.controller_id == controller_id)
        & (deployment_agents.c.path == path)
        & (deployment_agents.c.version_id == version_id)
        & (deployment_agents.c.agent == agent)
    )
    if conn.execute(sa.select(deployment_agents.c.agent).where(key)).first() is None:
        conn.execute(
            deployment_agents.insert().values(
                controller_id=controller_id, path=path, version_id=version_id, agent=agent, attached_at=at
            )
        )


def _with_agents(conn: sa.Connection, rows: list[DeploymentRow]) -> list[DeploymentRow]:
    """The rows with the agents that confirmed their versions."""
    if not rows:
        return rows
    paths = {r.path for r in rows}
    confirmed: dict[tuple[str, str, str], list[tuple[str, datetime]]] = {}
    for r in conn.execute(
        sa.select(deployment_agents)
        .where(deployment_agents.c.path.in_(paths))
        .order_by(deployment_agents.c.attached_at, deployment_agents.c.agent)
    ):
        confirmed.setdefault((r.controller_id, r.path, r.version_id), []).append(
            (r.agent, _utc(r.attached_at))
        )
    return [
        dataclasses.replace(
            row, agents=tuple(confirmed.get((row.controller_id, row.path, row.version_id), ()))
        )
        for row in rows
    ]


def _order(r: Any) -> OrderRow:
    return OrderRow(
        order_pb2.Order.FromString(r.order),
        r.controller_id,
        _utc(r.added_at),
        _utc(r.updated_at),
        r.deleted_at is not None,
        int(r.resynced_at_event or 0),
        naming.enum_value(order_pb2.OrderState, r.left_unseen_state) if r.left_unseen_state else None,
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
        # An event after a resynchronisation marked the order gone: the controller holds it.
        "left_unseen_state": None,
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


def _order_logs(conn: sa.Connection, order_id: str, after_seq: int, limit: int = 0) -> list[LogRow]:
    query = (
        sa.select(order_logs)
        .where((order_logs.c.order_id == order_id) & (order_logs.c.seq > after_seq))
        .order_by(order_logs.c.seq)
    )
    rows = conn.execute(query.limit(limit) if limit else query)
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
