"""How fast the pure daily planner is: `python scripts/dailyplan_speed.py [--schedules 1000]`.

Plans one date for N cyclic schedules of 100 starts each (every 14 min 24 s, in a few zones,
working-day calendar with holidays and a restriction), with real-time (ELAPSED) and wall-clock
(WALL) cycles, and prints planned starts per second; parsing the schedules' JSON is timed apart.
Each schedule begins at another second, so no two share their starts (the planner resolves a
zone's wall times once per period and date: schedules with equal periods plan faster).
This is the planner alone, without database or controllers: the floor under the daily plan
benchmark.
"""

from __future__ import annotations

import argparse
import time
from datetime import date, timedelta

from ostinato.dailyplan import Settings, parse_calendar, parse_schedule, plan

ZONES = ("Europe/Berlin", "America/New_York", "Asia/Kolkata", "Etc/UTC", "Australia/Lord_Howe")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--date", type=date.fromisoformat, default=date(2026, 3, 10))
    parser.add_argument("--days", type=int, default=1, help="plan dates from --date on")
    args = parser.parse_args()
    calendars = {
        "/cal/workdays": parse_calendar({"includes": {"weekdays": [{"days": [1, 2, 3, 4, 5]}]}}),
        "/cal/holidays": parse_calendar(
            {"type": "NONWORKINGDAYSCALENDAR", "includes": {"dates": ["2026-01-01", "2026-12-25"]}}
        ),
    }
    for cycle in ("ELAPSED", "WALL"):
        began = time.perf_counter()
        schedules = {
            f"/bench/s{i}": parse_schedule(
                {
                    "workflowPaths": [f"/bench/w{i % 10}"],
                    "calendars": [
                        {
                            "calendarPath": "/cal/workdays",
                            "timeZone": ZONES[i % len(ZONES)],
                            "excludes": {"monthdays": [{"days": [31]}]},
                            "periods": [{"begin": clock(i % 864), "end": "24:00:00", "repeat": "00:14:24"}],
                        }
                    ],
                    "nonWorkingDayCalendars": [{"calendarPath": "/cal/holidays"}],
                    "orderParameterisations": [{"orderName": "bench", "variables": {"n": str(i)}}],
                    "cycle": cycle,
                }
            )
            for i in range(args.schedules)
        }
        parsed = time.perf_counter()
        last = args.date + timedelta(days=args.days - 1)
        starts = plan(schedules, calendars, Settings("Europe/Berlin"), args.date, last, controller_id="bench")
        planned = time.perf_counter()
        print(
            f"{cycle:7}: {len(starts)} starts of {args.schedules} schedules for {args.date} .. {last}:"
            f" planned in {planned - parsed:.2f} s ({len(starts) / (planned - parsed):,.0f} starts/s),"
            f" schedules parsed in {parsed - began:.2f} s"
        )


def clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


if __name__ == "__main__":
    main()
