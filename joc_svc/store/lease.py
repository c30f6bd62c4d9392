"""The JOC cluster's lease, timed by the database's clock: which instance is active, with which
epoch, and every instance's heartbeat. The database is the one arbiter: every decision is a
conditional UPDATE of the lease row, so when several instances try at once one wins (PostgreSQL
locks the row and re-checks the condition for the second; SQLite has one writer).

The fence: each write transaction of an instance starts by checking, in the transaction, that the
instance still holds the lease with its epoch (`StoreBase._write`). A deposed instance (paused
past its lease, cut off) therefore starts no write once another took over; on PostgreSQL a write
it had under way may still commit, and the keys of what must happen once (events, log chunks,
planned orders) keep that from doubling anything."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from joc_svc import schema
from joc_svc.store.base import StoreBase, db_now_ms

L = schema.joc_lease
I = schema.joc_instances  # noqa: E741
LEASE = "active"


@dataclass(frozen=True, slots=True)
class LeaseView:
    """The lease row as read in one transaction, with the database's clock then."""

    holder: str
    address: str
    epoch: int
    expires_ms: int
    now_ms: int

    @property
    def live(self) -> bool:
        return bool(self.holder) and self.expires_ms > self.now_ms

    def held_by(self, instance: str) -> bool:
        return self.live and self.holder == instance


@dataclass(frozen=True, slots=True)
class InstanceRow:
    id: str
    address: str
    web_url: str
    started_ms: int
    heartbeat_ms: int


class LeaseStore(StoreBase):
    def lease_tick(
        self, me: str, held: int, address: str, web_url: str, lease_ms: int, grace_ms: int
    ) -> LeaseView:
        """One heartbeat of instance `me`, which holds the lease of epoch `held` (0: none): renews
        that lease while it runs, else takes the lease over when it ended (epoch + 1) and this
        instance may have it: it is the named successor, or there is none and this instance did
        not resign it, or nobody took it for `grace_ms`. Then records the heartbeat. Returns the
        lease as it is now.

        Only a lease this process took is renewed, never one found under its name: a restarted
        instance (or a second one started by mistake with the same id) takes over like any other,
        with a new epoch, once the lease ended."""
        with self.engine.begin() as conn:
            now = conn.execute(sa.select(db_now_ms(conn))).scalar_one()
            renewed = (
                held
                and conn.execute(
                    L.update()
                    .where(L.c.name == LEASE, L.c.holder == me, L.c.epoch == held, L.c.expires_ms > now)
                    .values(expires_ms=now + lease_ms, address=address)
                ).rowcount
            )
            if not renewed:
                conn.execute(
                    L.update()
                    .where(
                        L.c.name == LEASE,
                        L.c.expires_ms <= now,
                        sa.or_(
                            L.c.successor == me,
                            sa.and_(L.c.successor == "", L.c.resigned != me),
                            L.c.expires_ms <= now - grace_ms,
                        ),
                    )
                    .values(
                        holder=me,
                        address=address,
                        epoch=L.c.epoch + 1,
                        expires_ms=now + lease_ms,
                        successor="",
                        resigned="",
                    )
                )
            beat = {"address": address, "web_url": web_url, "heartbeat_ms": now}
            if not conn.execute(I.update().where(I.c.id == me).values(**beat)).rowcount:
                conn.execute(I.insert().values(id=me, started_ms=now, **beat))
            return _view(conn, now)

    def lease(self) -> LeaseView:
        with self.engine.connect() as conn:
            return _view(conn, conn.execute(sa.select(db_now_ms(conn))).scalar_one())

    def lease_resign(self, me: str, epoch: int, successor: str) -> bool:
        """Ends `me`'s lease at once for a switch-over to `successor` ("": any other instance).
        False when `me` did not hold it with `epoch`."""
        with self.engine.begin() as conn:
            now = conn.execute(sa.select(db_now_ms(conn))).scalar_one()
            return bool(
                conn.execute(
                    L.update()
                    .where(L.c.name == LEASE, L.c.holder == me, L.c.epoch == epoch)
                    .values(expires_ms=now, successor=successor, resigned=me)
                ).rowcount
            )

    def lease_release(self, me: str, epoch: int) -> None:
        """Gives the lease up on a clean stop: any instance may take it at once, this one too
        when it starts again."""
        with self.engine.begin() as conn:
            now = conn.execute(sa.select(db_now_ms(conn))).scalar_one()
            conn.execute(
                L.update()
                .where(L.c.name == LEASE, L.c.holder == me, L.c.epoch == epoch)
                .values(holder="", expires_ms=now, successor="", resigned="")
            )

    def joc_instances(self) -> list[InstanceRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(I).order_by(I.c.id)).all()
        return [InstanceRow(r.id, r.address, r.web_url, r.started_ms, r.heartbeat_ms) for r in rows]


def _view(conn: sa.Connection, now: int) -> LeaseView:
    row = conn.execute(sa.select(L).where(L.c.name == LEASE)).one()
    return LeaseView(row.holder, row.address, row.epoch, row.expires_ms, now)
