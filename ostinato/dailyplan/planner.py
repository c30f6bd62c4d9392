"""The planner: one pure function from (schedules, calendars, settings, plan dates) to planned
starts, serving planning, submission, previews, projections and explanations.

What JS7 does (daily plan DailyPlanRunner, PeriodResolver, DailyPlanHelper): the plan for date D
holds the starts in [D at period_begin, D+1 at period_begin) in the plan's time zone (settings
time_zone UTC, period_begin 00:00); each schedule's calendar dates are resolved in the schedule's
zone; a start's wall time becomes an instant with Java's rules (a nonexistent time moves forward,
a repeated one takes the earlier offset); cyclic periods walk real time but keep distinct wall
times; order ids are `#D#P<clock id>-<name>` and `#D#C<clock id>-<nnnnn>-<size>-<name>`, names
cut to 30 characters, made unique by a database lookup.

What ostinato does, and why:
- A plan date's window begins at the first instant whose wall time in the plan's zone is at or
  after D at period begin: windows tile time without overlap (22 to 26 hours, or empty for a
  date the zone skipped), so every start belongs to exactly one plan date, also for a schedule in
  another zone: the planner scans the schedule's calendar dates around the window and keeps the
  starts inside it. plan(range) is therefore the union of plan(D) over the range.
- Wall times follow the schedule's DST policy: `dst.gap` SHIFT (the time read with the offset
  from before the jump: 02:30 -> 03:30) or SKIP; `dst.fold` FIRST, SECOND or BOTH; a date that
  does not exist in the zone plans nothing. `cycle` ELAPSED (default) steps begin + k x repeat in
  real time up to end: a boundary in a gap is shifted whatever `dst.gap` says (a boundary is no
  start to skip); in a fold begin is the first occurrence (the second with SECOND) and end the
  second (the first with FIRST), so BOTH spans both passes. WALL steps wall times and resolves
  each like a single start.
- whenHoliday NEXT/PREVIOUS moves a period to the next/previous working day: a date of the base
  calendar that is in none of the schedule's non-working-day calendars, looking at most
  MAX_MOVE_DAYS days (beyond: nothing planned). JS7 moves to the next date that is no holiday,
  whatever the base calendar says, so Good Friday's start of a Mon-Fri schedule lands on a
  Saturday; what the option's name promises, and what users of a workdays calendar expect, is
  the working day after (or before) it.
- One order per (workflow, order name, instant): starts that coincide (two periods, a moved
  start) plan one order, the first in the order of calendars, periods and dates.
- Order ids are deterministic (no clock, no lookup): a hash of controller, schedule, workflow,
  order name, instant and the date's submission number, as `D#P<hash>-<name>` and
  `D#C<hash>-<nnnnn>-<count>-<name>` without JS7's leading '#' (a shell comment); planning twice
  gives the same ids, so a retry never makes a second order (AddOrders is idempotent by id).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from ostinato.dailyplan import fields as F
from ostinato.dailyplan import zones
from ostinato.dailyplan.calendars import BaseDays, Calendar, CalendarType
from ostinato.dailyplan.schedules import CalendarEntry, Cycle, Fold, Gap, Period, Schedule, WhenHoliday
from ostinato.errors import InvalidArgument, NotFound

MAX_MOVE_DAYS = 366


def working_day_from(
    day: date, step: timedelta, base: BaseDays, holidays: list[tuple[str, BaseDays]]
) -> date | None:
    """The first working day after `day` in the direction of `step` (in the base calendar, in no
    non-working-day calendar), within MAX_MOVE_DAYS; where whenHoliday NEXT/PREVIOUS moves a start."""
    other = day + step
    while abs((other - day).days) <= MAX_MOVE_DAYS:
        if base.has(other) and not any(h.has(other) for _, h in holidays):
            return other
        other += step
    return None


ORDER_NAME_CHARS = 30  # as JS7: the name part of an order id is cut there
_ONE_DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Settings:
    """The daily plan's settings that shape starts (JS7's ConfigurationGlobalsDailyPlan)."""

    time_zone: str = "UTC"
    period_begin: str = "00:00:00"

    def __post_init__(self) -> None:
        zones.check(self.time_zone, "time_zone")
        F.seconds(self.period_begin, "period_begin")

    @property
    def begin_seconds(self) -> int:
        return F.seconds(self.period_begin, "period_begin")


@dataclass(frozen=True, slots=True)
class PlannedStart:
    plan_date: date
    scheduled_for: datetime  # UTC
    order_id: str
    workflow_path: str
    order_name: str
    schedule_path: str
    calendar_path: str
    schedule_date: date  # the calendar date, in the schedule's zone, this start runs on
    variables: Mapping[str, str] = field(default_factory=dict)
    cycle_number: int = 0  # for a cyclic period: 1.. within the period that day
    cycle_count: int = 0  # and how many starts that period has that day


def plan(
    schedules: Mapping[str, Schedule],
    calendars: Mapping[str, Calendar],
    settings: Settings,
    first: date,
    last: date,
    *,
    controller_id: str = "",
    submissions: Mapping[date, int] | None = None,
) -> list[PlannedStart]:
    """Every start of `schedules` (path -> schedule) in plan dates first..last, ordered by time
    and order id. `calendars` maps paths to released calendars; `submissions` gives a plan date's
    submission number (0 when absent), which grows when a date is cancelled and submitted again."""
    planner = Planner(calendars, settings, controller_id, submissions or {})
    found = [s for path, schedule in schedules.items() for s in planner.starts(path, schedule, first, last)]
    return sorted(found, key=lambda s: (s.scheduled_for, s.order_id))


def projections(
    schedules: Mapping[str, Schedule],
    calendars: Mapping[str, Calendar],
    settings: Settings,
    year: int,
    month: int,
) -> dict[str, dict[date, int]]:
    """Per schedule path, the plan dates of a month that have starts, with how many."""
    first = date(year, month, 1)
    last = (first + timedelta(days=31)).replace(day=1) - _ONE_DAY
    counts: dict[str, dict[date, int]] = {path: {} for path in schedules}
    for start in plan(schedules, calendars, settings, first, last):
        per_date = counts[start.schedule_path]
        per_date[start.plan_date] = per_date.get(start.plan_date, 0) + 1
    return counts


def window(settings: Settings, day: date) -> tuple[datetime, datetime]:
    """The instants plan date `day` holds: [start, end), empty for a date the zone skipped."""
    z = zones.zone(settings.time_zone)
    start = zones.first_at_or_after(z, day, settings.begin_seconds)
    end = zones.first_at_or_after(z, day + _ONE_DAY, settings.begin_seconds)
    return datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)


def plan_date_of(settings: Settings, instant: datetime) -> date:
    """The plan date whose window holds `instant` (an aware datetime)."""
    z = zones.zone(settings.time_zone)
    at = int(instant.timestamp())
    day = zones.local_date(z, at) - 2 * _ONE_DAY
    while zones.first_at_or_after(z, day + _ONE_DAY, settings.begin_seconds) <= at:
        day += _ONE_DAY
    return day


def order_id(
    controller_id: str,
    schedule_path: str,
    workflow_path: str,
    order_name: str,
    instant: int,
    submission: int,
    plan_date: date,
    cycle: tuple[int, int] | None = None,
) -> str:
    """`2026-03-29#P<hash>-<name>`, cyclic `2026-03-29#C<hash>-<nnnnn>-<count>-<name>`: the hash
    (64 bits) covers everything that makes the order distinct, the rest is for people."""
    return _OrderIds(controller_id, schedule_path, workflow_path, order_name).make(
        instant, submission, plan_date.isoformat(), cycle
    )


class _OrderIds:
    """Order ids of one (controller, schedule, workflow, order name): the hash of those is taken
    once, each start only adds its instant and submission number."""

    def __init__(self, controller_id: str, schedule_path: str, workflow_path: str, order_name: str) -> None:
        parts = (controller_id, schedule_path, workflow_path, order_name)
        # Length-prefixed, so no two different tuples make the same text.
        self._hash = hashlib.blake2b("".join(f"{len(p)}:{p}" for p in parts).encode(), digest_size=8)
        self._name = order_name[:ORDER_NAME_CHARS].replace("|", "_")

    def make(self, instant: int, submission: int, plan_date: str, cycle: tuple[int, int] | None) -> str:
        hashed = self._hash.copy()
        hashed.update(f"{instant}/{submission}".encode())
        if cycle is None:
            return f"{plan_date}#P{hashed.hexdigest()}-{self._name}"
        return f"{plan_date}#C{hashed.hexdigest()}-{cycle[0]:05d}-{cycle[1]}-{self._name}"


# ---- the machinery


@dataclass(frozen=True, slots=True)
class Starts:
    """The starts of one period on one date, with what the DST policy did (for explanations)."""

    instants: tuple[int, ...]
    numbered: bool  # cyclic: number and count go into order ids
    notes: tuple[tuple[str, str], ...] = ()  # (code, message)


class Planner:
    """One planning run over fixed calendars and settings; remembers what schedules share
    (calendar months, holidays, zone facts), so it must not outlive a change of calendars."""

    def __init__(
        self,
        calendars: Mapping[str, Calendar],
        settings: Settings,
        controller_id: str = "",
        submissions: Mapping[date, int] | None = None,
    ) -> None:
        self.calendars = calendars
        self.settings = settings
        self.controller_id = controller_id
        self.submissions = submissions or {}
        self._bases: dict[str, BaseDays] = {}
        self._exists: dict[tuple[str, date], bool] = {}
        # Schedules share zones and periods (02:30, hourly...): each is resolved once per run.
        self._starts: dict[tuple[str, date, int | None, int, int, int, Gap, Fold, Cycle], Starts] = {}

    # -- calendars

    def calendar(self, path: str, kind: CalendarType, schedule_path: str, field: str) -> BaseDays:
        base = self._bases.get(path)
        if base is None:
            found = self.calendars.get(path)
            if found is None:
                raise NotFound(f"schedule {schedule_path}: {field}: no calendar {path}")
            base = self._bases[path] = BaseDays(found)
        if base.calendar.type is not kind:
            raise InvalidArgument(
                f"schedule {schedule_path}: {field}: calendar {path} is a {base.calendar.type.value},"
                f" not a {kind.value}"
            )
        return base

    def holidays(self, path: str, schedule: Schedule) -> list[tuple[str, BaseDays]]:
        return [(p, self.calendar(p, CalendarType.NON_WORKING, path, f)) for f, p in schedule.non_working]

    def selected(self, entry: CalendarEntry, base: BaseDays, day: date) -> bool:
        if not base.has(day):
            return False
        return entry.restriction is None or entry.restriction.selects(day, base)

    def run_dates(
        self,
        entry: CalendarEntry,
        base: BaseDays,
        holidays: list[tuple[str, BaseDays]],
        period: Period,
        low: date,
        high: date,
    ) -> dict[date, tuple[date, ...]]:
        """The dates in [low, high] `period` runs on, each with the calendar dates it runs for
        (itself, or non-working days moved there)."""

        def holiday(day: date) -> bool:
            return any(h.has(day) for _, h in holidays)

        when = period.when_holiday
        found: dict[date, tuple[date, ...]] = {}
        day = low
        while day <= high:
            sources: list[date] = []
            if holiday(day):
                if when is WhenHoliday.IGNORE and self.selected(entry, base, day):
                    sources.append(day)
            else:
                if self.selected(entry, base, day):
                    sources.append(day)
                if when in (WhenHoliday.NEXT, WhenHoliday.PREVIOUS) and base.has(day):
                    # A working day takes the starts of the non-working days before it (NEXT) or
                    # after it (PREVIOUS), up to the working day there; days outside the base
                    # calendar (a weekend of a workdays calendar) are passed over, not targets.
                    step = -_ONE_DAY if when is WhenHoliday.NEXT else _ONE_DAY
                    other = day + step
                    while (holiday(other) or not base.has(other)) and abs(
                        (other - day).days
                    ) <= MAX_MOVE_DAYS:
                        if holiday(other) and self.selected(entry, base, other):
                            sources.append(other)
                        other += step
            if sources:
                found[day] = tuple(sources)
            day += _ONE_DAY
        return found

    # -- wall times

    def exists(self, z: ZoneInfo, day: date) -> bool:
        key = (z.key, day)
        found = self._exists.get(key)
        if found is None:
            found = self._exists[key] = zones.exists(z, day)
        return found

    def period_starts(self, z: ZoneInfo, day: date, period: Period, schedule: Schedule) -> Starts:
        key = (
            z.key,
            day,
            period.single_start,
            period.begin,
            period.end,
            period.repeat,
            schedule.gap,
            schedule.fold,
            schedule.cycle,
        )
        found = self._starts.get(key)
        if found is None:
            found = self._starts[key] = self._period_starts(z, day, period, schedule)
        return found

    def _period_starts(self, z: ZoneInfo, day: date, period: Period, schedule: Schedule) -> Starts:
        if not self.exists(z, day):
            return Starts((), False, (("DATE_MISSING", f"{day} does not exist in {z.key}"),))
        notes: list[tuple[str, str]] = []
        if period.single_start is not None:
            return Starts(
                tuple(self._wall(z, day, period.single_start, schedule, notes)), False, tuple(notes)
            )
        if schedule.cycle is Cycle.WALL:
            instants = sorted(
                {
                    i
                    for w in range(period.begin, period.end, period.repeat)
                    for i in self._wall(z, day, w, schedule, notes)
                }
            )
            return Starts(tuple(instants), True, tuple(notes))
        begin = self._boundary(z, day, period.begin, schedule.fold is not Fold.SECOND, notes, "begin")
        end_day, end = (day + _ONE_DAY, 0) if period.end == F.DAY else (day, period.end)
        finish = self._boundary(z, end_day, end, schedule.fold is Fold.FIRST, notes, "end")
        return Starts(tuple(range(begin, finish, period.repeat)), True, tuple(notes))

    def _wall(
        self, z: ZoneInfo, day: date, seconds: int, schedule: Schedule, notes: list[tuple[str, str]]
    ) -> list[int]:
        wall = zones.resolve(z, day, seconds)
        if wall.gap:
            where = f"{F.clock(seconds)} does not exist on {day} in {z.key}"
            if schedule.gap is Gap.SKIP:
                notes.append(("DST_GAP_SKIPPED", f"{where}: skipped (dst.gap SKIP)"))
                return []
            shifted = F.clock(zones.local(z, wall.shifted)[1])
            notes.append(("DST_GAP_SHIFTED", f"{where}: shifted to {shifted} (dst.gap SHIFT)"))
            return [wall.shifted]
        if wall.fold:
            which = {Fold.FIRST: "the first", Fold.SECOND: "the second", Fold.BOTH: "both"}[schedule.fold]
            notes.append(
                (
                    "DST_FOLD",
                    f"{F.clock(seconds)} occurs twice on {day} in {z.key}: {which}"
                    f" (dst.fold {schedule.fold})",
                )
            )
            if schedule.fold is Fold.FIRST:
                return [wall.instants[0]]
            if schedule.fold is Fold.SECOND:
                return [wall.instants[1]]
            return list(wall.instants)
        return [wall.instants[0]]

    def _boundary(
        self, z: ZoneInfo, day: date, seconds: int, first: bool, notes: list[tuple[str, str]], what: str
    ) -> int:
        wall = zones.resolve(z, day, seconds)
        if wall.gap:
            shifted = F.clock(zones.local(z, wall.shifted)[1])
            notes.append(
                (
                    "DST_GAP_SHIFTED",
                    f"{what} {F.clock(seconds)} does not exist on {day} in {z.key}:"
                    f" the cycle counts from {shifted}",
                )
            )
            return wall.shifted
        if wall.fold:
            which = "first" if first else "second"
            notes.append(
                (
                    "DST_FOLD",
                    f"{what} {F.clock(seconds)} occurs twice on {day} in {z.key}: the {which} counts",
                )
            )
            return wall.instants[0] if first else wall.instants[1]
        return wall.instants[0]

    # -- planning

    def bounds(self, first: date, last: date) -> list[int]:
        """Where plan dates first .. last+1 begin."""
        z = zones.zone(self.settings.time_zone)
        begin = self.settings.begin_seconds
        return [
            zones.first_at_or_after(z, first + timedelta(days=i), begin)
            for i in range((last - first).days + 2)
        ]

    def order_names(self, path: str, schedule: Schedule) -> list[tuple[str, Mapping[str, str]]]:
        default = path.rsplit("/", 1)[-1]
        names: list[tuple[str, Mapping[str, str]]] = []
        for p in schedule.parameterisations:
            name = p.order_name or default
            if any(name == n for n, _ in names):
                raise InvalidArgument(
                    f"schedule {path}: {p.field}.orderName: order name {name!r} is given twice"
                    " (a parameterisation without one takes the schedule's name)"
                )
            names.append((name, p.variables))
        return names

    def starts(self, path: str, schedule: Schedule, first: date, last: date) -> list[PlannedStart]:
        """The starts of one schedule in plan dates first..last, in calendar, period, date order."""
        if last < first:
            return []
        bounds = self.bounds(first, last)
        orders = [
            (workflow, name, variables, _OrderIds(self.controller_id, path, workflow, name))
            for workflow in schedule.workflow_paths
            for name, variables in self.order_names(path, schedule)
        ]
        holidays = self.holidays(path, schedule)
        dates = [(d, d.isoformat(), self.submissions.get(d, 0)) for d in _days(first, last)]
        seen: set[tuple[str, str, int]] = set()
        found: list[PlannedStart] = []
        for entry in schedule.entries:
            base = self.calendar(
                entry.calendar_path, CalendarType.WORKING, path, f"{entry.field}.calendarPath"
            )
            z = zones.zone(entry.time_zone)
            low = zones.local_date(z, bounds[0]) - 2 * _ONE_DAY
            high = zones.local_date(z, bounds[-1]) + _ONE_DAY
            for period in entry.periods:
                for day in self.run_dates(entry, base, holidays, period, low, high):
                    starts = self.period_starts(z, day, period, schedule)
                    count = len(starts.instants)
                    for number, instant in enumerate(starts.instants, 1):
                        if not bounds[0] <= instant < bounds[-1]:
                            continue
                        plan_date, date_text, submission = dates[bisect.bisect_right(bounds, instant) - 1]
                        cycle = (number, count) if starts.numbered else None
                        scheduled_for = datetime.fromtimestamp(instant, UTC)
                        for workflow, name, variables, ids in orders:
                            key = (workflow, name, instant)
                            if key in seen:
                                continue
                            seen.add(key)
                            found.append(
                                PlannedStart(
                                    plan_date,
                                    scheduled_for,
                                    ids.make(instant, submission, date_text, cycle),
                                    workflow,
                                    name,
                                    path,
                                    entry.calendar_path,
                                    day,
                                    variables,
                                    *(cycle or (0, 0)),
                                )
                            )
        return found


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]
