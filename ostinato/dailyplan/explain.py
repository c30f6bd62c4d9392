"""Why a plan date has no starts, or these, for one schedule: the calendar's rules that include or
exclude it, the schedule's restriction, non-working days (suppressed, ignored, moved away or moved
here), what the DST policy did, a date the zone skipped, and starts that belong to another plan
date because the schedule's zone is not the plan's.

JS7 has no such view: its log says "0 planned orders" per schedule and calendar. The reasons come
from the planner's own steps (Planner), so an explanation cannot disagree with the plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum

from ostinato.dailyplan import zones
from ostinato.dailyplan.calendars import BaseDays, Calendar, CalendarType
from ostinato.dailyplan.planner import (
    MAX_MOVE_DAYS,
    PlannedStart,
    Planner,
    Settings,
    plan_date_of,
    working_day_from,
)
from ostinato.dailyplan.schedules import CalendarEntry, Schedule, WhenHoliday


class Code(StrEnum):
    PLANNED = "PLANNED"
    NO_CALENDARS = "NO_CALENDARS"
    NO_PERIODS = "NO_PERIODS"
    DATE_MISSING = "DATE_MISSING"
    OUTSIDE_CALENDAR = "OUTSIDE_CALENDAR"
    NOT_IN_CALENDAR = "NOT_IN_CALENDAR"
    EXCLUDED = "EXCLUDED"
    NOT_SELECTED = "NOT_SELECTED"
    RESTRICTED = "RESTRICTED"
    HOLIDAY_SUPPRESSED = "HOLIDAY_SUPPRESSED"
    HOLIDAY_IGNORED = "HOLIDAY_IGNORED"
    HOLIDAY_MOVED = "HOLIDAY_MOVED"
    NO_WORKING_DAY = "NO_WORKING_DAY"
    MOVED_HERE = "MOVED_HERE"
    DST_GAP_SKIPPED = "DST_GAP_SKIPPED"
    DST_GAP_SHIFTED = "DST_GAP_SHIFTED"
    DST_FOLD = "DST_FOLD"
    OTHER_PLAN_DATE = "OTHER_PLAN_DATE"
    FROM_OTHER_DATE = "FROM_OTHER_DATE"


@dataclass(frozen=True, slots=True)
class Reason:
    code: Code
    message: str


@dataclass(frozen=True, slots=True)
class Explanation:
    schedule_path: str
    day: date
    starts: tuple[PlannedStart, ...]  # the plan date's starts of this schedule
    reasons: tuple[Reason, ...]

    def codes(self) -> list[Code]:
        return [r.code for r in self.reasons]


def explain(
    path: str,
    schedule: Schedule,
    calendars: Mapping[str, Calendar],
    settings: Settings,
    day: date,
    *,
    controller_id: str = "",
    submissions: Mapping[date, int] | None = None,
) -> Explanation:
    planner = Planner(calendars, settings, controller_id, submissions)
    starts = tuple(planner.starts(path, schedule, day, day))
    reasons = [Reason(Code.PLANNED, f"{len(starts)} start(s) in plan date {day} ({settings.time_zone})")]
    if not schedule.entries:
        reasons.append(Reason(Code.NO_CALENDARS, "the schedule names no calendars"))
    holidays = planner.holidays(path, schedule)
    for entry in schedule.entries:
        base = planner.calendar(
            entry.calendar_path, CalendarType.WORKING, path, f"{entry.field}.calendarPath"
        )
        reasons += _entry(planner, schedule, entry, base, holidays, day)
    for start in starts:
        if start.schedule_date != day:
            reasons.append(
                Reason(
                    Code.FROM_OTHER_DATE,
                    f"the start at {_utc(start.scheduled_for)} runs for {start.schedule_date}"
                    f" in the schedule's zone",
                )
            )
    return Explanation(path, day, starts, tuple(reasons))


def _entry(
    planner: Planner,
    schedule: Schedule,
    entry: CalendarEntry,
    base: BaseDays,
    holidays: list[tuple[str, BaseDays]],
    day: date,
) -> list[Reason]:
    where = f"{entry.field} ({entry.calendar_path} in {entry.time_zone})"
    z = zones.zone(entry.time_zone)
    found: list[Reason] = []
    if not entry.periods:
        found.append(Reason(Code.NO_PERIODS, f"{where}: no periods"))
    if not planner.exists(z, day):
        return [*found, Reason(Code.DATE_MISSING, f"{where}: {day} does not exist in {entry.time_zone}")]
    verdict = base.calendar.verdict(day)
    if not verdict.in_range:
        span = f"from {base.calendar.start or 'the beginning'} to {base.calendar.end or 'no end'}"
        found.append(Reason(Code.OUTSIDE_CALENDAR, f"{where}: {day} is outside the calendar ({span})"))
    elif not verdict.included_by:
        found.append(Reason(Code.NOT_IN_CALENDAR, f"{where}: no rule of the calendar's includes has {day}"))
    elif verdict.excluded_by:
        rules = ", ".join(verdict.excluded_by)
        found.append(Reason(Code.EXCLUDED, f"{where}: the calendar excludes {day} ({rules})"))
    elif entry.restriction is not None:
        included, excluded = entry.restriction.why(day, base)
        if entry.restriction.includes and not included:
            found.append(Reason(Code.NOT_SELECTED, f"{where}: the schedule's includes do not select {day}"))
        elif excluded:
            rules = ", ".join(excluded)
            found.append(Reason(Code.RESTRICTED, f"{where}: the schedule excludes {day} ({rules})"))
    selected = planner.selected(entry, base, day)
    off = [p for p, h in holidays if h.has(day)]
    plan_start, plan_end = planner.bounds(day, day)
    for period in entry.periods:
        if selected and off:
            found.append(_holiday(period.field, period.when_holiday, day, off, base, holidays))
        sources = planner.run_dates(entry, base, holidays, period, day, day).get(day, ())
        for source in sources:
            if source != day:
                found.append(
                    Reason(
                        Code.MOVED_HERE,
                        f"{period.field}: runs on {day} for {source}, a non-working day"
                        f" ({period.when_holiday})",
                    )
                )
        if not sources:
            continue
        starts = planner.period_starts(z, day, period, schedule)
        found += [Reason(Code(code), f"{period.field}: {message}") for code, message in starts.notes]
        for instant in starts.instants:
            if not plan_start <= instant < plan_end:
                at = datetime.fromtimestamp(instant, UTC)
                found.append(
                    Reason(
                        Code.OTHER_PLAN_DATE,
                        f"{period.field}: the start at {_utc(at)} belongs to plan date"
                        f" {plan_date_of(planner.settings, at)}",
                    )
                )
    return found


def _holiday(
    field: str,
    when: WhenHoliday,
    day: date,
    off: list[str],
    base: BaseDays,
    holidays: list[tuple[str, BaseDays]],
) -> Reason:
    what = f"{field}: {day} is a non-working day ({', '.join(off)})"
    if when is WhenHoliday.SUPPRESS:
        return Reason(Code.HOLIDAY_SUPPRESSED, f"{what}: no start (whenHoliday SUPPRESS)")
    if when is WhenHoliday.IGNORE:
        return Reason(Code.HOLIDAY_IGNORED, f"{what}: starts anyway (whenHoliday IGNORE)")
    other = working_day_from(day, timedelta(days=1 if when is WhenHoliday.NEXT else -1), base, holidays)
    if other is None:
        return Reason(Code.NO_WORKING_DAY, f"{what}: no working day within {MAX_MOVE_DAYS} days ({when})")
    return Reason(Code.HOLIDAY_MOVED, f"{what}: moves to {other} ({when})")


def _utc(at: datetime) -> str:
    return f"{at:%Y-%m-%dT%H:%M:%S}Z"
