"""JOC's daily plan: plans released schedules ahead, submits planned orders to the controller in
batches, follows what became of them, catches up after an outage, and updates the plan when a
schedule or calendar is released again. The starts themselves come from the one pure planner
(ostinato.dailyplan); this module decides what to write and send, the store writes it.

What JS7 does (sos-joc-dailyplan): a daily job plans `days_ahead_plan` dates and submits
`days_ahead_submit` of them; a date with a submission record is not planned again; cancel returns
orders to planned, delete removes planned ones; a change of a schedule cancels, deletes and
regenerates from a date; missed starts after an outage are submitted (all of them).

What ostinato does, and why:
- Planning is a pass every second over the dates today .. today + days_ahead_plan - 1: a (date,
  schedule) without a record is planned, its starts and its record written in ONE transaction, so
  a crash leaves a date planned or not, never half. Starts that have passed are never planned.
- Order ids are deterministic (controller, schedule, workflow, name, instant, the record's number),
  so submitting again after a crash between the controller's answer and the database commit adds
  nothing (AddOrders is idempotent by id and remembers ended ids for an hour).
- Orders are submitted with `scheduledFor` in batches: the director starts each on time, also while
  the controller or JOC is away. An order goes with the workflow's current version (empty version).
- Catch-up: planned orders whose time passed unsubmitted (JOC was down) are submitted only as one
  order per schedule, its newest start within `catch_up_seconds`; the others are recorded missed.
  Orders the controller has already (JOC crashed before recording it) are recorded submitted.
- A release diffs by order id from now on: vanished ids are deleted (planned) or cancelled at the
  controller (submitted, not started), new ids added; started orders are never touched.
- Cancel bumps the (date, schedule) number, so the orders planned again get new ids, and holds the
  date: it is submitted again only when asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum

import grpc

from gen.ostinato.common.v1 import commands_pb2, items_pb2
from gen.ostinato.controller.v1 import controller_pb2
from joc_svc.controllers import CALL_TIMEOUT, ControllerLink
from joc_svc.order_batcher import add_at_controller
from joc_svc.store import ObjectRow, Store
from joc_svc.store.plan import Mode, PlanRecord, PlanRow, PlanState
from ostinato import metrics
from ostinato.dailyplan import (
    IANA_VERSION,
    Calendar,
    PlannedStart,
    Schedule,
    Settings,
    arguments,
    parse_calendar,
    parse_schedule,
    plan_date_of,
    window,
)
from ostinato.dailyplan.planner import Planner
from ostinato.errors import FailedPrecondition, InvalidArgument, OstinatoError

log = logging.getLogger(__name__)

PASS_SECONDS = 1.0
# Orders per AddOrders / CommandOrders call, and planned rows read at a time for submission.
SUBMIT_BATCH = 1000
READ_BATCH = 10 * SUBMIT_BATCH
IN_FLIGHT = 2
# Who the audit log names for what the daily plan does by itself.
SYSTEM_ACCOUNT = "(daily plan)"


@dataclass(frozen=True, slots=True)
class PlanSettings:
    """JOC's daily plan settings (flags of joc_svc, `[dailyplan]` of `ostinato up --config`)."""

    time_zone: str = "UTC"
    period_begin: str = "00:00:00"
    days_ahead_plan: int = 7
    days_ahead_submit: int = 3
    catch_up_seconds: int = 3600
    enabled: bool = True

    def __post_init__(self) -> None:
        Settings(self.time_zone, self.period_begin)  # checks both, naming the field
        if self.days_ahead_plan < 1:
            raise InvalidArgument("must be at least 1", field="days_ahead_plan")
        if not 0 <= self.days_ahead_submit <= self.days_ahead_plan:
            raise InvalidArgument("must be 0 .. days_ahead_plan", field="days_ahead_submit")
        if self.catch_up_seconds < 0:
            raise InvalidArgument("must not be negative", field="catch_up_seconds")

    @property
    def core(self) -> Settings:
        return Settings(self.time_zone, self.period_begin)


class ChangeKind(StrEnum):
    ADDED = "ADDED"
    REMOVED = "REMOVED"


@dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    row: PlanRow


@dataclass(frozen=True, slots=True)
class Released:
    """Calendars and schedules as released (or as they would be), parsed."""

    calendars: Mapping[str, Calendar]
    schedules: Mapping[str, Schedule]
    # Objects whose released JSON the current rules refuse: path -> why.
    problems: Mapping[str, str] = field(default_factory=dict)


def parse_released(calendars: Mapping[str, str], schedules: Mapping[str, str]) -> Released:
    parsed_calendars: dict[str, Calendar] = {}
    parsed_schedules: dict[str, Schedule] = {}
    problems: dict[str, str] = {}
    for path, text in calendars.items():
        try:
            parsed_calendars[path] = parse_calendar(json.loads(text))
        except (InvalidArgument, ValueError) as e:
            problems[path] = str(e)
    for path, text in schedules.items():
        try:
            parsed_schedules[path] = parse_schedule(json.loads(text))
        except (InvalidArgument, ValueError) as e:
            problems[path] = str(e)
    return Released(parsed_calendars, parsed_schedules, problems)


def row_of(start: PlannedStart, controller_id: str, submission: int) -> PlanRow:
    return PlanRow(
        order_id=start.order_id,
        controller_id=controller_id,
        plan_date=start.plan_date,
        schedule_path=start.schedule_path,
        workflow_path=start.workflow_path,
        order_name=start.order_name,
        scheduled_for=start.scheduled_for,
        submission=submission,
        variables=dict(start.variables),
    )


def catch_up(overdue: Sequence[PlanRow], now: datetime, window_s: int) -> tuple[list[PlanRow], list[PlanRow]]:
    """Planned orders whose time passed unsubmitted: (to submit now, missed). Per schedule only the
    orders of its newest start within the window go (one start, never a flood); the rest are
    missed."""
    newest: dict[str, datetime] = {}
    for row in overdue:
        if row.scheduled_for >= now - timedelta(seconds=window_s):
            newest[row.schedule_path] = max(
                newest.get(row.schedule_path, row.scheduled_for), row.scheduled_for
            )
    submit = [r for r in overdue if newest.get(r.schedule_path) == r.scheduled_for]
    chosen = {r.order_id for r in submit}
    return submit, [r for r in overdue if r.order_id not in chosen]


def diff(existing: Sequence[PlanRow], planned: Sequence[PlanRow]) -> tuple[list[PlanRow], list[PlanRow]]:
    """(added, removed) by order id: what a changed schedule or calendar does to the plan."""
    known = {r.order_id for r in existing}
    wanted = {r.order_id for r in planned}
    return [r for r in planned if r.order_id not in known], [r for r in existing if r.order_id not in wanted]


@dataclass
class DateResult:
    count: int = 0
    error: str = ""


class DailyPlan:
    def __init__(
        self,
        store: Store,
        links: Mapping[str, ControllerLink],
        settings: PlanSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.links = links
        self.settings = settings
        self.clock = clock
        # The planned orders go to JOC's default controller (the first --controller).
        self.controller_id = next(iter(links), "")
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one change of the plan at a time (passes and requests)
        self._released: tuple[tuple[int, int], Released] | None = None
        self._reported: set[str] = set()  # problems logged once per release
        # (released objects' key, first date) of the last pass that found every date planned.
        self._complete: tuple[tuple[int, int], date] | None = None

    # ---- the worker

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Passes every PASS_SECONDS (sooner when woken) until cancelled."""
        failures = 0
        while True:
            try:
                async with self._lock:
                    await self.run_pass()
                if failures:
                    log.info("daily plan: controller %s reached again", self.controller_id)
                failures = 0
            except asyncio.CancelledError:
                raise
            except OstinatoError as e:  # the controller is away: the next pass tries again
                failures += 1
                # Said once per outage, not every pass.
                log.log(logging.WARNING if failures == 1 else logging.DEBUG, "daily plan: %s; retrying", e)
            except Exception:
                log.exception("daily plan pass failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), PASS_SECONDS)
            self._wake.clear()

    async def run_pass(self) -> None:
        if not self.controller_id:
            return
        now = self.clock()
        if self.settings.enabled:
            today = self.today(now)
            await self._plan_missing(today, today + timedelta(days=self.settings.days_ahead_plan - 1), now)
        await self._submit_due(now)
        await asyncio.to_thread(self.store.follow, now)

    def today(self, now: datetime) -> date:
        return plan_date_of(self.settings.core, now)

    # ---- what is released

    async def released(self) -> Released:
        key = await asyncio.to_thread(self.store.released_key)
        if self._released is None or self._released[0] != key:
            key, calendars, schedules = await asyncio.to_thread(self.store.released_objects)
            parsed = parse_released(calendars, schedules)
            self._released = (key, parsed)
            self._reported.clear()
            for path, why in parsed.problems.items():
                log.warning("daily plan: released %s is not valid now: %s", path, why)
        return self._released[1]

    async def overlay(self, objects: Sequence[ObjectRow]) -> Released:
        """The released calendars and schedules with `objects` (drafts about to be released) in."""
        _, calendars, schedules = await asyncio.to_thread(self.store.released_objects)
        for o in objects:
            if o.type == items_pb2.ITEM_TYPE_CALENDAR:
                calendars[o.path] = o.json
            elif o.type == items_pb2.ITEM_TYPE_SCHEDULE:
                schedules[o.path] = o.json
        return parse_released(calendars, schedules)

    @staticmethod
    def check_release(overlay: Released, schedule_paths: Iterable[str]) -> None:
        """A schedule is released with its calendars: each it names must be released already or
        with it. InvalidArgument names the schedule and field."""
        for path in schedule_paths:
            if path in overlay.problems:
                raise InvalidArgument(f"schedule {path}: {overlay.problems[path]}")
            schedule = overlay.schedules[path]
            named = [(f"{e.field}.calendarPath", e.calendar_path) for e in schedule.entries]
            for field_name, calendar_path in [*named, *schedule.non_working]:
                if calendar_path not in overlay.calendars:
                    raise InvalidArgument(
                        f"schedule {path}: {field_name}: calendar {calendar_path} is not released;"
                        " release it too"
                    )

    # ---- planning

    def _starts(
        self,
        released: Released,
        keys: Iterable[tuple[date, str]],
        numbers: Mapping[tuple[date, str], int],
        now: datetime,
    ) -> tuple[dict[tuple[date, str], list[PlanRow]], dict[tuple[date, str], str]]:
        """The rows of each (date, schedule) planned under its number, starts after `now`; and
        the (date, schedule) pairs that cannot be planned, with why."""
        found: dict[tuple[date, str], list[PlanRow]] = {}
        failed: dict[tuple[date, str], str] = {}
        planners: dict[tuple[date, int], Planner] = {}
        settings = self.settings.core
        for day, path in keys:
            schedule = released.schedules.get(path)
            if schedule is None:
                failed[(day, path)] = f"schedule {path} is not released"
                continue
            number = numbers.get((day, path), 0)
            planner = planners.get((day, number))
            if planner is None:
                planner = planners[(day, number)] = Planner(
                    released.calendars, settings, self.controller_id, {day: number}
                )
            try:
                starts = planner.starts(path, schedule, day, day)
            except OstinatoError as e:
                failed[(day, path)] = str(e)
                continue
            found[(day, path)] = [
                row_of(s, self.controller_id, number) for s in starts if s.scheduled_for > now
            ]
        return found, failed

    async def _plan_missing(self, first: date, last: date, now: datetime) -> None:
        released = await self.released()
        assert self._released is not None
        done = (self._released[0], first)
        if self._complete == done:
            return  # nothing released or moved since the last pass found every date planned
        auto = sorted(p for p, s in released.schedules.items() if s.plan_automatically)
        records = await asyncio.to_thread(self.store.plan_records, self.controller_id, first, last)
        if all((d, p) in records for d in _dates(first, last) for p in auto):
            self._complete = done
            return
        day = first
        while day <= last:
            missing = [(day, p) for p in auto if (day, p) not in records]
            if missing:
                await self._plan(released, missing, {}, now)
            day += timedelta(days=1)

    async def _plan(
        self,
        released: Released,
        keys: list[tuple[date, str]],
        numbers: Mapping[tuple[date, str], int],
        now: datetime,
        mode: Mode | None = None,
    ) -> dict[date, DateResult]:
        """Plans the (date, schedule) pairs, records and rows in one transaction."""
        rows, failed = await asyncio.to_thread(self._starts, released, keys, numbers, now)
        for (day, path), why in failed.items():
            if path not in self._reported:
                self._reported.add(path)
                log.warning("daily plan: cannot plan %s (%s): %s", path, day, why)
        records = [
            PlanRecord(
                self.controller_id,
                day,
                path,
                numbers.get((day, path), 0),
                mode or (Mode.NOW if released.schedules[path].submit_when_planned else Mode.AUTO),
                IANA_VERSION,
                now,
            )
            for day, path in rows
        ]
        inserted = [r for found in rows.values() for r in found]
        await asyncio.to_thread(self.store.write_plan, records, inserted)
        metrics.daily_plan_orders("planned", len(inserted))
        results: dict[date, DateResult] = {}
        for (day, _), found in rows.items():
            results.setdefault(day, DateResult()).count += len(found)
        for (day, _), why in failed.items():
            result = results.setdefault(day, DateResult())
            result.error = f"{result.error}; {why}" if result.error else why
        return results

    # ---- submission

    async def _submit_due(
        self, now: datetime, first: date | None = None, last: date | None = None, schedule_path: str = ""
    ) -> dict[date, DateResult]:
        """Submits what is due: orders whose time passed by the catch-up rule, the others in
        batches. Raises the controller's error when it cannot be reached."""
        results: dict[date, DateResult] = {}
        submit_before = None
        if self.settings.enabled:
            submit_before = self.today(now) + timedelta(days=self.settings.days_ahead_submit)
        overdue = await asyncio.to_thread(
            self.store.rows_to_submit,
            self.controller_id,
            submit_before,
            now,
            None,
            first,
            last,
            schedule_path,
            now,  # before now
        )
        if overdue:
            await self._catch_up(overdue, now, results)
        while True:
            rows = await asyncio.to_thread(
                self.store.rows_to_submit,
                self.controller_id,
                submit_before,
                now,
                READ_BATCH,
                first,
                last,
                schedule_path,
                None,
                now,  # at or after now
            )
            if not rows:
                return results
            await self._send_all(rows, now, results)

    async def _send_all(self, rows: list[PlanRow], now: datetime, results: dict[date, DateResult]) -> None:
        """In batches, IN_FLIGHT at a time: the controller journals one batch while JOC records
        the one before."""
        pending: set[asyncio.Task[None]] = set()
        try:
            for i in range(0, len(rows), SUBMIT_BATCH):
                if len(pending) >= IN_FLIGHT:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()
                pending.add(asyncio.create_task(self._send(rows[i : i + SUBMIT_BATCH], now, results)))
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
        finally:
            for task in pending:
                task.cancel()

    async def _catch_up(self, overdue: list[PlanRow], now: datetime, results: dict[date, DateResult]) -> None:
        known = await asyncio.to_thread(self.store.known_orders, [r.order_id for r in overdue])
        if known:  # submitted before JOC went down, not recorded: the controller has them
            await asyncio.to_thread(self.store.mark_submitted, list(known.items()), now)
        submit, missed = catch_up(
            [r for r in overdue if r.order_id not in known], now, self.settings.catch_up_seconds
        )
        if missed:
            log.warning(
                "daily plan: %d planned orders were not submitted in time (JOC was away?): recorded missed;"
                " %d submitted late (catch-up: one per schedule within %d s)",
                len(missed),
                len(submit),
                self.settings.catch_up_seconds,
            )
            await asyncio.to_thread(self.store.mark_missed, [r.order_id for r in missed])
            metrics.daily_plan_orders("missed", len(missed))
        await self._send_all(submit, now, results)

    async def _send(self, rows: list[PlanRow], now: datetime, results: dict[date, DateResult]) -> None:
        link = self._link(self.controller_id)
        new_orders = []
        for row in rows:
            new = controller_pb2.NewOrder(id=row.order_id, workflow_path=row.workflow_path)
            for name, value in arguments(row.variables).items():
                new.arguments[name].CopyFrom(value)
            new.scheduled_for.FromDatetime(row.scheduled_for)
            new_orders.append(new)
        answers = await add_at_controller(link, new_orders, CALL_TIMEOUT)
        submitted: list[tuple[str, str]] = []
        refused: list[tuple[str, str]] = []
        for row, answer in zip(rows, answers, strict=True):
            if isinstance(answer, controller_pb2.AddedOrder):
                submitted.append((row.order_id, answer.workflow_version_id))
                results.setdefault(row.plan_date, DateResult()).count += 1
            elif answer.code_name in ("INVALID_ARGUMENT", "NOT_FOUND"):
                refused.append((row.order_id, str(answer)))
                result = results.setdefault(row.plan_date, DateResult())
                result.error = result.error or f"{row.order_id}: {answer}"
            else:
                raise answer  # the controller is away: the next pass tries again
        await asyncio.to_thread(self.store.mark_submitted, submitted, now)
        await asyncio.to_thread(self.store.mark_refused, refused, now)
        metrics.daily_plan_orders("submitted", len(submitted))
        if refused:
            log.warning(
                "daily plan: controller %s refused %d orders, e.g. %s", link.id, len(refused), refused[0][1]
            )

    # ---- requests

    async def generate(self, first: date, last: date, schedule_path: str) -> dict[date, DateResult]:
        """Plans the dates of released schedules; a (date, schedule) planned before gets back
        the starts deleted from it (under its number)."""
        async with self._lock:
            return await self._generate(first, last, schedule_path, self.clock())

    async def _generate(
        self, first: date, last: date, schedule_path: str, now: datetime
    ) -> dict[date, DateResult]:
        released = await self.released()
        paths = self._schedule_paths(released, schedule_path)
        records = await asyncio.to_thread(
            self.store.plan_records, self.controller_id, first, last, schedule_path
        )
        keys = [(d, p) for d in _dates(first, last) for p in paths]
        numbers = {k: r.number for k, r in records.items()}
        modes = {k: r.mode for k, r in records.items()}
        results: dict[date, DateResult] = {}
        # Known records keep their mode (a held date stays held); new ones are planned as usual.
        fresh = [k for k in keys if k not in records]
        if fresh:
            _merge(results, await self._plan(released, fresh, {}, now))
        for mode in set(modes.values()):
            again = [k for k in keys if modes.get(k) is mode]
            _merge(results, await self._plan(released, again, numbers, now, mode))
        return results

    async def submit(self, first: date, last: date, schedule_path: str) -> dict[date, DateResult]:
        """Plans what is not planned yet, then submits every planned order of the dates now."""
        async with self._lock:
            now = self.clock()
            released = await self.released()
            paths = self._schedule_paths(released, schedule_path)
            records = await asyncio.to_thread(
                self.store.plan_records, self.controller_id, first, last, schedule_path
            )
            fresh = [(d, p) for d in _dates(first, last) for p in paths if (d, p) not in records]
            generated = await self._plan(released, fresh, {}, now) if fresh else {}
            records = await asyncio.to_thread(
                self.store.plan_records, self.controller_id, first, last, schedule_path
            )
            await asyncio.to_thread(
                self.store.set_mode,
                [(r.controller_id, r.plan_date, r.schedule_path) for r in records.values()],
                Mode.NOW,
            )
            try:
                results = await self._submit_due(now, first, last, schedule_path)
            except OstinatoError as e:
                raise FailedPrecondition(
                    f"planned, not submitted: {e}; JOC submits them when it can"
                ) from None
            for day, result in generated.items():
                if result.error:
                    results.setdefault(day, DateResult()).error = result.error
            return results

    async def cancel(self, first: date, last: date, schedule_path: str, kill: bool) -> dict[date, DateResult]:
        """Cancels the submitted orders at the controller and plans them again under the next
        number (new ids); every record of the range is held."""
        async with self._lock:
            now = self.clock()
            cid = self.controller_id
            submitted = await asyncio.to_thread(
                self.store.plan_rows, cid, first, last, schedule_path, [PlanState.SUBMITTED]
            )
            results: dict[date, DateResult] = {}
            cancelled = await self._cancel_at_controller(submitted, kill, results)
            records = await asyncio.to_thread(self.store.plan_records, cid, first, last, schedule_path)
            bumped = {(r.plan_date, r.schedule_path) for r in submitted if r.order_id in cancelled}
            new_records = [
                PlanRecord(
                    cid,
                    r.plan_date,
                    r.schedule_path,
                    r.number + ((r.plan_date, r.schedule_path) in bumped),
                    Mode.HELD,
                    r.tz_version,
                    r.planned_at,
                )
                for r in records.values()
            ]
            numbers = {(r.plan_date, r.schedule_path): r.number for r in new_records}
            rows, _ = await asyncio.to_thread(self._starts, await self.released(), bumped, numbers, now)
            existing = await asyncio.to_thread(
                self.store.plan_rows, cid, first, last, schedule_path, [PlanState.PLANNED, *_KEPT]
            )
            replaced = [
                r.order_id
                for r in existing
                if (r.plan_date, r.schedule_path) in bumped
                and (r.state is PlanState.PLANNED or r.order_id in cancelled)
            ]
            # A start that stays (finished, failed, not cancelled) is not planned a second time.
            staying = {
                (r.workflow_path, r.order_name, r.scheduled_for)
                for r in existing
                if (r.plan_date, r.schedule_path) in bumped and r.order_id not in replaced
            }
            added = [
                r
                for found in rows.values()
                for r in found
                if (r.workflow_path, r.order_name, r.scheduled_for) not in staying
            ]
            await asyncio.to_thread(self.store.replan, new_records, replaced, [], added)
            return results

    async def delete(self, first: date, last: date, schedule_path: str) -> dict[date, DateResult]:
        async with self._lock:
            counts = await asyncio.to_thread(
                self.store.delete_planned, self.controller_id, first, last, schedule_path
            )
        return {d: DateResult(n) for d, n in counts.items()}

    async def _cancel_at_controller(
        self, rows: Sequence[PlanRow], kill: bool, results: dict[date, DateResult]
    ) -> set[str]:
        """Cancels the orders at the controller; the ids it cancelled (or no longer holds)."""
        link = self._link(self.controller_id)
        done: set[str] = set()
        for i in range(0, len(rows), SUBMIT_BATCH):
            batch = rows[i : i + SUBMIT_BATCH]
            request = controller_pb2.CommandOrdersRequest(
                commands=[
                    commands_pb2.OrderCommand(order_id=r.order_id, cancel=commands_pb2.CancelOrder(kill=kill))
                    for r in batch
                ]
            )
            try:
                response = await link.call("CommandOrders", request)
            except grpc.aio.AioRpcError as e:
                raise link.error(e) from None
            errors = {r.order_id: r.error for r in response.results}
            for row in batch:
                result = results.setdefault(row.plan_date, DateResult())
                error = errors.get(row.order_id, "")
                if error:
                    result.error = result.error or f"{row.order_id}: {error}"
                else:
                    done.add(row.order_id)
                    result.count += 1
        return done

    # ---- changes

    async def changes(self, overlay: Released, apply: bool, changed_paths: Iterable[str]) -> list[Change]:
        """How the plan changes from now on when calendars and schedules become `overlay`
        (released objects with the new ones in): for each schedule planned and concerned (released
        itself, or naming a released calendar), recompute its planned dates and diff by order id.
        With `apply`: planned rows that vanished are deleted, submitted ones (not started) cancelled
        at the controller, new ones added. InvalidArgument names a schedule that cannot be planned."""
        async with self._lock:
            now = self.clock()
            cid = self.controller_id
            changed = set(changed_paths)
            concerned = sorted(
                path
                for path, schedule in overlay.schedules.items()
                if path in changed
                or any(e.calendar_path in changed for e in schedule.entries)
                or any(p in changed for _, p in schedule.non_working)
            )
            last = await asyncio.to_thread(self.store.last_planned_date, cid)
            if not concerned or last is None:
                return []
            first = self.today(now)
            wanted = set(concerned)
            records = {
                k: r
                for k, r in (await asyncio.to_thread(self.store.plan_records, cid, first, last)).items()
                if k[1] in wanted
            }
            numbers = {k: r.number for k, r in records.items()}
            rows, failed = await asyncio.to_thread(self._starts, overlay, list(records), numbers, now)
            if failed:
                (day, path), why = next(iter(failed.items()))
                raise InvalidArgument(f"schedule {path} cannot be planned for {day}: {why}")
            existing = await asyncio.to_thread(
                self.store.plan_rows,
                cid,
                first,
                last,
                "",
                [PlanState.PLANNED, PlanState.SUBMITTED],
                now,
                concerned,
            )
            added, removed = diff(existing, [r for found in rows.values() for r in found])
            found = [Change(ChangeKind.ADDED, r) for r in added] + [
                Change(ChangeKind.REMOVED, r) for r in removed
            ]
            if apply and found:
                results: dict[date, DateResult] = {}
                submitted = [r for r in removed if r.state is PlanState.SUBMITTED]
                cancelled = (
                    await self._cancel_at_controller(submitted, False, results) if submitted else set()
                )
                planned = [r.order_id for r in removed if r.state is PlanState.PLANNED]
                await asyncio.to_thread(self.store.replan, [], planned, cancelled, added)
                self.wake()
            return sorted(found, key=lambda c: (c.row.scheduled_for, c.row.order_id))

    # ---- workflow versions

    async def transfer(self, workflow_path: str, version_id: str, controller_id: str, when: str) -> list[str]:
        """Moves the orders of a workflow that have not started and are scheduled from `when`
        ("now" or a plan date) on to `version_id` at the controller, keeping their ids. Returns
        the ids moved (or marked to move at their agent)."""
        link = self._link(controller_id)
        now = self.clock()
        start = now if when == "now" else window(self.settings.core, parse_date(when, "update_plan_from"))[0]
        ids = await asyncio.to_thread(self.store.fresh_orders, controller_id, workflow_path)
        planned = await asyncio.to_thread(
            self.store.plan_rows, controller_id, None, None, "", [PlanState.SUBMITTED], max(start, now)
        )
        ids += [r.order_id for r in planned if r.workflow_path == workflow_path]
        request = controller_pb2.TransferOrdersRequest(
            workflow_path=workflow_path, workflow_version_id=version_id, order_ids=list(dict.fromkeys(ids))
        )
        request.scheduled_from.FromDatetime(max(start, now))
        try:
            response = await link.call("TransferOrders", request)
        except grpc.aio.AioRpcError as e:
            raise link.error(e) from None
        await asyncio.to_thread(
            self.store.set_versions, list(response.order_ids), response.workflow_version_id
        )
        return list(response.order_ids)

    def _link(self, controller_id: str) -> ControllerLink:
        link = self.links.get(controller_id)
        if link is None:
            raise FailedPrecondition("JOC knows no controller; start it with --controller ID=HOST:PORT")
        return link

    def _schedule_paths(self, released: Released, schedule_path: str) -> list[str]:
        if not schedule_path:
            return sorted(released.schedules)
        if schedule_path not in released.schedules:
            why = released.problems.get(schedule_path, "")
            raise InvalidArgument(
                f"schedule {schedule_path} is not released{': ' + why if why else ''}", field="schedule_path"
            )
        return [schedule_path]


_KEPT = (PlanState.SUBMITTED, PlanState.FINISHED, PlanState.FAILED, PlanState.CANCELLED)


def _dates(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _merge(results: dict[date, DateResult], more: Mapping[date, DateResult]) -> None:
    for day, result in more.items():
        into = results.setdefault(day, DateResult())
        into.count += result.count
        if result.error:
            into.error = f"{into.error}; {result.error}" if into.error else result.error


def parse_date(text: str, field: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(f"{text!r} is not a date YYYY-MM-DD", field=field) from None


def date_range(first: str, last: str, limit_days: int = 366) -> tuple[date, date]:
    """from_date/to_date of a request: both given, in order, at most `limit_days` apart."""
    if not first:
        raise InvalidArgument("give the first plan date (YYYY-MM-DD)", field="from_date")
    start = parse_date(first, "from_date")
    end = parse_date(last, "to_date") if last else start
    if end < start:
        raise InvalidArgument(f"{end} is before from_date ({start})", field="to_date")
    if (end - start).days >= limit_days:
        raise InvalidArgument(f"at most {limit_days} days at a time", field="to_date")
    return start, end
