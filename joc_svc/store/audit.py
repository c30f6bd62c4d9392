"""The audit log: who did what, when and why."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from joc_svc.schema import audit_log
from joc_svc.store.base import StoreBase, utc


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    account: str
    action: str
    object: str
    reason: str
    at: datetime


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """A line of the audit log to write."""

    account: str
    action: str
    object: str
    reason: str
    at: datetime


class AuditStore(StoreBase):
    def audit(self, account: str, action: str, object: str, reason: str, now: datetime) -> None:
        with self._write() as conn:
            write_audit(conn, [AuditEntry(account, action, object, reason, now)])

    def audit_entries(self, limit: int = 100, account: str = "", action: str = "") -> list[AuditRow]:
        query = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit if limit > 0 else 100)
        if account:
            query = query.where(audit_log.c.account == account)
        if action:
            query = query.where(audit_log.c.action == action)
        with self.engine.connect() as conn:
            rows = conn.execute(query)
            return [AuditRow(r.id, r.account, r.action, r.object, r.reason, utc(r.at)) for r in rows]


_INSERT_AUDIT = audit_log.insert()


def write_audit(conn: sa.Connection, entries: Sequence[AuditEntry]) -> None:
    """Audit lines in the caller's transaction: they commit with what they tell."""
    if entries:
        conn.execute(_INSERT_AUDIT, [dataclasses.asdict(e) for e in entries])
