"""Calendars of the daily plan: JS7's rules (weekdays, monthdays, ultimos, weeklyDays, months,
repetitions with their clamping, holidays, excludes, from/to), a schedule's restrictions that
count the base calendar's days, and validation errors that name the field as written."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest

from ostinato.dailyplan.calendars import BaseDays, CalendarType, parse_calendar, parse_restriction
from ostinato.errors import InvalidArgument


def dates(value: dict[str, Any], first: str, last: str) -> list[str]:
    calendar = parse_calendar(value)
    return [d.isoformat() for d in calendar.dates(date.fromisoformat(first), date.fromisoformat(last))]


def including(first: str, last: str, **frequencies: Any) -> list[str]:
    return dates({"type": "WORKINGDAYSCALENDAR", "includes": frequencies}, first, last)


WORKDAYS = {"type": "WORKINGDAYSCALENDAR", "includes": {"weekdays": [{"days": [1, 2, 3, 4, 5]}]}}


def restricted(base: dict[str, Any], restriction: dict[str, Any], first: str, last: str) -> list[str]:
    days = BaseDays(parse_calendar(base))
    rule = parse_restriction(restriction, "calendars[0]")
    assert rule is not None
    day, end, found = date.fromisoformat(first), date.fromisoformat(last), []
    while day <= end:
        if days.has(day) and rule.selects(day, days):
            found.append(day.isoformat())
        day += timedelta(days=1)
    return found


def test_weekdays_count_from_monday_and_sunday_is_0_or_7() -> None:
    week = ("2026-03-23", "2026-03-29")  # Monday .. Sunday
    assert including(*week, weekdays=[{"days": [1, 3]}]) == ["2026-03-23", "2026-03-25"]
    assert including(*week, weekdays=[{"days": [0]}]) == ["2026-03-29"]
    assert including(*week, weekdays=[{"days": [7]}]) == ["2026-03-29"]
    # A weekday rule's own from/to bounds it.
    bounded = [{"days": [1], "from": "2026-03-09", "to": "2026-03-16"}]
    assert including("2026-03-01", "2026-03-31", weekdays=bounded) == ["2026-03-09", "2026-03-16"]


def test_monthdays_day_31_only_in_long_months_and_weekly_days() -> None:
    assert including("2026-01-01", "2026-05-31", monthdays=[{"days": [31]}]) == [
        "2026-01-31",
        "2026-03-31",
        "2026-05-31",
    ]
    second_monday = [{"weeklyDays": [{"day": 1, "weekOfMonth": 2}]}]
    assert including("2026-03-01", "2026-04-30", monthdays=second_monday) == ["2026-03-09", "2026-04-13"]
    # A 5th Monday exists only in some months.
    fifth = [{"weeklyDays": [{"day": 1, "weekOfMonth": 5}]}]
    assert including("2026-01-01", "2026-04-30", monthdays=fifth) == ["2026-03-30"]


def test_ultimos_count_from_the_months_end() -> None:
    last_day = [{"days": [1]}]
    assert including("2024-02-01", "2024-02-29", ultimos=last_day) == ["2024-02-29"]
    assert including("2025-02-01", "2025-02-28", ultimos=last_day) == ["2025-02-28"]
    assert including("2025-02-01", "2025-03-31", ultimos=[{"days": [2]}]) == ["2025-02-27", "2025-03-30"]
    last_friday = [{"weeklyDays": [{"day": 5, "weekOfMonth": 1}]}]
    assert including("2026-02-01", "2026-03-31", ultimos=last_friday) == ["2026-02-27", "2026-03-27"]


def test_monthly_repetition_clamps_to_the_months_end_and_returns() -> None:
    monthly = [{"repetition": "MONTHLY", "from": "2024-01-31"}]
    assert including("2024-01-01", "2024-06-30", repetitions=monthly) == [
        "2024-01-31",
        "2024-02-29",
        "2024-03-31",
        "2024-04-30",
        "2024-05-31",
        "2024-06-30",
    ]
    every_other = [{"repetition": "MONTHLY", "step": 2, "from": "2024-01-31", "to": "2024-07-31"}]
    assert including("2023-01-01", "2025-01-01", repetitions=every_other) == [
        "2024-01-31",
        "2024-03-31",
        "2024-05-31",
        "2024-07-31",
    ]


def test_yearly_daily_weekly_repetitions() -> None:
    leap = [{"repetition": "YEARLY", "from": "2024-02-29"}]
    assert including("2024-01-01", "2028-12-31", repetitions=leap) == [
        "2024-02-29",
        "2025-02-28",
        "2026-02-28",
        "2027-02-28",
        "2028-02-29",
    ]
    daily = [{"repetition": "DAILY", "step": 3, "from": "2026-03-02"}]
    assert including("2026-03-01", "2026-03-10", repetitions=daily) == [
        "2026-03-02",
        "2026-03-05",
        "2026-03-08",
    ]
    weekly = [{"repetition": "WEEKLY", "step": 2, "from": "2026-03-02"}]
    assert including("2026-02-01", "2026-03-31", repetitions=weekly) == [
        "2026-03-02",
        "2026-03-16",
        "2026-03-30",
    ]


def test_months_apply_their_rules_within_those_months() -> None:
    fridays_in_december = [{"months": [12], "weekdays": [{"days": [5]}]}]
    assert including("2026-11-01", "2026-12-31", months=fridays_in_december) == [
        "2026-12-04",
        "2026-12-11",
        "2026-12-18",
        "2026-12-25",
    ]
    assert len(including("2026-01-01", "2026-12-31", months=[{"months": [2]}])) == 28


def test_union_of_includes_minus_excludes_within_from_to() -> None:
    calendar = {
        "type": "WORKINGDAYSCALENDAR",
        "from": "2026-12-01",
        "to": "2026-12-28",
        "includes": {"weekdays": [{"days": [1, 2, 3, 4, 5]}], "dates": ["2026-12-27"]},
        "excludes": {"holidays": [{"dates": ["2026-12-24", "2026-12-25"], "nationalCalendar": "DE"}]},
    }
    found = dates(calendar, "2026-12-21", "2026-12-31")
    assert found == ["2026-12-21", "2026-12-22", "2026-12-23", "2026-12-27", "2026-12-28"]
    verdict = parse_calendar(calendar).verdict(date(2026, 12, 24))
    assert verdict.included_by == ("includes.weekdays[0]",) and verdict.excluded_by == (
        "excludes.holidays[0]",
    )
    assert not verdict.selected and not parse_calendar(calendar).verdict(date(2026, 12, 29)).in_range


def test_calendar_types_with_js7_and_first_ostinato_spelling() -> None:
    assert parse_calendar({}).type is CalendarType.WORKING
    assert parse_calendar({"type": "NONWORKINGDAYSCALENDAR"}).type is CalendarType.NON_WORKING
    assert parse_calendar({"type": "NON_WORKING_DAYS"}).type is CalendarType.NON_WORKING
    assert (
        parse_calendar({"type": "WORKING_DAYS", "title": "kept by JS7 exports"}).type is CalendarType.WORKING
    )


def test_restrictions_count_the_base_calendars_days() -> None:
    # The 2nd working day: March 2026 starts on a Sunday.
    assert restricted(WORKDAYS, {"includes": {"monthdays": [{"days": [2]}]}}, "2026-03-01", "2026-04-30") == [
        "2026-03-03",
        "2026-04-02",
    ]
    # The last working day: Feb 28 2026 is a Saturday.
    assert restricted(WORKDAYS, {"includes": {"ultimos": [{"days": [1]}]}}, "2026-02-01", "2026-03-31") == [
        "2026-02-27",
        "2026-03-31",
    ]
    # Every other working day, counted over the weekend.
    every_other = {"includes": {"repetitions": [{"repetition": "DAILY", "step": 2, "from": "2026-03-02"}]}}
    assert restricted(WORKDAYS, every_other, "2026-03-01", "2026-03-12") == [
        "2026-03-02",
        "2026-03-04",
        "2026-03-06",
        "2026-03-10",
        "2026-03-12",
    ]
    # Monthly from the 15th: the first working day on or after it.
    monthly = {"includes": {"repetitions": [{"repetition": "MONTHLY", "from": "2026-01-15"}]}}
    assert restricted(WORKDAYS, monthly, "2026-01-01", "2026-03-31") == [
        "2026-01-15",
        "2026-02-16",
        "2026-03-16",
    ]
    # Weekly from a Sunday: the week's first working day.
    weekly = {"includes": {"repetitions": [{"repetition": "WEEKLY", "from": "2026-03-01"}]}}
    assert restricted(WORKDAYS, weekly, "2026-03-01", "2026-03-15") == ["2026-03-02", "2026-03-09"]
    yearly = {"includes": {"repetitions": [{"repetition": "YEARLY", "from": "2025-02-28"}]}}
    assert restricted(WORKDAYS, yearly, "2025-01-01", "2026-12-31") == ["2025-02-28"]  # 2026-02-28: Saturday
    # Excludes alone keep the other base days; a restriction's dates must be base days.
    no_fridays = {
        "excludes": {"weekdays": [{"days": [5]}]},
        "includes": {"dates": ["2026-03-06", "2026-03-07"]},
    }
    assert restricted(WORKDAYS, no_fridays, "2026-03-01", "2026-03-31") == []
    assert restricted(WORKDAYS, {"excludes": {"weekdays": [{"days": [5]}]}}, "2026-03-02", "2026-03-08") == [
        "2026-03-02",
        "2026-03-03",
        "2026-03-04",
        "2026-03-05",
    ]
    assert parse_restriction({}, "calendars[0]") is None


@pytest.mark.parametrize(
    "value, message",
    [
        (
            {"includes": {"monthdays": [{"days": [1, 2, 32]}]}},
            "includes.monthdays[0].days[2]: 32 is not a day of a month (1..31)",
        ),
        (
            {"includes": {"weekdays": [{"days": [8]}]}},
            "includes.weekdays[0].days[0]: 8 is not a weekday (0..7)",
        ),
        ({"includes": {"weekdays": [{"days": []}]}}, "includes.weekdays[0].days: give at least one weekday"),
        ({"includes": {"weekdays": [{"days": ["1"]}]}}, "includes.weekdays[0].days[0]: '1' is not a weekday"),
        (
            {"excludes": {"ultimos": [{"weeklyDays": [{"day": 5, "weekOfMonth": 6}]}]}},
            "excludes.ultimos[0].weeklyDays[0].weekOfMonth: 6 is not a week of the month (1..5)",
        ),
        ({"includes": {"monthdays": [{}]}}, "includes.monthdays[0]: give days or weeklyDays"),
        ({"includes": {"repetitions": [{"repetition": "DAILY"}]}}, "includes.repetitions[0].from: missing"),
        (
            {"includes": {"repetitions": [{"repetition": "HOURLY", "from": "2026-01-01"}]}},
            "includes.repetitions[0].repetition: 'HOURLY' is not one of DAILY or WEEKLY or MONTHLY or YEARLY",
        ),
        (
            {"includes": {"repetitions": [{"repetition": "DAILY", "step": 0, "from": "2026-01-01"}]}},
            "includes.repetitions[0].step: 0 is not a step",
        ),
        (
            {"includes": {"dates": ["2026-02-30"]}},
            "includes.dates[0]: '2026-02-30' is not a date of the calendar",
        ),
        ({"includes": {"dates": ["26-2-3"]}}, "includes.dates[0]: '26-2-3' is not a date YYYY-MM-DD"),
        ({"includes": {"holidays": [{"dates": "2026-12-24"}]}}, "includes.holidays[0].dates: must be a list"),
        ({"from": "2026-12-31", "to": "2026-01-01"}, "to: 2026-01-01 is before from (2026-12-31)"),
        ({"include": {}}, "include: unknown field; known: excludes, from, includes, to, type"),
        ({"includes": {"weekday": []}}, "includes.weekday: unknown field"),
        (
            {"includes": {"months": [{"months": [13]}]}},
            "includes.months[0].months[0]: 13 is not a month (1..12)",
        ),
        ({"includes": {"months": [{"months": [1], "dates": []}]}}, "includes.months[0].dates: unknown field"),
        ({"type": "SOMETIMES"}, "type: 'SOMETIMES' is not WORKINGDAYSCALENDAR or NONWORKINGDAYSCALENDAR"),
        ([], "json: must be a JSON object"),
    ],
)
def test_validation_names_the_field_as_written(value: Any, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_calendar(value)
    assert message in str(info.value)
