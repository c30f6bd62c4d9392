"""Pure rules for names JOC makes or checks: inventory paths, version ids, order ids, enum words."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from ostinato import limits
from ostinato.errors import InvalidArgument


def check_path(path: str, field: str = "path") -> str:
    """An absolute inventory path like "/examples/hello": no empty, "." or ".." segments."""
    limits.check_path_length(path, field)
    if not path.startswith("/") or path == "/":
        raise InvalidArgument(
            f"{limits.excerpt(path)} is not an absolute object path like /folder/name", field=field
        )
    for segment in path[1:].split("/"):
        if segment in ("", ".", "..") or segment != segment.strip() or any(ord(c) < 32 for c in segment):
            raise InvalidArgument(
                f"{limits.excerpt(path)} has an invalid segment {limits.excerpt(segment)}", field=field
            )
    return path


def check_folder(folder: str, field: str = "folder") -> str:
    """A folder: "/" or an absolute path; a trailing slash is tolerated. Returns it without one."""
    if folder in ("", "/"):
        return "/"
    return check_path(folder.rstrip("/"), field)


def folder_prefix(folder: str) -> str:
    """What every path below `folder` starts with."""
    return "/" if folder == "/" else folder + "/"


def new_version_id(now: datetime, random_hex: str | None = None) -> str:
    """Time-ordered, so versions sort by deployment time: 20250101T120000Z-1a2b3c."""
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{random_hex or secrets.token_hex(3)}"


def enum_word(enum: Any, value: int) -> str:
    """ORDER_STATE_FINISHED -> FINISHED: the short name the database stores and the CLI shows."""
    name: str = enum.Name(value)
    prefix = _enum_prefix(enum)
    return name[len(prefix) :] if name.startswith(prefix) else name


def enum_value(enum: Any, word: str) -> int:
    """FINISHED, finished or ORDER_STATE_FINISHED -> the enum number; ValueError when unknown."""
    word = word.strip().upper().replace("-", "_")
    prefix = _enum_prefix(enum)
    for name in (word, prefix + word):
        if name in enum.keys():
            return int(enum.Value(name))
    raise ValueError(word)


def _enum_prefix(enum: Any) -> str:
    # Proto enum values carry the enum's name as prefix: the value 0 is always XXX_UNSPECIFIED.
    return str(enum.Name(0)).removesuffix("UNSPECIFIED")
