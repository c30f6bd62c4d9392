"""The planner against a naive reference, over random zones of all of IANA, dates 1970-2037
(biased to days the zone changes its offset) and random rules.

The reference never turns a wall time into an instant the way the planner does (zoneinfo's fold
and gap handling): it walks every instant of a 1-minute grid (30 s where an offset has seconds:
Africa/Monrovia until 1972) through the zone's UTC -> local mapping, the direction without any
ambiguity, and reads off which instants have a given wall time, where the clock jumped, which
dates exist and where plan dates begin. Calendars are weekday sets and date lists it checks
itself, non-working days are walked forward where the planner walks backward.

Properties: the plan equals the reference; order ids are unique; each start lies in exactly one
plan date, inside its window; plan(range) is the union of plan(D); planning twice is the same."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ostinato.dailyplan import Settings, parse_calendar, parse_schedule, plan, window
from ostinato.dailyplan import zones as Z

DAY = 24 * 3600
NAMES = sorted(Z.NAMES)
EPOCH = date(1970, 1, 1).toordinal()
FIRST_DAY, LAST_DAY = date(1970, 1, 8), date(2037, 12, 20)


def wall_of(d: date, seconds: int) -> int:
    return (d.toordinal() - EPOCH) * DAY + seconds


def date_of(wall: int) -> date:
    return date.fromordinal(EPOCH + wall // DAY)


class Grid:
    """Every grid instant of [first, last] days (UTC) with its wall time in a zone."""

    def __init__(self, name: str, first: date, last: date) -> None:
        z = Z.zone(name)
        start, end = wall_of(first, 0), wall_of(last, 0)
        hourly = {self._offset(z, t) for t in range(start, end, 3600)}
        self.step = 60 if all(o % 60 == 0 for o in hourly) else 30
        self.instants = list(range(start, end, self.step))
        self.walls = [t + self._offset(z, t) for t in self.instants]
        self.at: dict[int, list[int]] = defaultdict(list)
        for t, w in zip(self.instants, self.walls, strict=True):
            self.at[w].append(t)
        self.dates = {date_of(w) for w in self.walls}
        # Where the clock jumps ahead: (last wall before, first wall after, offset before).
        self.jumps = [
            (w0, w1, w0 - t0)
            for t0, w0, w1 in zip(self.instants, self.walls, self.walls[1:], strict=False)
            if w1 - w0 > self.step
        ]

    @staticmethod
    def _offset(z: ZoneInfo, t: int) -> int:
        found = datetime.fromtimestamp(t, z).utcoffset()
        assert found is not None
        return int(found.total_seconds())

    def occurrences(self, wall: int) -> list[int]:
        return self.at.get(wall, [])

    def shifted(self, wall: int) -> int:
        """A wall time in a gap, read with the offset from before the gap."""
        for before, after, offset in self.jumps:
            if before < wall < after:
                return wall - offset
        raise AssertionError(f"wall {wall} is neither on the grid nor in a gap")

    def first_at_or_after(self, wall: int) -> int:
        return next(t for t, w in zip(self.instants, self.walls, strict=True) if w >= wall)


@dataclass(frozen=True)
class PeriodCase:
    single: int | None
    begin: int
    end: int
    repeat: int
    when: str

    def json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"whenHoliday": self.when}
        if self.single is not None:
            found["singleStart"] = clock(self.single)
        else:
            found |= {"begin": clock(self.begin), "end": clock(self.end), "repeat": clock(self.repeat)}
        return found


@dataclass(frozen=True)
class Case:
    zones: tuple[str, ...]  # one per calendar entry
    plan_zone: str
    period_begin: int
    first: date
    days: int
    periods: tuple[tuple[PeriodCase, ...], ...]  # per entry
    weekdays: frozenset[int]  # JS7 1..7
    extra: frozenset[date]
    excluded: frozenset[date]
    holidays: frozenset[date]
    gap: str
    fold: str
    cycle: str
    workflows: int


def clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def transitions(name: str, year: int) -> list[tuple[date, list[int]]]:
    """The days of `year` around which the zone changes its offset, each with the wall times
    (seconds of the day) at the edges and in the middle of its gap or fold."""
    z = Z.zone(name)
    found = []
    previous = Z.offset(z, wall_of(date(year, 1, 1), 12 * 3600))
    day = date(year, 1, 2)
    while day.year == year:
        noon = wall_of(day, 12 * 3600)
        now = Z.offset(z, noon)
        if now != previous:
            low, high = noon - DAY, noon  # the change is in (low, high]
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (middle, high) if Z.offset(z, middle) == previous else (low, middle)
            before, after = high + previous, high + now
            # Where the gap or fold begins, its middle, its last minute, and the first time after.
            low_wall, high_wall = min(before, after), max(before, after)
            walls = {low_wall, (low_wall + high_wall) // 2, high_wall - 60, high_wall}
            found.append((day, sorted({w % DAY // 60 * 60 for w in walls})))
            previous = now
        day += timedelta(days=1)
    return found


# Zones and years where planners break: days skipped, big and odd-sized jumps, midnight changes.
HARD = {
    "Pacific/Apia": 2011,
    "Pacific/Fakaofo": 2011,
    "Pacific/Kwajalein": 1993,
    "Pacific/Kiritimati": 1994,
    "Antarctica/Vostok": 1994,
    "Antarctica/Casey": 2010,
    "Africa/Monrovia": 1972,
    "Australia/Lord_Howe": 2026,
    "Antarctica/Troll": 2026,
    "America/Santiago": 2026,
    "America/Havana": 2026,
    "Asia/Beirut": 2026,
    "Europe/Berlin": 2026,
    "America/New_York": 2026,
}
# Times where transitions happen (around midnight and the small hours) are drawn often.
TIMES = st.one_of(
    st.sampled_from([0, 1800, 3600, 5400, 7200, 9000, 10800, 23 * 3600, 23 * 3600 + 1800]),
    st.integers(0, 1439).map(lambda m: m * 60),
)
WHEN = st.sampled_from(["SUPPRESS", "IGNORE", "NEXTNONWORKINGDAY", "PREVIOUSNONWORKINGDAY"])


@st.composite
def periods(draw: st.DrawFn, times: st.SearchStrategy[int]) -> PeriodCase:
    when = draw(WHEN)
    if draw(st.booleans()):
        return PeriodCase(draw(times), 0, DAY, 0, when)
    begin = draw(times)
    end = draw(st.one_of(st.just(DAY), times))
    repeat = draw(st.sampled_from([15, 30, 45, 60, 90, 180, 420, 1440])) * 60
    return PeriodCase(None, begin, end if end > begin else DAY, repeat, when)


def near(walls: list[int]) -> st.SearchStrategy[int]:
    return st.one_of(*[st.sampled_from(walls)] * 3, TIMES) if walls else TIMES


@st.composite
def cases(draw: st.DrawFn, transition_days: bool = False) -> Case:
    """Random zones, dates and rules; with `transition_days`, days the schedule's zone changes its
    offset, every day a working day, and times mostly in its gap or fold."""
    zone = draw(st.one_of(st.sampled_from(sorted(HARD)), st.sampled_from(NAMES)))
    zones = (zone, *draw(st.lists(st.sampled_from(NAMES), max_size=0 if transition_days else 1)))
    plan_zone = draw(st.one_of(st.just(zone), st.sampled_from(NAMES)))
    year = draw(st.one_of(st.just(HARD.get(zone, 2026)), st.integers(1970, 2037)))
    changes = transitions(zone, year)
    if transition_days:
        # The first year from the drawn one in which the zone changes; Berlin for zones that never do.
        for later in (*range(year, 2038), *range(1970, year)):
            if changes := transitions(zone, later):
                break
        else:
            zones = (zone := "Europe/Berlin",)
            changes = transitions(zone, 2026)
    plan_changes = transitions(plan_zone, changes[0][0].year if changes else year)
    walls: list[int] = []
    plan_walls: list[int] = []
    if (changes or plan_changes) and (transition_days or draw(st.integers(0, 3))):
        anchor, walls = draw(st.sampled_from(changes or plan_changes))
        plan_walls = next((w for d, w in plan_changes if abs((d - anchor).days) <= 1), [])
    else:
        anchor = date(year, 1, 1) + timedelta(days=draw(st.integers(0, 364)))
    first = min(max(anchor + timedelta(days=draw(st.integers(-1, 0))), FIRST_DAY), LAST_DAY)

    def days_around(most: int) -> st.SearchStrategy[frozenset[date]]:
        days = st.integers(-6, 8).map(lambda n: first + timedelta(days=n))
        return st.lists(days, max_size=0 if transition_days else most).map(frozenset)

    every_day = st.just(frozenset(range(1, 8)))
    return Case(
        zones=zones,
        plan_zone=plan_zone,
        period_begin=draw(near(plan_walls)),
        first=first,
        days=draw(st.integers(1, 3)),
        periods=tuple(tuple(draw(st.lists(periods(near(walls)), min_size=1, max_size=3))) for _ in zones),
        weekdays=draw(
            every_day if transition_days else st.one_of(every_day, st.frozensets(st.integers(1, 7)))
        ),
        extra=draw(days_around(4)),
        excluded=draw(days_around(2)),
        holidays=draw(days_around(3)),
        gap=draw(st.sampled_from(["SHIFT", "SKIP"])),
        fold=draw(st.sampled_from(["FIRST", "SECOND", "BOTH"])),
        cycle=draw(st.sampled_from(["ELAPSED", "WALL"])),
        workflows=draw(st.integers(1, 2)),
    )


def run_plan(case: Case, first: date, last: date) -> list[Any]:
    calendars = {
        "/cal/work": parse_calendar(
            {
                "type": "WORKINGDAYSCALENDAR",
                "includes": {
                    "weekdays": [{"days": sorted(case.weekdays)}] if case.weekdays else [],
                    "dates": sorted(d.isoformat() for d in case.extra),
                },
                "excludes": {"dates": sorted(d.isoformat() for d in case.excluded)},
            }
        ),
        "/cal/off": parse_calendar(
            {
                "type": "NONWORKINGDAYSCALENDAR",
                "includes": {"dates": sorted(d.isoformat() for d in case.holidays)},
            }
        ),
    }
    schedule = parse_schedule(
        {
            "workflowPaths": [f"/w/{i}" for i in range(case.workflows)],
            "calendars": [
                {"calendarPath": "/cal/work", "timeZone": zone, "periods": [p.json() for p in ps]}
                for zone, ps in zip(case.zones, case.periods, strict=True)
            ],
            "nonWorkingDayCalendars": [{"calendarPath": "/cal/off"}],
            "dst": {"gap": case.gap, "fold": case.fold},
            "cycle": case.cycle,
        }
    )
    return plan({"/s/case": schedule}, calendars, plan_settings(case), first, last)


def plan_settings(case: Case) -> Settings:
    return Settings(case.plan_zone, clock(case.period_begin))


def reference(case: Case) -> set[tuple[date, int, str, date, int, int]]:
    """(plan date, instant, workflow, schedule date, cycle number, cycle count) of every start."""
    last = case.first + timedelta(days=case.days - 1)
    grid_first, grid_last = case.first - timedelta(days=4), last + timedelta(days=5)
    plan_grid = Grid(case.plan_zone, grid_first, grid_last)
    bounds = [
        plan_grid.first_at_or_after(wall_of(case.first + timedelta(days=i), case.period_begin))
        for i in range(case.days + 1)
    ]

    def working(d: date) -> bool:
        return (d.isoweekday() in case.weekdays or d in case.extra) and d not in case.excluded

    def target(c: date, when: str) -> date | None:
        if c not in case.holidays:
            return c
        if when == "IGNORE":
            return c
        if when == "SUPPRESS":
            return None
        step = timedelta(days=1 if when == "NEXTNONWORKINGDAY" else -1)
        d = c + step
        while d in case.holidays or not working(d):  # to the next (previous) working day
            d += step
            if abs((d - c).days) > 366:
                return None
        event("a start moved off a non-working day")
        return d

    if any(b - a != DAY for a, b in zip(bounds, bounds[1:], strict=False)):
        event("a plan date not 24 hours long")
    found: dict[tuple[str, int], tuple[date, int, str, date, int, int]] = {}
    for zone, zone_periods in zip(case.zones, case.periods, strict=True):
        grid = Grid(zone, grid_first, grid_last)

        def resolve(wall: int, gap: str, fold: str, grid: Grid = grid) -> list[int]:
            at = grid.occurrences(wall)
            if not at:
                event("a wall time in a gap")
                return [] if gap == "SKIP" else [grid.shifted(wall)]
            if len(at) == 1:
                return at
            event("a wall time in a fold")
            return {"FIRST": at[:1], "SECOND": at[-1:], "BOTH": at}[fold]

        for period in zone_periods:
            days: set[date] = set()
            c = case.first - timedelta(days=12)
            while c <= last + timedelta(days=12):
                e = target(c, period.when) if working(c) else None
                if e is not None and case.first - timedelta(days=3) <= e <= last + timedelta(days=3):
                    days.add(e)
                c += timedelta(days=1)
            for e in sorted(days):
                if e not in grid.dates:
                    event("a date the zone skipped")
                    continue
                if period.single is not None:
                    starts = [(t, 0, 0) for t in resolve(wall_of(e, period.single), case.gap, case.fold)]
                else:
                    if case.cycle == "WALL":
                        instants = sorted(
                            {
                                t
                                for w in range(period.begin, period.end, period.repeat)
                                for t in resolve(wall_of(e, w), case.gap, case.fold)
                            }
                        )
                    else:
                        # Boundaries of a real-time cycle: SHIFT in a gap; in a fold the first
                        # begin (the second for SECOND) and the second end (the first for FIRST).
                        begin = resolve(
                            wall_of(e, period.begin), "SHIFT", "SECOND" if case.fold == "SECOND" else "FIRST"
                        )
                        end = resolve(
                            wall_of(e, period.end), "SHIFT", "FIRST" if case.fold == "FIRST" else "SECOND"
                        )
                        instants = list(range(begin[0], end[0], period.repeat))
                    starts = [(t, n, len(instants)) for n, t in enumerate(instants, 1)]
                for t, number, count in starts:
                    if not bounds[0] <= t < bounds[-1]:
                        continue
                    plan_date = case.first + timedelta(days=max(i for i, b in enumerate(bounds) if b <= t))
                    for w in range(case.workflows):
                        found.setdefault((f"/w/{w}", t), (plan_date, t, f"/w/{w}", e, number, count))
    return set(found.values())


# About 0.1 s an example: 50 + 40 keep both tests near 10 s on a busy CI machine.
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_planner_equals_naive_reference(case: Case) -> None:
    check_against_reference(case)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(transition_days=True))
def test_planner_equals_naive_reference_on_days_the_clock_changes(case: Case) -> None:
    check_against_reference(case)


def check_against_reference(case: Case) -> None:
    last = case.first + timedelta(days=case.days - 1)
    planned = run_plan(case, case.first, last)
    got = {
        (
            s.plan_date,
            int(s.scheduled_for.timestamp()),
            s.workflow_path,
            s.schedule_date,
            s.cycle_number,
            s.cycle_count,
        )
        for s in planned
    }
    assert len(got) == len(planned)
    assert got == reference(case)
    assert len({s.order_id for s in planned}) == len(planned)
    assert all("|" not in s.order_id for s in planned)
    settings_ = plan_settings(case)
    per_day = []
    for i in range(case.days):
        day = case.first + timedelta(days=i)
        one = run_plan(case, day, day)
        begin, end = window(settings_, day)
        assert all(s.plan_date == day and begin <= s.scheduled_for < end for s in one)
        per_day += one
    assert sorted(per_day, key=lambda s: (s.scheduled_for, s.order_id)) == planned
    assert run_plan(case, case.first, last) == planned
