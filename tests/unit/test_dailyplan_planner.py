"""The daily planner on the cases where planners break: DST gaps and folds, a skipped date, month
ends, non-working days, a schedule in another zone than the plan; deterministic order ids;
schedule validation naming fields; explanations."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from ostinato.dailyplan import (
    IANA_VERSION,
    TZDATA_VERSION,
    Code,
    PlannedStart,
    Settings,
    arguments,
    explain,
    parse_calendar,
    parse_schedule,
    plan,
    plan_date_of,
    projections,
    window,
)
from ostinato.dailyplan.calendars import Calendar
from ostinato.dailyplan.planner import order_id
from ostinato.errors import InvalidArgument, NotFound
from ostinato.workflow.values import from_value

EVERY_DAY = {"type": "WORKINGDAYSCALENDAR", "includes": {"weekdays": [{"days": [1, 2, 3, 4, 5, 6, 7]}]}}
WORKDAYS = {"type": "WORKINGDAYSCALENDAR", "includes": {"weekdays": [{"days": [1, 2, 3, 4, 5]}]}}
# German public holidays of 2026 (nationwide): concrete dates, as the issue wants them.
HOLIDAYS_DE = {
    "type": "NONWORKINGDAYSCALENDAR",
    "includes": {
        "holidays": [
            {
                "nationalCalendar": "DE",
                "dates": [
                    "2026-01-01",
                    "2026-04-03",
                    "2026-04-06",
                    "2026-05-01",
                    "2026-05-14",
                    "2026-05-25",
                    "2026-10-03",
                    "2026-12-25",
                    "2026-12-26",
                ],
            }
        ]
    },
}
CALENDARS: dict[str, Calendar] = {
    "/cal/every-day": parse_calendar(EVERY_DAY),
    "/cal/workdays": parse_calendar(WORKDAYS),
    "/cal/holidays-de": parse_calendar(HOLIDAYS_DE),
    "/cal/weekends-and-holidays-de": parse_calendar(
        {**HOLIDAYS_DE, "includes": {**HOLIDAYS_DE["includes"], "weekdays": [{"days": [6, 7]}]}}
    ),
    "/cal/ultimo": parse_calendar({"includes": {"ultimos": [{"days": [1]}]}}),
    "/cal/monthly": parse_calendar(
        {"includes": {"repetitions": [{"repetition": "MONTHLY", "from": "2024-01-31"}]}}
    ),
}
BERLIN = Settings("Europe/Berlin")


def schedule(
    periods: list[dict[str, Any]], zone: str = "Europe/Berlin", calendar: str = "/cal/every-day", **more: Any
) -> Any:
    entry = {"calendarPath": calendar, "timeZone": zone, "periods": periods}
    return parse_schedule({"workflowPaths": ["/app/eod"], "calendars": [entry], **more})


def starts(
    sched: Any, first: str, last: str | None = None, settings: Settings = BERLIN, **kw: Any
) -> list[PlannedStart]:
    return plan(
        {"/plans/daily": sched},
        CALENDARS,
        settings,
        date.fromisoformat(first),
        date.fromisoformat(last or first),
        **kw,
    )


def utc(found: list[PlannedStart]) -> list[str]:
    return [f"{s.scheduled_for:%Y-%m-%dT%H:%M}Z" for s in found]


def test_spring_forward_gap_shifts_or_skips() -> None:
    shifted = starts(schedule([{"singleStart": "02:30:00"}]), "2026-03-29")
    assert utc(shifted) == ["2026-03-29T01:30Z"]  # 03:30 CEST
    assert shifted[0].plan_date == date(2026, 3, 29) and shifted[0].schedule_date == date(2026, 3, 29)
    assert re.fullmatch(r"2026-03-29#P[0-9a-f]{16}-daily", shifted[0].order_id)
    assert starts(schedule([{"singleStart": "02:30:00"}], dst={"gap": "SKIP"}), "2026-03-29") == []
    # The days around are untouched by the policy.
    assert utc(
        starts(schedule([{"singleStart": "02:30"}], dst={"gap": "SKIP"}), "2026-03-28", "2026-03-30")
    ) == [
        "2026-03-28T01:30Z",
        "2026-03-30T00:30Z",
    ]


def test_fall_back_fold_first_second_or_both() -> None:
    def at(fold: str) -> list[str]:
        return utc(starts(schedule([{"singleStart": "02:30:00"}], dst={"fold": fold}), "2026-10-25"))

    assert at("FIRST") == ["2026-10-25T00:30Z"]  # 02:30 CEST
    assert at("SECOND") == ["2026-10-25T01:30Z"]  # 02:30 CET
    assert at("BOTH") == ["2026-10-25T00:30Z", "2026-10-25T01:30Z"]
    both = starts(schedule([{"singleStart": "02:30:00"}], dst={"fold": "BOTH"}), "2026-10-25")
    assert len({s.order_id for s in both}) == 2


def test_cyclic_periods_count_real_time_or_wall_time() -> None:
    half_hourly = [{"repeat": "00:30:00"}]
    for day, elapsed, wall in (("2026-10-25", 50, 48), ("2026-03-29", 46, 46), ("2026-06-01", 48, 48)):
        assert len(starts(schedule(half_hourly), day)) == elapsed, day
        assert len(starts(schedule(half_hourly, cycle="WALL"), day)) == wall, day
    found = starts(schedule(half_hourly), "2026-10-25")
    assert [(s.cycle_number, s.cycle_count) for s in found[:2]] == [(1, 50), (2, 50)]
    assert re.fullmatch(r"2026-10-25#C[0-9a-f]{16}-00002-50-daily", found[1].order_id)
    # WALL with the default fold FIRST leaves the hole JS7 has at fall-back: 02:00..02:30 CET.
    wall = utc(starts(schedule(half_hourly, cycle="WALL"), "2026-10-25"))
    assert "2026-10-25T00:30Z" in wall and "2026-10-25T01:00Z" not in wall and "2026-10-25T02:00Z" in wall
    both = starts(schedule(half_hourly, cycle="WALL", dst={"fold": "BOTH"}), "2026-10-25")
    assert len(both) == 50
    # begin/end bound a cycle; the end is excluded.
    business = starts(schedule([{"begin": "08:00", "end": "18:00", "repeat": "02:00:00"}]), "2026-06-01")
    assert utc(business) == [f"2026-06-01T{h:02d}:00Z" for h in (6, 8, 10, 12, 14)]


def test_apia_skipped_a_day() -> None:
    apia = schedule([{"singleStart": "12:00:00"}], zone="Pacific/Apia")
    local = Settings("Pacific/Apia")
    found = starts(apia, "2011-12-29", "2011-12-31", local)
    assert [(s.plan_date, s.schedule_date) for s in found] == [
        (date(2011, 12, 29), date(2011, 12, 29)),
        (date(2011, 12, 31), date(2011, 12, 31)),
    ]
    assert utc(found) == ["2011-12-29T22:00Z", "2011-12-30T22:00Z"]
    begin, end = window(local, date(2011, 12, 30))
    assert begin == end  # an empty plan date
    assert starts(apia, "2011-12-30", settings=local) == []
    # Under a UTC plan: one start per day that exists, at 22:00Z before and after the jump.
    under_utc = starts(apia, "2011-12-28", "2012-01-01", Settings())
    assert [(s.plan_date.day, s.schedule_date.day) for s in under_utc] == [
        (28, 28),
        (29, 29),
        (30, 31),
        (31, 1),
        (1, 2),
    ]
    assert {f"{s.scheduled_for:%H:%M}" for s in under_utc} == {"22:00"}


def test_month_ends() -> None:
    ultimo = schedule([{"singleStart": "23:00"}], zone="Etc/UTC", calendar="/cal/ultimo")
    assert [s.plan_date.isoformat() for s in starts(ultimo, "2024-02-01", "2024-03-01", Settings())] == [
        "2024-02-29"
    ]
    assert [s.plan_date.isoformat() for s in starts(ultimo, "2025-02-01", "2025-03-01", Settings())] == [
        "2025-02-28"
    ]
    monthly = schedule([{"singleStart": "06:00"}], zone="Etc/UTC", calendar="/cal/monthly")
    assert [s.plan_date.isoformat() for s in starts(monthly, "2024-01-01", "2024-05-31", Settings())] == [
        "2024-01-31",
        "2024-02-29",
        "2024-03-31",
        "2024-04-30",
        "2024-05-31",
    ]


def test_when_holiday_on_easter_monday_2026() -> None:
    def days(when: str, holidays: str = "/cal/holidays-de") -> list[str]:
        sched = schedule(
            [{"singleStart": "10:00", "whenHoliday": when}],
            calendar="/cal/workdays",
            nonWorkingDayCalendars=[{"calendarPath": holidays}],
        )
        found = starts(sched, "2026-04-02", "2026-04-08")
        assert len({s.order_id for s in found}) == len(found)
        return [s.plan_date.isoformat()[5:] for s in found]

    assert days("SUPPRESS") == ["04-02", "04-07", "04-08"]
    assert days("IGNORE") == ["04-02", "04-03", "04-06", "04-07", "04-08"]
    # Good Friday and Easter Monday move to the next working day of the workdays calendar,
    # Tuesday, where they meet Tuesday's own start: one order (not to Saturday, which is no
    # holiday but no working day either, as JS7 would). Backwards both go to Thursday.
    assert days("NEXTNONWORKINGDAY") == ["04-02", "04-07", "04-08"]
    assert days("PREVIOUSNONWORKINGDAY") == ["04-02", "04-07", "04-08"]
    # The same when the non-working-day calendar has the weekends too.
    assert days("NEXTNONWORKINGDAY", "/cal/weekends-and-holidays-de") == ["04-02", "04-07", "04-08"]
    assert days("PREVIOUSNONWORKINGDAY", "/cal/weekends-and-holidays-de") == ["04-02", "04-07", "04-08"]

    sched = schedule(
        [{"singleStart": "10:00", "whenHoliday": "NEXTNONWORKINGDAY"}],
        calendar="/cal/workdays",
        nonWorkingDayCalendars=[{"calendarPath": "/cal/holidays-de"}],
    )
    why = explain("/plans/daily", sched, CALENDARS, BERLIN, date(2026, 4, 6))
    assert why.starts == () and Code.HOLIDAY_MOVED in why.codes()
    assert "moves to 2026-04-07" in str(why.reasons)
    here = explain("/plans/daily", sched, CALENDARS, BERLIN, date(2026, 4, 7))
    assert len(here.starts) == 1 and Code.MOVED_HERE in here.codes()
    suppressed = schedule(
        [{"singleStart": "10:00"}],
        calendar="/cal/workdays",
        nonWorkingDayCalendars=[{"calendarPath": "/cal/holidays-de"}],
    )
    assert (
        Code.HOLIDAY_SUPPRESSED
        in explain("/plans/daily", suppressed, CALENDARS, BERLIN, date(2026, 4, 6)).codes()
    )


def test_new_york_schedule_under_a_berlin_plan() -> None:
    new_york = schedule([{"singleStart": "20:00:00"}], zone="America/New_York")
    first, last = date(2026, 3, 1), date(2026, 3, 31)
    found = starts(new_york, "2026-03-01", "2026-03-31")
    # 20:00 in New York is the next morning in Berlin: 02:00, or 01:00 between the US and the
    # European switch to summer time (March 8 .. 28).
    assert len(found) == 31 and all(s.plan_date == s.schedule_date + timedelta(days=1) for s in found)
    assert len({s.scheduled_for for s in found}) == 31
    per_day = []
    day = first
    while day <= last:
        one = starts(new_york, day.isoformat())
        assert all(s.plan_date == day for s in one)
        begin, end = window(BERLIN, day)
        assert all(begin <= s.scheduled_for < end for s in one)
        per_day += one
        day += timedelta(days=1)
    assert per_day == found
    why = explain("/plans/daily", new_york, CALENDARS, BERLIN, date(2026, 3, 10))
    assert Code.OTHER_PLAN_DATE in why.codes() and Code.FROM_OTHER_DATE in why.codes()


def test_plan_windows_follow_period_begin_and_dst() -> None:
    six = Settings("Europe/Berlin", "06:00")
    begin, end = window(six, date(2026, 3, 28))
    assert (begin.isoformat(), end - begin) == ("2026-03-28T05:00:00+00:00", timedelta(hours=23))
    assert window(BERLIN, date(2026, 10, 25))[1] - window(BERLIN, date(2026, 10, 25))[0] == timedelta(
        hours=25
    )
    early = starts(schedule([{"singleStart": "05:00"}]), "2026-06-02", settings=six)
    assert [(s.plan_date, s.schedule_date) for s in early] == [(date(2026, 6, 2), date(2026, 6, 3))]
    assert plan_date_of(six, datetime(2026, 6, 3, 3, 59, tzinfo=UTC)) == date(2026, 6, 2)
    assert plan_date_of(six, datetime(2026, 6, 3, 4, 0, tzinfo=UTC)) == date(2026, 6, 3)
    # A period begin inside the gap: the plan date starts when the clock jumps.
    gap = Settings("Europe/Berlin", "02:30")
    assert window(gap, date(2026, 3, 29))[0].isoformat() == "2026-03-29T01:00:00+00:00"
    with pytest.raises(InvalidArgument, match="time_zone: unknown time zone 'Mars/Olympus'"):
        Settings("Mars/Olympus")
    with pytest.raises(InvalidArgument, match="period_begin"):
        Settings("UTC", "24:00")


def test_order_ids_are_deterministic_unique_and_valid_for_the_controller() -> None:
    sched = parse_schedule(
        {
            "workflowPaths": ["/app/a", "/app/b"],
            "calendars": [{"calendarPath": "/cal/every-day", "periods": [{"repeat": "01:00:00"}]}],
            "orderParameterisations": [
                {"orderName": "eu", "variables": {"region": "'eu'"}},
                {"orderName": "an order name longer than thirty characters", "variables": {"n": "42"}},
            ],
        }
    )
    found = plan(
        {"/p/s|x": sched}, CALENDARS, Settings(), date(2026, 1, 1), date(2026, 1, 2), controller_id="prod"
    )
    assert len(found) == 2 * 24 * 2 * 2
    assert len({s.order_id for s in found}) == len(found)
    assert all("|" not in s.order_id for s in found)
    assert found == plan(
        {"/p/s|x": sched}, CALENDARS, Settings(), date(2026, 1, 1), date(2026, 1, 2), controller_id="prod"
    )
    long = [s for s in found if s.order_name.startswith("an order")]
    assert long[0].order_id.endswith("-an order name longer than thir")
    assert {from_value(v) for v in arguments(long[0].variables).values()} == {42}
    eu = next(s for s in found if s.order_name == "eu")
    assert {k: from_value(v) for k, v in arguments(eu.variables).items()} == {"region": "eu"}
    again = plan(
        {"/p/s|x": sched},
        CALENDARS,
        Settings(),
        date(2026, 1, 1),
        date(2026, 1, 2),
        controller_id="prod",
        submissions={date(2026, 1, 2): 1},
    )
    changed = {
        a.order_id != b.order_id for a, b in zip(found, again, strict=True) if a.plan_date == date(2026, 1, 2)
    }
    kept = {
        a.order_id == b.order_id for a, b in zip(found, again, strict=True) if a.plan_date == date(2026, 1, 1)
    }
    assert changed == {True} and kept == {True}
    other = plan(
        {"/p/s|x": sched}, CALENDARS, Settings(), date(2026, 1, 1), date(2026, 1, 1), controller_id="dev"
    )
    assert not {s.order_id for s in other} & {s.order_id for s in found}
    # The default order name is the schedule's name; '|' would break the controller's ids.
    unnamed = plan(
        {"/p/s|x": schedule([{"singleStart": "10:00"}])},
        CALENDARS,
        BERLIN,
        date(2026, 1, 1),
        date(2026, 1, 1),
    )
    assert unnamed[0].order_name == "s|x" and unnamed[0].order_id.endswith("-s_x")
    assert order_id("c", "/s", "/w", "n", 0, 0, date(1970, 1, 1)) != order_id(
        "c", "/s", "/w", "n", 0, 1, date(1970, 1, 1)
    )


def test_coinciding_starts_make_one_order() -> None:
    twice = schedule([{"singleStart": "10:00"}, {"singleStart": "10:00:00"}])
    assert len(starts(twice, "2026-06-01")) == 1
    # 02:30 shifts onto 03:30 on the spring-forward day.
    shifted = schedule([{"singleStart": "02:30"}, {"singleStart": "03:30"}])
    assert len(starts(shifted, "2026-03-29")) == 1 and len(starts(shifted, "2026-03-30")) == 2


def test_calendar_references_are_checked_when_planning() -> None:
    with pytest.raises(
        NotFound, match=r"schedule /plans/daily: calendars\[0\].calendarPath: no calendar /cal/gone"
    ):
        starts(schedule([{"singleStart": "10:00"}], calendar="/cal/gone"), "2026-06-01")
    with pytest.raises(InvalidArgument, match="calendar /cal/holidays-de is a NONWORKINGDAYSCALENDAR"):
        starts(schedule([{"singleStart": "10:00"}], calendar="/cal/holidays-de"), "2026-06-01")
    with pytest.raises(
        InvalidArgument, match=r"nonWorkingDayCalendars\[0\].calendarPath: .*is a WORKINGDAYSCALENDAR"
    ):
        starts(
            schedule([{"singleStart": "10:00"}], nonWorkingDayCalendars=[{"calendarPath": "/cal/workdays"}]),
            "2026-06-01",
        )
    clash = schedule([{"singleStart": "10:00"}], orderParameterisations=[{"orderName": "daily"}, {}])
    with pytest.raises(
        InvalidArgument, match=r"orderParameterisations\[1\].orderName: order name 'daily' is given twice"
    ):
        starts(clash, "2026-06-01")


def test_explanations() -> None:
    apia = schedule([{"singleStart": "12:00"}], zone="Pacific/Apia")
    assert (
        Code.DATE_MISSING
        in explain("/s", apia, CALENDARS, Settings("Pacific/Apia"), date(2011, 12, 30)).codes()
    )
    skip = schedule([{"singleStart": "02:30"}], dst={"gap": "SKIP"})
    why = explain("/s", skip, CALENDARS, BERLIN, date(2026, 3, 29))
    assert why.starts == () and Code.DST_GAP_SKIPPED in why.codes()
    assert (
        "02:30:00 does not exist on 2026-03-29 in Europe/Berlin: skipped (dst.gap SKIP)"
        in why.reasons[-1].message
    )
    shift = explain("/s", schedule([{"singleStart": "02:30"}]), CALENDARS, BERLIN, date(2026, 3, 29))
    assert "shifted to 03:30:00" in str(shift.reasons) and len(shift.starts) == 1
    assert (
        Code.DST_FOLD
        in explain("/s", schedule([{"singleStart": "02:30"}]), CALENDARS, BERLIN, date(2026, 10, 25)).codes()
    )
    weekend = explain(
        "/s",
        schedule([{"singleStart": "10:00"}], calendar="/cal/workdays"),
        CALENDARS,
        BERLIN,
        date(2026, 6, 6),
    )
    assert weekend.codes() == [Code.PLANNED, Code.NOT_IN_CALENDAR]
    restricted = parse_schedule(
        {
            "workflowPath": "/w",
            "calendars": [
                {
                    "calendarPath": "/cal/workdays",
                    "includes": {"monthdays": [{"days": [2]}]},
                    "periods": [{"singleStart": "10:00"}],
                }
            ],
        }
    )
    assert Code.NOT_SELECTED in explain("/s", restricted, CALENDARS, BERLIN, date(2026, 3, 2)).codes()
    assert len(explain("/s", restricted, CALENDARS, BERLIN, date(2026, 3, 3)).starts) == 1
    assert explain(
        "/s", parse_schedule({"workflowPath": "/w"}), CALENDARS, BERLIN, date(2026, 3, 3)
    ).codes() == [
        Code.PLANNED,
        Code.NO_CALENDARS,
    ]


def test_projections_count_starts_per_plan_date() -> None:
    scheds = {
        "/p/workdays": schedule(
            [{"singleStart": "10:00"}, {"singleStart": "14:00"}], calendar="/cal/workdays"
        ),
        "/p/ultimo": schedule([{"singleStart": "10:00"}], calendar="/cal/ultimo"),
    }
    found = projections(scheds, CALENDARS, BERLIN, 2026, 2)
    assert len(found["/p/workdays"]) == 20 and set(found["/p/workdays"].values()) == {2}
    assert found["/p/ultimo"] == {date(2026, 2, 28): 1}


def test_tz_data_comes_from_the_pinned_package() -> None:
    assert re.fullmatch(r"\d{4}[a-z]", IANA_VERSION) and TZDATA_VERSION.startswith(IANA_VERSION[:4])


@pytest.mark.parametrize(
    "value, message",
    [
        ({}, "workflowPath: missing; give workflowPaths"),
        ({"workflowPaths": ["/w", "/w"]}, "workflowPaths[1]: /w is given twice"),
        ({"workflowPath": "/w", "calendar": []}, "calendar: unknown field"),
        (
            {"workflowPath": "/w", "calendars": [{"calendarPath": "/c", "timeZone": "Europe/Berln"}]},
            "calendars[0].timeZone: unknown time zone 'Europe/Berln'",
        ),
        ({"workflowPath": "/w", "calendars": [{}]}, "calendars[0].calendarPath: missing"),
        (
            {
                "workflowPath": "/w",
                "calendars": [{"calendarPath": "/c", "periods": [{"singleStart": "25:00"}]}],
            },
            "calendars[0].periods[0].singleStart: '25:00' is not a time of day",
        ),
        (
            {
                "workflowPath": "/w",
                "calendars": [{"calendarPath": "/c", "periods": [{"singleStart": "24:00"}]}],
            },
            "calendars[0].periods[0].singleStart: '24:00' is not a time of day (00:00:00..23:59:59)",
        ),
        (
            {
                "workflowPath": "/w",
                "calendars": [
                    {"calendarPath": "/c", "periods": [{"singleStart": "10:00", "repeat": "01:00"}]}
                ],
            },
            "calendars[0].periods[0]: give singleStart, or begin/end/repeat, not both",
        ),
        (
            {"workflowPath": "/w", "calendars": [{"calendarPath": "/c", "periods": [{"begin": "10:00"}]}]},
            "calendars[0].periods[0].repeat: missing",
        ),
        (
            {"workflowPath": "/w", "calendars": [{"calendarPath": "/c", "periods": [{"repeat": "00:00"}]}]},
            "calendars[0].periods[0].repeat: must be longer than 00:00:00",
        ),
        (
            {
                "workflowPath": "/w",
                "calendars": [
                    {"calendarPath": "/c", "periods": [{"begin": "18:00", "end": "08:00", "repeat": "1:00"}]}
                ],
            },
            "calendars[0].periods[0].end: 08:00:00 is not after begin (18:00:00)",
        ),
        (
            {
                "workflowPath": "/w",
                "calendars": [
                    {"calendarPath": "/c", "periods": [{"singleStart": "10:00", "whenHoliday": "LATER"}]}
                ],
            },
            "calendars[0].periods[0].whenHoliday: 'LATER' is not one of SUPPRESS",
        ),
        (
            {
                "workflowPath": "/w",
                "calendars": [{"calendarPath": "/c", "includes": {"monthdays": [{"days": [0]}]}}],
            },
            "calendars[0].includes.monthdays[0].days[0]: 0 is not a day of a month (1..31)",
        ),
        ({"workflowPath": "/w", "dst": {"gap": "LATER"}}, "dst.gap: 'LATER' is not one of SHIFT or SKIP"),
        ({"workflowPath": "/w", "cycle": "SOMETIMES"}, "cycle: 'SOMETIMES' is not one of ELAPSED or WALL"),
        (
            {"workflowPath": "/w", "planOrderAutomatically": "yes"},
            "planOrderAutomatically: must be true or false",
        ),
        (
            {"workflowPath": "/w", "nonWorkingDayCalendars": [{}]},
            "nonWorkingDayCalendars[0].calendarPath: missing",
        ),
        (
            {"workflowPath": "/w", "orderParameterisations": [{"orderName": "a|b"}]},
            "orderParameterisations[0].orderName: 'a|b' has '|'",
        ),
        (
            {"workflowPath": "/w", "orderParameterisations": [{"orderName": "a"}, {"orderName": "a"}]},
            "orderParameterisations[1].orderName: another order name 'a' comes before",
        ),
        (
            {"workflowPath": "/w", "orderParameterisations": [{"variables": {"region": "$where"}}]},
            "orderParameterisations[0].variables.region:",
        ),
        (
            {"workflowPath": "/w", "orderParameterisations": [{"variables": {"region": "'eu"}}]},
            "orderParameterisations[0].variables.region:",
        ),
        (
            {"workflowPath": "/w", "orderParameterisations": [{"variables": {"n": 42}}]},
            "orderParameterisations[0].variables.n: must be an expression",
        ),
    ],
)
def test_schedule_validation_names_the_field_as_written(value: Any, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_schedule(value)
    assert message in str(info.value), str(info.value)


def test_schedule_defaults() -> None:
    sched = parse_schedule(
        {"workflowPath": "/w", "calendars": [{"calendarPath": "/c", "periods": [{"repeat": "01:00"}]}]}
    )
    entry = sched.entries[0]
    assert (entry.time_zone, entry.periods[0].begin, entry.periods[0].end) == ("Etc/UTC", 0, 24 * 3600)
    assert entry.periods[0].when_holiday == "SUPPRESS"
    assert (sched.gap, sched.fold, sched.cycle) == ("SHIFT", "FIRST", "ELAPSED")
    assert sched.plan_automatically and not sched.submit_when_planned
    assert [p.order_name for p in sched.parameterisations] == [""]
