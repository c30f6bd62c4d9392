"""The daily plan's pure core: calendars, schedules and the planner that turns them into planned
starts, exact in every time zone and across DST. No clock, no database, no network: callers pass
the released calendars and schedules, the settings and the plan dates, and get starts back.

- zones: time zones from the pinned tzdata package; what a wall time means in a zone.
- calendars: parse/validate calendars; the dates they yield; schedule restrictions over them.
- schedules: parse/validate schedules (periods, whenHoliday, DST policy, order parameterisations).
- planner: plan() and projections(), plan date windows, deterministic order ids.
- explain: why a plan date has no starts (or these) for a schedule.
"""

from ostinato.dailyplan.calendars import Calendar, CalendarType, parse_calendar
from ostinato.dailyplan.explain import Code, Explanation, Reason, explain
from ostinato.dailyplan.planner import PlannedStart, Settings, plan, plan_date_of, projections, window
from ostinato.dailyplan.schedules import Schedule, arguments, parse_schedule
from ostinato.dailyplan.zones import IANA_VERSION, TZDATA_VERSION

__all__ = [
    "IANA_VERSION",
    "TZDATA_VERSION",
    "Calendar",
    "CalendarType",
    "Code",
    "Explanation",
    "PlannedStart",
    "Reason",
    "Schedule",
    "Settings",
    "arguments",
    "explain",
    "parse_calendar",
    "parse_schedule",
    "plan",
    "plan_date_of",
    "projections",
    "window",
]
