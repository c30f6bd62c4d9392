"""Time zones of the daily plan, from the pinned `tzdata` package only, and what a wall-clock time
means in a zone: one instant, two (a fold: the clock went back) or none (a gap: it jumped ahead).

zoneinfo looks for zone files in TZPATH (the system's /usr/share/zoneinfo, or PYTHONTZPATH)
before the `tzdata` package, so the same plan could differ between two machines whose systems
hold different tz releases; and `zoneinfo.reset_tzpath` changes that for the whole process. The
daily plan therefore reads its zones straight from the `tzdata` package pinned in pyproject.toml
(ZoneInfo.from_file): a plan depends only on ostinato's dependencies, and IANA_VERSION is recorded
with each plan. A missing package fails at import (Argo #5653: an image without zoneinfo broke
every schedule only when they ran).

Instants are whole seconds since the epoch (int): every offset and transition since 1970 falls on
whole seconds, and integer arithmetic keeps cyclic periods exact.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import tzdata

from ostinato.errors import InvalidArgument

DAY = 24 * 3600
# The PyPI release (2026.6) and the IANA release it packages (2026f): a plan records the latter.
TZDATA_VERSION: str = tzdata.__version__
IANA_VERSION: str = tzdata.IANA_VERSION

_PACKAGE = importlib.resources.files("tzdata")
NAMES: frozenset[str] = frozenset(_PACKAGE.joinpath("zones").read_text().split())
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_NAIVE_EPOCH = datetime(1970, 1, 1)


def check(name: str, field: str) -> str:
    if name not in NAMES:
        raise InvalidArgument(f"unknown time zone {name!r} (IANA tz {IANA_VERSION})", field=field)
    return name


@cache
def zone(name: str) -> ZoneInfo:
    check(name, "timeZone")
    with _PACKAGE.joinpath("zoneinfo", *name.split("/")).open("rb") as file:
        return ZoneInfo.from_file(file, key=name)


def wall_seconds(day: date, seconds: int) -> int:
    """A wall time (a date and seconds after its midnight) counted like an instant, as if in UTC."""
    return (day.toordinal() - _EPOCH_ORDINAL) * DAY + seconds


def offset(z: ZoneInfo, instant: int) -> int:
    found = datetime.fromtimestamp(instant, z).utcoffset()
    assert found is not None  # a ZoneInfo always has one
    return int(found.total_seconds())


def local(z: ZoneInfo, instant: int) -> tuple[date, int]:
    """The wall time in `z` at `instant`: its date and seconds after midnight."""
    wall = instant + offset(z, instant)
    return date.fromordinal(_EPOCH_ORDINAL + wall // DAY), wall % DAY


def local_date(z: ZoneInfo, instant: int) -> date:
    return local(z, instant)[0]


@dataclass(frozen=True, slots=True)
class Wall:
    """The instants at which a wall time occurs: one, two in a fold (ascending), none in a gap.
    `shifted` is where a gap's time lands with the offset from before the gap (RFC 5545, and
    zoneinfo's fold=0): 02:30 on a day the clock jumps from 02:00 to 03:00 is 03:30."""

    instants: tuple[int, ...]
    shifted: int

    @property
    def gap(self) -> bool:
        return not self.instants

    @property
    def fold(self) -> bool:
        return len(self.instants) > 1


def resolve(z: ZoneInfo, day: date, seconds: int) -> Wall:
    wall = wall_seconds(day, seconds)
    # zoneinfo (PEP 495): fold=0 takes the offset from before a transition, fold=1 the one after;
    # they differ only at a transition, and the sign tells a gap from a fold.
    before, after = _offsets(z, wall)
    if before == after:
        return Wall((wall - before,), wall - before)
    if before > after:
        return Wall((wall - before, wall - after), wall - before)
    return Wall((), wall - before)


def first_at_or_after(z: ZoneInfo, day: date, seconds: int) -> int:
    """The first instant whose wall time is at or after the given one: its first occurrence, or
    in a gap the moment the clock jumps (where a plan date begins)."""
    found = resolve(z, day, seconds)
    if found.instants:
        return found.instants[0]
    wall = wall_seconds(day, seconds)
    # The jump lies between the time read with the later offset (still before it) and the
    # shifted time (after it): find it by bisection.
    low, high = wall - _offsets(z, wall)[1], found.shifted
    while high - low > 1:
        middle = (low + high) // 2
        if middle + offset(z, middle) >= wall:
            high = middle
        else:
            low = middle
    return high


def exists(z: ZoneInfo, day: date) -> bool:
    """False for a date the zone skipped (Pacific/Apia had no 2011-12-30)."""
    return local_date(z, first_at_or_after(z, day, 0)) == day


def _offsets(z: ZoneInfo, wall: int) -> tuple[int, int]:
    """The zone's offsets for a wall time read with fold=0 and fold=1 (naive datetimes: the
    fastest way through zoneinfo)."""
    naive = _NAIVE_EPOCH + timedelta(seconds=wall)
    before, after = z.utcoffset(naive), z.utcoffset(naive.replace(fold=1))
    assert before is not None and after is not None  # a ZoneInfo always has them
    return int(before.total_seconds()), int(after.total_seconds())
