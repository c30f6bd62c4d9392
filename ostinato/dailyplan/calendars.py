"""Calendars: which dates a calendar yields, and how a schedule restricts a calendar's dates.

What JS7 does (FrequencyResolver, inventory model Calendar/Frequencies/MonthDays/Repetition):
a calendar yields the union of its includes minus the union of its excludes, within from/to.
Weekdays count 1 Monday ... 7 Sunday, 0 is Sunday too; monthdays name days of the month (day 31
does not occur in a 30-day month); ultimos count from the month's end (1 = the last day);
weeklyDays are "the 2nd Monday" (in ultimos "the 2nd Monday from the end"); repetitions step
from their `from` date, MONTHLY and YEARLY clamped to the month's end and back to the original
day (Jan 31 -> Feb 29 -> Mar 31 -> Apr 30; Feb 29 -> Feb 28 in common years). A schedule's own
includes/excludes restrict its base calendar and count the base calendar's dates: "monthdays 2"
is the 2nd *working* day, a DAILY repetition of step 2 every other working day, WEEKLY/MONTHLY/
YEARLY the first working day on or after the due day within that week/month.

Where ostinato differs, and why:
- A calendar without `from` starts at no date (JS7: today), so the result never depends on the
  clock; a calendar without `to` has no end (JS7: the end of the current year).
- Dates before a repetition's `from` are never yielded (JS7 resolves repetitions from their own
  `from`, also before the calendar's).
- A MONTHLY/YEARLY restriction clamps its due day like the base rule (from Jan 30: Feb 28/29);
  JS7 finds nothing in a month shorter than the due day unless `from` is a month's last day.
- A restriction's rules apply over the whole range (JS7 lets base dates outside a restricting
  rule's from/to pass unrestricted), and a restriction's excludes are applied (JS7 ignores them).
- `months` without inner rules means every day of those months.
- Type names WORKING_DAYS / NON_WORKING_DAYS (ostinato's first spelling) are read as JS7's.
Membership is a predicate over a date, so a calendar never has to be expanded over years to
answer for one day; expanding a range is `dates(first, last)`.
"""

from __future__ import annotations

import calendar as _gregorian
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import StrEnum
from typing import Any, Protocol

from ostinato.dailyplan import fields as F
from ostinato.errors import InvalidArgument


class CalendarType(StrEnum):
    WORKING = "WORKINGDAYSCALENDAR"
    NON_WORKING = "NONWORKINGDAYSCALENDAR"


_TYPE_WORDS = {
    "WORKINGDAYSCALENDAR": CalendarType.WORKING,
    "NONWORKINGDAYSCALENDAR": CalendarType.NON_WORKING,
    "WORKING_DAYS": CalendarType.WORKING,
    "NON_WORKING_DAYS": CalendarType.NON_WORKING,
}


class Repeat(StrEnum):
    DAILY = "DAILY"
    WEEKLY = "WEEKLY"
    MONTHLY = "MONTHLY"
    YEARLY = "YEARLY"


def month_length(day: date) -> int:
    return _gregorian.monthrange(day.year, day.month)[1]


class Base(Protocol):
    """A base calendar's dates, as a schedule's restriction counts them."""

    def has(self, day: date) -> bool: ...

    def index_in_month(self, day: date, from_end: bool) -> int:
        """1 for the month's first (or, from_end, last) base date."""
        ...

    def count_between(self, start: date, day: date) -> int:
        """Base dates in [start, day)."""
        ...

    def first_from(self, start: date, end: date) -> date | None:
        """The first base date in [start, end]."""
        ...


class Rule(Protocol):
    @property
    def field(self) -> str:
        """Where the rule is, as the user wrote it: includes.weekdays[0]."""
        ...

    def matches(self, day: date, base: Base | None) -> bool:
        """Whether the rule selects `day`; with `base`, counting the base calendar's dates."""
        ...


def _within(day: date, start: date | None, end: date | None) -> bool:
    return (start is None or start <= day) and (end is None or day <= end)


@dataclass(frozen=True, slots=True)
class DatesRule:
    field: str
    dates: frozenset[date]

    def matches(self, day: date, base: Base | None) -> bool:
        return day in self.dates


@dataclass(frozen=True, slots=True)
class WeekdaysRule:
    field: str
    days: frozenset[int]  # date.weekday(): Monday 0 ... Sunday 6
    start: date | None = None
    end: date | None = None

    def matches(self, day: date, base: Base | None) -> bool:
        return _within(day, self.start, self.end) and day.weekday() in self.days


@dataclass(frozen=True, slots=True)
class MonthdaysRule:
    field: str
    days: frozenset[int]
    weekly: frozenset[tuple[int, int]]  # (weekday Monday 0 ... Sunday 6, n-th in the month 1..5)
    from_end: bool  # ultimos
    start: date | None = None
    end: date | None = None

    def matches(self, day: date, base: Base | None) -> bool:
        if not _within(day, self.start, self.end):
            return False
        length = month_length(day)
        if self.days:
            if base is not None:
                number = base.index_in_month(day, self.from_end)
            else:
                number = length - day.day + 1 if self.from_end else day.day
            if number in self.days:
                return True
        # "The 2nd Monday" counts the month's Mondays, also under a restriction (as JS7).
        nth = (length - day.day if self.from_end else day.day - 1) // 7 + 1
        return (day.weekday(), nth) in self.weekly


@dataclass(frozen=True, slots=True)
class RepetitionRule:
    field: str
    repeat: Repeat
    step: int
    start: date
    end: date | None = None

    def matches(self, day: date, base: Base | None) -> bool:
        if not _within(day, self.start, self.end):
            return False
        elapsed = (day - self.start).days
        if self.repeat is Repeat.DAILY:
            count = base.count_between(self.start, day) if base is not None else elapsed
            return count % self.step == 0
        if self.repeat is Repeat.WEEKLY:
            if base is None:
                return elapsed % (7 * self.step) == 0
            week = elapsed // 7
            begins = self.start + timedelta(days=7 * week)
            return week % self.step == 0 and base.first_from(begins, begins + timedelta(days=6)) == day
        if self.repeat is Repeat.YEARLY:
            due = day.month == self.start.month and (day.year - self.start.year) % self.step == 0
        else:
            due = ((day.year - self.start.year) * 12 + day.month - self.start.month) % self.step == 0
        if not due:
            return False
        target = min(self.start.day, month_length(day))
        if base is None:
            return day.day == target
        last = day.replace(day=month_length(day))
        return day.day >= target and base.first_from(day.replace(day=target), last) == day


@dataclass(frozen=True, slots=True)
class MonthsRule:
    field: str
    months: frozenset[int]
    rules: tuple[Rule, ...]
    start: date | None = None
    end: date | None = None

    def matches(self, day: date, base: Base | None) -> bool:
        if day.month not in self.months or not _within(day, self.start, self.end):
            return False
        return not self.rules or any(r.matches(day, base) for r in self.rules)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a date is or is not in a calendar: the rules (as field paths) that include and exclude
    it."""

    in_range: bool
    included_by: tuple[str, ...]
    excluded_by: tuple[str, ...]

    @property
    def selected(self) -> bool:
        return self.in_range and bool(self.included_by) and not self.excluded_by


@dataclass(frozen=True, slots=True)
class Calendar:
    type: CalendarType = CalendarType.WORKING
    start: date | None = None
    end: date | None = None
    includes: tuple[Rule, ...] = ()
    excludes: tuple[Rule, ...] = ()

    def contains(self, day: date) -> bool:
        return (
            _within(day, self.start, self.end)
            and any(r.matches(day, None) for r in self.includes)
            and not any(r.matches(day, None) for r in self.excludes)
        )

    def dates(self, first: date, last: date) -> list[date]:
        """The dates the calendar yields within [first, last]."""
        return [d for d in _days(first, last) if self.contains(d)]

    def verdict(self, day: date) -> Verdict:
        return Verdict(
            _within(day, self.start, self.end),
            tuple(r.field for r in self.includes if r.matches(day, None)),
            tuple(r.field for r in self.excludes if r.matches(day, None)),
        )


@dataclass(frozen=True, slots=True)
class Restriction:
    """A schedule's includes/excludes over its base calendar: no includes keeps every base date."""

    includes: tuple[Rule, ...] = ()
    excludes: tuple[Rule, ...] = ()

    def selects(self, day: date, base: Base) -> bool:
        """For a base date: whether the restriction keeps it."""
        return (not self.includes or any(r.matches(day, base) for r in self.includes)) and not any(
            r.matches(day, base) for r in self.excludes
        )

    def why(self, day: date, base: Base) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """For a base date: the fields of the includes and of the excludes that select it."""
        return (
            tuple(r.field for r in self.includes if r.matches(day, base)),
            tuple(r.field for r in self.excludes if r.matches(day, base)),
        )


@dataclass
class BaseDays:
    """A calendar's dates month by month, remembered, for restrictions to count over; one per
    calendar and planning run."""

    calendar: Calendar
    _months: dict[tuple[int, int], tuple[date, ...]] = field(default_factory=dict)
    _sets: dict[tuple[int, int], frozenset[date]] = field(default_factory=dict)

    def month(self, year: int, month: int) -> tuple[date, ...]:
        found = self._months.get((year, month))
        if found is None:
            first = date(year, month, 1)
            found = tuple(self.calendar.dates(first, first.replace(day=month_length(first))))
            self._months[(year, month)] = found
            self._sets[(year, month)] = frozenset(found)
        return found

    def has(self, day: date) -> bool:
        self.month(day.year, day.month)
        return day in self._sets[(day.year, day.month)]

    def index_in_month(self, day: date, from_end: bool) -> int:
        days = self.month(day.year, day.month)
        index = days.index(day)
        return len(days) - index if from_end else index + 1

    def count_between(self, start: date, day: date) -> int:
        total = 0
        for year, month in _months(start, day):
            total += sum(1 for d in self.month(year, month) if start <= d < day)
        return total

    def first_from(self, start: date, end: date) -> date | None:
        for year, month in _months(start, end):
            for d in self.month(year, month):
                if start <= d <= end:
                    return d
        return None


def _days(first: date, last: date) -> Iterator[date]:
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)


def _months(first: date, last: date) -> Iterator[tuple[int, int]]:
    year, month = first.year, first.month
    while (year, month) <= (last.year, last.month):
        yield year, month
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


# ---- parsing

_FREQUENCY_KEYS = ("dates", "holidays", "weekdays", "monthdays", "ultimos", "months", "repetitions")


def parse_calendar(value: Any) -> Calendar:
    """A calendar from its parsed JSON; InvalidArgument names the offending field."""
    value = F.obj(value, "", ("type", "from", "to", "includes", "excludes"))
    word = value.get("type", CalendarType.WORKING.value)
    kind = _TYPE_WORDS.get(word) if isinstance(word, str) else None
    if kind is None:
        raise InvalidArgument(f"{word!r} is not WORKINGDAYSCALENDAR or NONWORKINGDAYSCALENDAR", field="type")
    start, end = F.span(value, "")
    return Calendar(
        kind,
        start,
        end,
        parse_frequencies(value.get("includes"), "includes"),
        parse_frequencies(value.get("excludes"), "excludes"),
    )


def parse_restriction(value: Mapping[str, Any], field: str) -> Restriction | None:
    """A schedule calendar entry's includes/excludes; None when it restricts nothing."""
    includes = parse_frequencies(value.get("includes"), F.join(field, "includes"))
    excludes = parse_frequencies(value.get("excludes"), F.join(field, "excludes"))
    return Restriction(includes, excludes) if includes or excludes else None


def parse_frequencies(value: Any, field: str) -> tuple[Rule, ...]:
    if value is None:
        return ()
    value = F.obj(value, field, _FREQUENCY_KEYS)
    rules: list[Rule] = []
    if value.get("dates") is not None:
        rules.append(_dates(value, F.join(field, "dates"), F.join(field, "dates")))
    for path, holiday in F.items(value, "holidays", field):
        holiday = F.obj(holiday, path, ("dates", "nationalCalendar"))
        rules.append(_dates(holiday, F.join(path, "dates"), path))
    rules += _inner_rules(value, field)
    for path, months in F.items(value, "months", field):
        months = F.obj(
            months, path, ("months", "from", "to", "weekdays", "monthdays", "ultimos", "repetitions")
        )
        numbers = F.integers(months, "months", path, 1, 12, "a month")
        if not numbers:
            raise InvalidArgument("give at least one month (1..12)", field=F.join(path, "months"))
        start, end = F.span(months, path)
        rules.append(MonthsRule(path, numbers, tuple(_inner_rules(months, path)), start, end))
    return tuple(rules)


def _inner_rules(value: Mapping[str, Any], field: str) -> list[Rule]:
    rules: list[Rule] = []
    for path, weekdays in F.items(value, "weekdays", field):
        weekdays = F.obj(weekdays, path, ("days", "from", "to"))
        days = frozenset(_weekday(d) for d in F.integers(weekdays, "days", path, 0, 7, "a weekday"))
        if not days:
            raise InvalidArgument(
                "give at least one weekday (1 Monday ... 7 Sunday)", field=F.join(path, "days")
            )
        rules.append(WeekdaysRule(path, days, *F.span(weekdays, path)))
    for key, from_end in (("monthdays", False), ("ultimos", True)):
        for path, monthdays in F.items(value, key, field):
            monthdays = F.obj(monthdays, path, ("days", "weeklyDays", "from", "to"))
            days = F.integers(monthdays, "days", path, 1, 31, "a day of a month")
            weekly = frozenset(_weekly_day(v, p) for p, v in F.items(monthdays, "weeklyDays", path))
            if not days and not weekly:
                raise InvalidArgument("give days or weeklyDays", field=path)
            rules.append(MonthdaysRule(path, days, weekly, from_end, *F.span(monthdays, path)))
    for path, repetition in F.items(value, "repetitions", field):
        repetition = F.obj(repetition, path, ("repetition", "step", "from", "to"))
        if repetition.get("repetition") is None:
            raise InvalidArgument(
                "missing; give DAILY, WEEKLY, MONTHLY or YEARLY", field=F.join(path, "repetition")
            )
        repeat = F.choice(repetition, "repetition", path, Repeat, Repeat.DAILY)
        step = F.integer(repetition.get("step", 1), F.join(path, "step"), 1, 10_000, "a step")
        if repetition.get("from") is None:
            raise InvalidArgument("missing; give the first date YYYY-MM-DD", field=F.join(path, "from"))
        start, end = F.span(repetition, path)
        assert start is not None
        rules.append(RepetitionRule(path, repeat, step, start, end))
    return rules


def _dates(value: Mapping[str, Any], field: str, rule: str) -> DatesRule:
    found = value.get("dates")
    if not isinstance(found, list):
        raise InvalidArgument("must be a list of dates YYYY-MM-DD", field=field)
    return DatesRule(rule, frozenset(F.day(d, f"{field}[{i}]") for i, d in enumerate(found)))


def _weekday(js7: int) -> int:
    """JS7's 1 Monday ... 7 Sunday (0 Sunday too) as date.weekday()."""
    return 6 if js7 in (0, 7) else js7 - 1


def _weekly_day(value: Any, field: str) -> tuple[int, int]:
    value = F.obj(value, field, ("day", "weekOfMonth"))
    if "day" not in value:
        raise InvalidArgument("missing; give a weekday (1 Monday ... 7 Sunday)", field=F.join(field, "day"))
    if "weekOfMonth" not in value:
        raise InvalidArgument(
            "missing; give which one in the month (1..5)", field=F.join(field, "weekOfMonth")
        )
    day = F.integer(value["day"], F.join(field, "day"), 0, 7, "a weekday")
    nth = F.integer(value["weekOfMonth"], F.join(field, "weekOfMonth"), 1, 5, "a week of the month")
    return _weekday(day), nth
