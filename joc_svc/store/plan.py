"""The daily plan's tables: planned orders and the submission record of each plan date and schedule
(see joc_svc.schema), and how a submitted planned order's state follows the orders projection."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from gen.ostinato.common.v1 import order_pb2
from joc_svc.schema import objects, orders, plan_orders, plan_submissions, releases
from joc_svc.store.base import StoreBase, utc
from ostinato import metrics

# A submitted order not started this long after its planned time is late (as JS7).
LATE_AFTER = timedelta(seconds=60)
# An order the controller refused is offered again after this long (a deployment may fix it).
RETRY_REFUSED = timedelta(seconds=60)
# Rows per statement where a list of ids goes into IN (...).
_IDS_PER_STATEMENT = 500


class PlanState(StrEnum):
    PLANNED = "PLANNED"
    SUBMITTED = "SUBMITTED"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class Mode(StrEnum):
    """When the planned orders of a date and schedule go to the controller."""

    AUTO = "AUTO"  # once the date is within days-ahead-submit (while the daily plan is on)
    NOW = "NOW"  # as soon as they are planned
    HELD = "HELD"  # only when asked (the date was cancelled)


# The orders projection's states that end a submitted planned order, as the plan records them.
_ENDED = {"FINISHED": PlanState.FINISHED, "CANCELLED": PlanState.CANCELLED, "FAILED": PlanState.FAILED}


@dataclass(frozen=True, slots=True)
class PlanRow:
    order_id: str
    controller_id: str
    plan_date: date
    schedule_path: str
    workflow_path: str
    order_name: str
    scheduled_for: datetime
    submission: int
    variables: Mapping[str, str] = field(default_factory=dict)
    state: PlanState = PlanState.PLANNED
    late: bool = False
    missed: bool = False
    workflow_version_id: str = ""
    submitted_at: datetime | None = None
    message: str = ""
    tz_version: str = ""  # of the date's record (listings only)


@dataclass(frozen=True, slots=True)
class PlanRecord:
    controller_id: str
    plan_date: date
    schedule_path: str
    number: int
    mode: Mode
    tz_version: str
    planned_at: datetime


def followed(row: PlanRow, order_state: str | None, now: datetime) -> tuple[PlanState, bool]:
    """A planned order's state and late flag as of now, from what JOC recorded and the state word
    of its order in the orders projection (None: JOC has not seen the order yet)."""
    state, late = row.state, row.late
    if state in (PlanState.SUBMITTED, PlanState.FAILED) and order_state in _ENDED:
        state = _ENDED[order_state]
    not_started = order_state in (None, "FRESH")
    if state is PlanState.SUBMITTED and not_started and row.scheduled_for + LATE_AFTER < now:
        late = True
    return state, late


class PlanStore(StoreBase):
    def released_objects(self) -> tuple[tuple[int, int], dict[str, str], dict[str, str]]:
        """Calendars and schedules as released (the latest release of each object the inventory
        holds released): (a key that changes with every release or move, calendars path ->
        JSON, schedules path -> JSON)."""
        latest = sa.select(sa.func.max(releases.c.id)).group_by(releases.c.path, releases.c.type)
        query = (
            sa.select(releases.c.path, releases.c.type, releases.c.json)
            .join(objects, (objects.c.path == releases.c.path) & (objects.c.type == releases.c.type))
            .where(releases.c.id.in_(latest) & objects.c.released_at.is_not(None))
        )
        calendars: dict[str, str] = {}
        schedules: dict[str, str] = {}
        with self.engine.connect() as conn:
            last = conn.execute(sa.select(sa.func.max(releases.c.id))).scalar_one_or_none() or 0
            for r in conn.execute(query):
                (calendars if r.type == "CALENDAR" else schedules)[r.path] = r.json
        return (int(last), len(calendars) + len(schedules)), calendars, schedules

    def released_key(self) -> tuple[int, int]:
        """What `released_objects` returns first, cheaply."""
        with self.engine.connect() as conn:
            last = conn.execute(sa.select(sa.func.max(releases.c.id))).scalar_one_or_none() or 0
            count = conn.execute(
                sa.select(sa.func.count()).where(
                    objects.c.released_at.is_not(None) & objects.c.type.in_(["CALENDAR", "SCHEDULE"])
                )
            ).scalar_one()
        return int(last), int(count)

    def fresh_orders(self, controller_id: str, workflow_path: str) -> list[str]:
        """Ids of the orders of a workflow that JOC last saw fresh (not started) on a controller."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(orders.c.order_id).where(
                    (orders.c.controller_id == controller_id)
                    & (orders.c.workflow_path == workflow_path)
                    & (orders.c.state == "FRESH")
                    & orders.c.deleted_at.is_(None)
                )
            )
            return [r.order_id for r in rows]

    def set_versions(self, order_ids: Sequence[str], version_id: str) -> None:
        """Submitted planned orders moved to another workflow version."""
        if not order_ids:
            return
        with self._write() as conn:
            conn.execute(
                plan_orders.update()
                .where(plan_orders.c.order_id == sa.bindparam("b_id"))
                .values(workflow_version_id=version_id),
                [{"b_id": i} for i in order_ids],
            )

    def plan_records(
        self, controller_id: str, first: date, last: date, schedule_path: str = ""
    ) -> dict[tuple[date, str], PlanRecord]:
        """(plan date, schedule) -> its record, for the dates first..last."""
        query = sa.select(plan_submissions).where(
            (plan_submissions.c.controller_id == controller_id)
            & (plan_submissions.c.plan_date >= first)
            & (plan_submissions.c.plan_date <= last)
        )
        if schedule_path:
            query = query.where(plan_submissions.c.schedule_path == schedule_path)
        with self.engine.connect() as conn:
            records = [_record(r) for r in conn.execute(query)]
        return {(r.plan_date, r.schedule_path): r for r in records}

    def last_planned_date(self, controller_id: str) -> date | None:
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(sa.func.max(plan_submissions.c.plan_date)).where(
                    plan_submissions.c.controller_id == controller_id
                )
            ).scalar_one_or_none()
        return found

    def write_plan(self, records: Sequence[PlanRecord], rows: Sequence[PlanRow]) -> int:
        """In ONE transaction: the records (new ones inserted, known ones updated) and the rows
        whose order ids are new. Returns how many rows were inserted."""
        with self._write() as conn:
            _put_records(conn, records)
            return _insert_new(conn, rows)

    def set_mode(self, keys: Iterable[tuple[str, date, str]], mode: Mode) -> None:
        """(controller, plan date, schedule) records get `mode`."""
        keys = list(keys)
        if not keys:
            return
        with self._write() as conn:
            conn.execute(
                plan_submissions.update()
                .where(
                    (plan_submissions.c.controller_id == sa.bindparam("c"))
                    & (plan_submissions.c.plan_date == sa.bindparam("d"))
                    & (plan_submissions.c.schedule_path == sa.bindparam("s"))
                )
                .values(mode=mode.value),
                [{"c": c, "d": d, "s": s} for c, d, s in keys],
            )

    def plan_rows(
        self,
        controller_id: str,
        first: date | None = None,
        last: date | None = None,
        schedule_path: str = "",
        states: Iterable[PlanState] = (),
        after: datetime | None = None,
        schedule_paths: Iterable[str] = (),
    ) -> list[PlanRow]:
        """Rows by plan date range, schedule(s), state, planned strictly after `after`; by time."""
        query = sa.select(plan_orders).where(plan_orders.c.controller_id == controller_id)
        query = _filter(query, first, last, schedule_path, "")
        if states:
            query = query.where(plan_orders.c.state.in_([s.value for s in states]))
        if after is not None:
            query = query.where(plan_orders.c.scheduled_for > after)
        paths = list(schedule_paths)
        if paths:
            query = query.where(plan_orders.c.schedule_path.in_(paths))
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(plan_orders.c.scheduled_for, plan_orders.c.order_id))
            return [_row(r) for r in rows]

    def rows_to_submit(
        self,
        controller_id: str,
        submit_before: date | None,
        now: datetime,
        limit: int | None,
        first: date | None = None,
        last: date | None = None,
        schedule_path: str = "",
        before: datetime | None = None,
        after: datetime | None = None,
    ) -> list[PlanRow]:
        """Planned rows due for submission, earliest first: those of records NOW, and (with
        `submit_before`, while the plan is on) of records AUTO dated before it; not missed, not
        refused lately; planned before `before` / at or after `after` when given."""
        s = plan_submissions
        due = s.c.mode == Mode.NOW.value
        if submit_before is not None:
            due |= (s.c.mode == Mode.AUTO.value) & (s.c.plan_date < submit_before)
        with self.engine.connect() as conn:
            dates = [
                r.plan_date
                for r in conn.execute(
                    sa.select(s.c.plan_date).where((s.c.controller_id == controller_id) & due).distinct()
                )
            ]
        if not dates:
            return []
        # By the dates first (index ix_plan_orders_due): planned rows of dates not due, or missed
        # ones, are never read.
        query = (
            sa.select(plan_orders)
            .join(
                s,
                (s.c.controller_id == plan_orders.c.controller_id)
                & (s.c.plan_date == plan_orders.c.plan_date)
                & (s.c.schedule_path == plan_orders.c.schedule_path),
            )
            .where(
                (plan_orders.c.state == PlanState.PLANNED.value)
                & (plan_orders.c.missed == sa.false())  # "= 0", which an index serves ("IS 0" is not)
                & plan_orders.c.plan_date.in_(dates)
                & (plan_orders.c.controller_id == controller_id)
                & (plan_orders.c.attempted_at.is_(None) | (plan_orders.c.attempted_at < now - RETRY_REFUSED))
                & due
            )
        )
        query = _filter(query, first, last, schedule_path, "")
        if before is not None:
            query = query.where(plan_orders.c.scheduled_for < before)
        if after is not None:
            query = query.where(plan_orders.c.scheduled_for >= after)
        # Plan dates hold disjoint, ordered spans of time: by date first is by time, and lets the
        # database read the index by dates.
        query = query.order_by(plan_orders.c.plan_date, plan_orders.c.scheduled_for, plan_orders.c.order_id)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query)]

    def known_orders(self, order_ids: Iterable[str]) -> dict[str, str]:
        """order id -> its version, for the orders the projection has (the controller added them)."""
        ids = list(order_ids)
        found: dict[str, str] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(ids), _IDS_PER_STATEMENT):
                chunk = ids[i : i + _IDS_PER_STATEMENT]
                for r in conn.execute(
                    sa.select(orders.c.order_id, orders.c.order).where(orders.c.order_id.in_(chunk))
                ):
                    found[r.order_id] = _version_of(r.order)
        return found

    def mark_submitted(self, submitted: Sequence[tuple[str, str]], now: datetime) -> None:
        """(order id, workflow version) the controller holds."""
        if not submitted:
            return
        with self._write() as conn:
            conn.execute(
                _MARK_SUBMITTED,
                [{"b_id": i, "version": v, "now": now} for i, v in submitted],
            )

    def mark_refused(self, refused: Sequence[tuple[str, str]], now: datetime) -> None:
        """(order id, the controller's reason): planned still, offered again later."""
        if not refused:
            return
        with self._write() as conn:
            conn.execute(
                plan_orders.update()
                .where(plan_orders.c.order_id == sa.bindparam("b_id"))
                .values(message=sa.bindparam("message"), attempted_at=now),
                [{"b_id": i, "message": m} for i, m in refused],
            )

    def mark_missed(self, order_ids: Sequence[str]) -> None:
        if not order_ids:
            return
        with self._write() as conn:
            conn.execute(
                plan_orders.update()
                .where(plan_orders.c.order_id == sa.bindparam("b_id"))
                .values(missed=True),
                [{"b_id": i} for i in order_ids],
            )

    def follow(self, now: datetime) -> int:
        """Records what became of submitted orders whose time has come (finished, failed,
        cancelled, late), from the orders projection. Returns how many rows changed."""
        query = (
            sa.select(plan_orders, orders.c.state.label("order_state"))
            .join(orders, orders.c.order_id == plan_orders.c.order_id, isouter=True)
            .where((plan_orders.c.state == PlanState.SUBMITTED.value) & (plan_orders.c.scheduled_for <= now))
        )
        # Missed orders the controller has all the same: JOC went down between submitting them
        # and recording it, and the orders projection had not caught up when it came back.
        found_after_all = (
            sa.select(plan_orders.c.order_id, orders.c.order)
            .join(orders, orders.c.order_id == plan_orders.c.order_id)
            .where((plan_orders.c.state == PlanState.PLANNED.value) & (plan_orders.c.missed == sa.true()))
        )
        changes = []
        with self.engine.connect() as conn:
            for r in conn.execute(query):
                row = _row(r)
                state, late = followed(row, r.order_state, now)
                if (state, late) != (row.state, row.late):
                    changes.append({"b_id": row.order_id, "state": state.value, "late": late})
                    if late and not row.late:
                        metrics.daily_plan_orders("late")
            submitted = [(r.order_id, _version_of(r.order)) for r in conn.execute(found_after_all)]
        if submitted:
            self.mark_submitted(submitted, now)
        if changes:
            with self._write() as conn:
                conn.execute(
                    plan_orders.update()
                    .where(plan_orders.c.order_id == sa.bindparam("b_id"))
                    .values(state=sa.bindparam("state"), late=sa.bindparam("late")),
                    changes,
                )
        return len(changes) + len(submitted)

    def list_plan(
        self,
        first: date | None,
        last: date | None,
        schedule_path: str,
        workflow_path: str,
        now: datetime,
        limit: int | None = None,
    ) -> list[PlanRow]:
        """Rows with their states as of now (see `followed`) and their dates' tz release, by time."""
        s = plan_submissions
        query = (
            sa.select(plan_orders, orders.c.state.label("order_state"), s.c.tz_version)
            .join(orders, orders.c.order_id == plan_orders.c.order_id, isouter=True)
            .join(
                s,
                (s.c.controller_id == plan_orders.c.controller_id)
                & (s.c.plan_date == plan_orders.c.plan_date)
                & (s.c.schedule_path == plan_orders.c.schedule_path),
                isouter=True,
            )
        )
        query = _filter(query, first, last, schedule_path, workflow_path)
        query = query.order_by(plan_orders.c.scheduled_for, plan_orders.c.order_id)
        if limit is not None:
            query = query.limit(limit)
        result = []
        with self.engine.connect() as conn:
            for r in conn.execute(query):
                row = _row(r)
                state, late = followed(row, r.order_state, now)
                result.append(dataclasses.replace(row, state=state, late=late, tz_version=r.tz_version or ""))
        return result

    def delete_planned(
        self, controller_id: str, first: date, last: date, schedule_path: str
    ) -> dict[date, int]:
        """Removes planned (not submitted) rows; their records stay. Per date how many."""
        condition = (
            (plan_orders.c.controller_id == controller_id)
            & (plan_orders.c.state == PlanState.PLANNED.value)
            & (plan_orders.c.plan_date >= first)
            & (plan_orders.c.plan_date <= last)
        )
        if schedule_path:
            condition &= plan_orders.c.schedule_path == schedule_path
        counts: dict[date, int] = {}
        with self._write() as conn:
            for r in conn.execute(
                sa.select(plan_orders.c.plan_date, sa.func.count())
                .where(condition)
                .group_by(plan_orders.c.plan_date)
            ):
                counts[r[0]] = int(r[1])
            conn.execute(plan_orders.delete().where(condition))
        return counts

    def replan(
        self,
        records: Sequence[PlanRecord],
        removed: Iterable[str],
        cancelled: Iterable[str],
        added: Sequence[PlanRow],
    ) -> None:
        """In ONE transaction: records updated, rows removed (deleted) and cancelled (kept as
        history, CANCELLED), rows added where their ids are new."""
        with self._write() as conn:
            _put_records(conn, records)
            gone = list(removed)
            for i in range(0, len(gone), _IDS_PER_STATEMENT):
                conn.execute(
                    plan_orders.delete().where(plan_orders.c.order_id.in_(gone[i : i + _IDS_PER_STATEMENT]))
                )
            ended = [{"b_id": i} for i in cancelled]
            if ended:
                conn.execute(
                    plan_orders.update()
                    .where(plan_orders.c.order_id == sa.bindparam("b_id"))
                    .values(state=PlanState.CANCELLED.value),
                    ended,
                )
            _insert_new(conn, added)


# Statements built once (see store.orders).
_INSERT_ROW = plan_orders.insert()
_MARK_SUBMITTED = (
    plan_orders.update()
    .where(
        (plan_orders.c.order_id == sa.bindparam("b_id")) & (plan_orders.c.state == PlanState.PLANNED.value)
    )
    .values(
        state=PlanState.SUBMITTED.value,
        workflow_version_id=sa.bindparam("version"),
        submitted_at=sa.bindparam("now"),
        message="",
        missed=False,
    )
)


def _filter(query: Any, first: date | None, last: date | None, schedule_path: str, workflow_path: str) -> Any:
    if first is not None:
        query = query.where(plan_orders.c.plan_date >= first)
    if last is not None:
        query = query.where(plan_orders.c.plan_date <= last)
    if schedule_path:
        query = query.where(plan_orders.c.schedule_path == schedule_path)
    if workflow_path:
        query = query.where(plan_orders.c.workflow_path == workflow_path)
    return query


def _put_records(conn: sa.Connection, records: Sequence[PlanRecord]) -> None:
    if not records:
        return
    key = (
        (plan_submissions.c.controller_id == sa.bindparam("b_c"))
        & (plan_submissions.c.plan_date == sa.bindparam("b_d"))
        & (plan_submissions.c.schedule_path == sa.bindparam("b_s"))
    )
    s = plan_submissions
    dates = {r.plan_date for r in records}
    known = {
        (k.controller_id, k.plan_date, k.schedule_path)
        for k in conn.execute(
            sa.select(s.c.controller_id, s.c.plan_date, s.c.schedule_path).where(s.c.plan_date.in_(dates))
        )
    }
    fresh, changed = [], []
    for r in records:
        values = {
            "number": r.number,
            "mode": r.mode.value,
            "tz_version": r.tz_version,
            "planned_at": r.planned_at,
        }
        if (r.controller_id, r.plan_date, r.schedule_path) in known:
            changed.append({"b_c": r.controller_id, "b_d": r.plan_date, "b_s": r.schedule_path, **values})
        else:
            fresh.append(
                {
                    "controller_id": r.controller_id,
                    "plan_date": r.plan_date,
                    "schedule_path": r.schedule_path,
                    **values,
                }
            )
    if fresh:
        conn.execute(plan_submissions.insert(), fresh)
    if changed:
        conn.execute(plan_submissions.update().where(key), changed)


def _insert_new(conn: sa.Connection, rows: Sequence[PlanRow]) -> int:
    if not rows:
        return 0
    ids = [r.order_id for r in rows]
    known: set[str] = set()
    for i in range(0, len(ids), _IDS_PER_STATEMENT):
        chunk = ids[i : i + _IDS_PER_STATEMENT]
        known.update(
            r.order_id
            for r in conn.execute(sa.select(plan_orders.c.order_id).where(plan_orders.c.order_id.in_(chunk)))
        )
    fresh = []
    for row in rows:
        if row.order_id in known:
            continue
        known.add(row.order_id)
        fresh.append(
            {
                "order_id": row.order_id,
                "controller_id": row.controller_id,
                "plan_date": row.plan_date,
                "schedule_path": row.schedule_path,
                "workflow_path": row.workflow_path,
                "order_name": row.order_name,
                "scheduled_for": row.scheduled_for,
                "variables": json.dumps(dict(row.variables), sort_keys=True),
                "submission": row.submission,
                "state": row.state.value,
                "late": row.late,
                "missed": row.missed,
                "workflow_version_id": row.workflow_version_id,
                "submitted_at": row.submitted_at,
                "message": row.message,
                "attempted_at": None,
            }
        )
    if fresh:
        conn.execute(_INSERT_ROW, fresh)
    return len(fresh)


def _row(r: Any) -> PlanRow:
    return PlanRow(
        order_id=r.order_id,
        controller_id=r.controller_id,
        plan_date=r.plan_date,
        schedule_path=r.schedule_path,
        workflow_path=r.workflow_path,
        order_name=r.order_name,
        scheduled_for=utc(r.scheduled_for),
        submission=int(r.submission),
        variables=json.loads(r.variables),
        state=PlanState(r.state),
        late=bool(r.late),
        missed=bool(r.missed),
        workflow_version_id=r.workflow_version_id,
        submitted_at=utc(r.submitted_at) if r.submitted_at else None,
        message=r.message,
    )


def _record(r: Any) -> PlanRecord:
    return PlanRecord(
        r.controller_id,
        r.plan_date,
        r.schedule_path,
        int(r.number),
        Mode(r.mode),
        r.tz_version,
        utc(r.planned_at),
    )


def _version_of(order_bytes: bytes) -> str:
    return order_pb2.Order.FromString(order_bytes).workflow_version_id
