"""Schedules: which workflows start when, in which zone, with which arguments; parsed and
validated from their inventory JSON.

What JS7 does (inventory model Schedule, AssignedCalendars, Period, WhenHolidayType; daily plan
PeriodResolver): a schedule names workflows, working-day calendars with a time zone (default
Etc/UTC) and periods, non-working-day calendars, and order parameterisations (an order name and
variables; one order per start and parameterisation). A period is a singleStart, or begin/end/
repeat (defaults 00:00:00 and 24:00:00; end excluded); whenHoliday (default SUPPRESS) says what a
period does on a date of a non-working-day calendar. Time zones and wall times are Java's:
a nonexistent time shifts forward, a repeated one runs once (the earlier offset), and cyclic
periods keep distinct wall times (a hole at fall-back).

Where ostinato differs, and why:
- Inventory paths where JS7 has names: workflowPaths (workflowPath for one), calendarPath.
- The DST policy is explicit (`dst.gap` SHIFT|SKIP, `dst.fold` FIRST|SECOND|BOTH) and cyclic
  periods count real time by default (`cycle` ELAPSED: a 25-hour day has 50 half-hourly starts;
  WALL is JS7's distinct wall times). The defaults SHIFT and FIRST are JS7's behaviour.
- What JS7 accepts and then plans nothing for is refused, naming the field: unknown fields, a
  period with neither singleStart nor repeat or with both, an end not after its begin, an unknown
  time zone, order variables that are not constant expressions.
- Variables are expressions as everywhere in ostinato ("'eu'", "42"), checked to evaluate without
  any order variable: `arguments` turns them into the values an order is added with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gen.ostinato.common.v1 import values_pb2
from ostinato.dailyplan import fields as F
from ostinato.dailyplan import zones
from ostinato.dailyplan.calendars import Restriction, parse_restriction
from ostinato.errors import InvalidArgument
from ostinato.workflow import expressions

DEFAULT_TIME_ZONE = "Etc/UTC"


class WhenHoliday(StrEnum):
    SUPPRESS = "SUPPRESS"
    IGNORE = "IGNORE"
    # JS7's names; both move to a working day (one not in the non-working-day calendars).
    NEXT = "NEXTNONWORKINGDAY"
    PREVIOUS = "PREVIOUSNONWORKINGDAY"


class Gap(StrEnum):
    SHIFT = "SHIFT"
    SKIP = "SKIP"


class Fold(StrEnum):
    FIRST = "FIRST"
    SECOND = "SECOND"
    BOTH = "BOTH"


class Cycle(StrEnum):
    ELAPSED = "ELAPSED"
    WALL = "WALL"


@dataclass(frozen=True, slots=True)
class Period:
    field: str  # e.g. calendars[0].periods[1]
    single_start: int | None = None  # seconds after midnight
    begin: int = 0
    end: int = F.DAY
    repeat: int = 0
    when_holiday: WhenHoliday = WhenHoliday.SUPPRESS

    @property
    def cyclic(self) -> bool:
        return self.single_start is None


@dataclass(frozen=True, slots=True)
class CalendarEntry:
    field: str  # e.g. calendars[0]
    calendar_path: str
    time_zone: str = DEFAULT_TIME_ZONE
    restriction: Restriction | None = None
    periods: tuple[Period, ...] = ()


@dataclass(frozen=True, slots=True)
class Parameterisation:
    field: str
    order_name: str = ""  # "": the schedule's name
    variables: Mapping[str, str] = dataclasses.field(default_factory=dict)  # name -> constant expression


@dataclass(frozen=True, slots=True)
class Schedule:
    workflow_paths: tuple[str, ...]
    entries: tuple[CalendarEntry, ...] = ()
    non_working: tuple[tuple[str, str], ...] = ()  # (field, calendar path)
    parameterisations: tuple[Parameterisation, ...] = (Parameterisation("orderParameterisations"),)
    gap: Gap = Gap.SHIFT
    fold: Fold = Fold.FIRST
    cycle: Cycle = Cycle.ELAPSED
    plan_automatically: bool = True
    submit_when_planned: bool = False


def check_order_name(name: Any, field: str) -> str:
    """An order name goes into order ids: the controller refuses '|' there."""
    if not isinstance(name, str) or not name:
        raise InvalidArgument("must be a non-empty order name", field=field)
    if "|" in name or any(ord(c) < 32 for c in name):
        raise InvalidArgument(f"{name!r} has '|' or a control character", field=field)
    return name


def arguments(variables: Mapping[str, str]) -> dict[str, values_pb2.Value]:
    """The values a planned order is added with."""
    empty = expressions.MappingScope({})
    return {name: expressions.evaluate(text, empty) for name, text in variables.items()}


def parse_schedule(value: Any) -> Schedule:
    """A schedule from its parsed JSON; InvalidArgument names the offending field."""
    value = F.obj(
        value,
        "",
        (
            "workflowPath",
            "workflowPaths",
            "planOrderAutomatically",
            "submitOrderToControllerWhenPlanned",
            "calendars",
            "nonWorkingDayCalendars",
            "orderParameterisations",
            "dst",
            "cycle",
        ),
    )
    workflows = _workflow_paths(value)
    entries = tuple(_entry(v, path) for path, v in F.items(value, "calendars", ""))
    non_working = []
    for path, v in F.items(value, "nonWorkingDayCalendars", ""):
        v = F.obj(v, path, ("calendarPath",))
        non_working.append(
            (F.join(path, "calendarPath"), F.text(v, "calendarPath", path, "the calendar's path"))
        )
    dst = F.obj(value.get("dst", {}), "dst", ("gap", "fold"))
    return Schedule(
        workflows,
        entries,
        tuple(non_working),
        _parameterisations(value),
        F.choice(dst, "gap", "dst", Gap, Gap.SHIFT),
        F.choice(dst, "fold", "dst", Fold, Fold.FIRST),
        F.choice(value, "cycle", "", Cycle, Cycle.ELAPSED),
        F.flag(value, "planOrderAutomatically", "", True),
        F.flag(value, "submitOrderToControllerWhenPlanned", "", False),
    )


def _workflow_paths(value: Mapping[str, Any]) -> tuple[str, ...]:
    found: list[str] = []
    if value.get("workflowPath") is not None:
        found.append(F.text(value, "workflowPath", "", "the workflow's path"))
    for path, v in F.items(value, "workflowPaths", ""):
        if not isinstance(v, str) or not v:
            raise InvalidArgument("must be a workflow's path", field=path)
        if v in found:
            raise InvalidArgument(f"{v} is given twice", field=path)
        found.append(v)
    if not found:
        raise InvalidArgument("missing; give workflowPaths (or workflowPath)", field="workflowPath")
    return tuple(found)


def _entry(value: Any, field: str) -> CalendarEntry:
    value = F.obj(value, field, ("calendarPath", "timeZone", "includes", "excludes", "periods"))
    calendar_path = F.text(value, "calendarPath", field, "the calendar's path")
    time_zone = zones.check(
        F.text(value, "timeZone", field, "a time zone", DEFAULT_TIME_ZONE), F.join(field, "timeZone")
    )
    periods = tuple(_period(v, path) for path, v in F.items(value, "periods", field))
    return CalendarEntry(field, calendar_path, time_zone, parse_restriction(value, field), periods)


def _period(value: Any, field: str) -> Period:
    value = F.obj(value, field, ("singleStart", "begin", "end", "repeat", "whenHoliday"))
    when = F.choice(value, "whenHoliday", field, WhenHoliday, WhenHoliday.SUPPRESS)
    if value.get("singleStart") is not None:
        if any(value.get(k) is not None for k in ("begin", "end", "repeat")):
            raise InvalidArgument("give singleStart, or begin/end/repeat, not both", field=field)
        return Period(field, F.seconds(value["singleStart"], F.join(field, "singleStart")), when_holiday=when)
    if value.get("repeat") is None:
        raise InvalidArgument(
            "missing; give singleStart, or repeat (with begin and end)", field=F.join(field, "repeat")
        )
    repeat = F.seconds(value["repeat"], F.join(field, "repeat"), allow_24=True)
    if repeat == 0:
        raise InvalidArgument("must be longer than 00:00:00", field=F.join(field, "repeat"))
    begin = F.seconds(value.get("begin", "00:00:00"), F.join(field, "begin"))
    end = F.seconds(value.get("end", "24:00:00"), F.join(field, "end"), allow_24=True)
    if end <= begin:
        raise InvalidArgument(
            f"{F.clock(end)} is not after begin ({F.clock(begin)})", field=F.join(field, "end")
        )
    return Period(field, None, begin, end, repeat, when)


def _parameterisations(value: Mapping[str, Any]) -> tuple[Parameterisation, ...]:
    found: list[Parameterisation] = []
    names: set[str] = set()
    for path, v in F.items(value, "orderParameterisations", ""):
        v = F.obj(v, path, ("orderName", "variables"))
        name = (
            "" if v.get("orderName") is None else check_order_name(v["orderName"], F.join(path, "orderName"))
        )
        if name in names:
            what = f"order name {name!r}" if name else "parameterisation without orderName"
            raise InvalidArgument(f"another {what} comes before", field=F.join(path, "orderName"))
        names.add(name)
        found.append(Parameterisation(path, name, _variables(v.get("variables"), F.join(path, "variables"))))
    return tuple(found) or (Parameterisation("orderParameterisations"),)


def _variables(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgument("must be a JSON object of name: expression", field=field)
    empty = expressions.MappingScope({})
    for name, text in value.items():
        path = F.join(field, name)
        if not name:
            raise InvalidArgument("a variable needs a name", field=field)
        if not isinstance(text, str):
            raise InvalidArgument(f'must be an expression, e.g. "\'text\'" or "42", not {text!r}', field=path)
        try:
            expressions.evaluate(text, empty)
        except expressions.ExpressionError as e:
            raise expressions.ExpressionError(
                e.reason, position=e.position, expression=e.expression, field=path
            ) from None
    return dict(value)
