"""Reading the JSON of calendars and schedules field by field, so that every error names the field
as the user wrote it (`includes.monthdays[0].days[2]`). Pure: parsed JSON in, values or
InvalidArgument out."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import date
from enum import StrEnum
from typing import Any, TypeVar

from ostinato.errors import InvalidArgument

E = TypeVar("E", bound=StrEnum)

DAY = 24 * 3600
_TIME = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# Keys JS7 writes into exported objects that say nothing about dates and times.
DESCRIPTIVE_KEYS = frozenset({"title", "documentationName", "version", "path", "name"})


def join(outer: str, key: str) -> str:
    return f"{outer}.{key}" if outer else key


def obj(value: Any, field: str, known: Iterable[str]) -> Mapping[str, Any]:
    """A JSON object with no keys but `known` (and the descriptive ones JS7 exports)."""
    if not isinstance(value, Mapping):
        raise InvalidArgument("must be a JSON object", field=field or "json")
    allowed = set(known)
    for key in value:
        if key not in allowed and key not in DESCRIPTIVE_KEYS:
            raise InvalidArgument(
                f"unknown field; known: {', '.join(sorted(allowed))}", field=join(field, key)
            )
    return value


def items(value: Mapping[str, Any], key: str, field: str) -> list[tuple[str, Any]]:
    """(field path, element) of a list that may be missing (= empty)."""
    found = value.get(key)
    path = join(field, key)
    if found is None:
        return []
    if not isinstance(found, list):
        raise InvalidArgument("must be a list", field=path)
    return [(f"{path}[{i}]", element) for i, element in enumerate(found)]


def integer(value: Any, field: str, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{value!r} is not {what} ({low}..{high})", field=field)
    if not low <= value <= high:
        raise InvalidArgument(f"{value} is not {what} ({low}..{high})", field=field)
    return value


def integers(
    value: Mapping[str, Any], key: str, field: str, low: int, high: int, what: str
) -> frozenset[int]:
    return frozenset(integer(v, path, low, high, what) for path, v in items(value, key, field))


def text(value: Mapping[str, Any], key: str, field: str, what: str, default: str | None = None) -> str:
    found = value.get(key, default)
    if not isinstance(found, str) or not found:
        wanted = f"missing; give {what}" if found is None else f"must be {what}"
        raise InvalidArgument(wanted, field=join(field, key))
    return found


def flag(value: Mapping[str, Any], key: str, field: str, default: bool) -> bool:
    found = value.get(key, default)
    if not isinstance(found, bool):
        raise InvalidArgument("must be true or false", field=join(field, key))
    return found


def day(value: Any, field: str) -> date:
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        raise InvalidArgument(f"{value!r} is not a date YYYY-MM-DD", field=field)
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(f"{value!r} is not a date of the calendar", field=field) from None


def optional_day(value: Mapping[str, Any], key: str, field: str) -> date | None:
    found = value.get(key)
    return None if found is None else day(found, join(field, key))


def span(value: Mapping[str, Any], field: str) -> tuple[date | None, date | None]:
    """The optional from/to of an object, checked to be in order."""
    start, end = optional_day(value, "from", field), optional_day(value, "to", field)
    if start is not None and end is not None and end < start:
        raise InvalidArgument(f"{end} is before from ({start})", field=join(field, "to"))
    return start, end


def seconds(value: Any, field: str, *, allow_24: bool = False) -> int:
    """HH:MM[:SS] as seconds after midnight; 24:00:00 only where it may end a day."""
    match = _TIME.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidArgument(f"{value!r} is not a time HH:MM:SS", field=field)
    hours, minutes, secs = int(match[1]), int(match[2]), int(match[3] or 0)
    total = hours * 3600 + minutes * 60 + secs
    if minutes > 59 or secs > 59 or total > DAY or (total == DAY and not allow_24):
        limit = "00:00:00..24:00:00" if allow_24 else "00:00:00..23:59:59"
        raise InvalidArgument(f"{value!r} is not a time of day ({limit})", field=field)
    return total


def choice(value: Mapping[str, Any], key: str, field: str, enum: type[E], default: E) -> E:
    found = value.get(key)
    if found is None:
        return default
    try:
        return enum(found)
    except ValueError:
        names = " or ".join(str(m) for m in enum)
        raise InvalidArgument(f"{found!r} is not one of {names}", field=join(field, key)) from None


def clock(total: int) -> str:
    """Seconds after midnight as HH:MM:SS (24:00:00 for a day's end)."""
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"
