"""Ids made by clients and JOC alike: one format, so that a client may choose an order's id itself
(the CLI does, so that repeating a request after a lost answer adds nothing twice)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime


def new_order_id(now: datetime, random_hex: str | None = None) -> str:
    """Like JS7's daily-plan ids (2025-01-01#<10 hex>) but without JS7's leading '#', which
    starts a comment in a shell and would make every `ostinato order show ID` need quoting."""
    return f"{now.astimezone(UTC):%Y-%m-%d}#{random_hex or secrets.token_hex(5)}"
