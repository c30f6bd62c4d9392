"""What every part of the store shares: the engine over the database URL, the schema brought up to
date at start, the write lock and the small conversions between rows and protos."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from gen.ostinato.common.v1 import items_pb2
from joc_svc import migrations, naming, schema
from ostinato.errors import NotActive

# PostgreSQL ends a session whose transaction has waited this long for its client: an instance of
# a JOC cluster paused in the middle of one (SIGSTOP, a frozen VM) then holds no row locks that
# would stall the instance that took over. JOC's transactions send their statements back to back.
IDLE_IN_TRANSACTION_MS = 5_000
_PG_OPTIONS = {"options": f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"}


def default_url(data_dir: Any) -> str:
    return f"sqlite:///{data_dir}/joc.db"


class StoreBase:
    def __init__(self, url: str) -> None:
        self.url = url
        self._write_lock = threading.Lock()
        sqlite = url.startswith("sqlite")
        self.engine = sa.create_engine(url, connect_args={"timeout": 30} if sqlite else _PG_OPTIONS)
        if sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self.schema_versions = migrations.migrate(self.engine)
        # (instance id, epoch) of a JOC instance of a cluster: its writes happen only while it
        # holds the lease with that epoch (see store.lease). None: not fenced (tests of parts).
        self.fence: tuple[str, int] | None = None
        self.on_fenced: Callable[[], None] = lambda: None  # a write found the lease lost

    def close(self) -> None:
        self.engine.dispose()

    def _write(self) -> Any:
        return _Locked(self)


def db_now_ms(conn: sa.Connection) -> Any:
    """The database's clock in milliseconds since the epoch, as an SQL expression: every JOC
    instance judges the lease by the same clock, whatever its host's says."""
    if conn.dialect.name == "postgresql":
        return sa.literal_column("CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)")
    return sa.literal_column("CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)")


class _Locked:
    """A write transaction under the store's write lock, fenced by the lease when the store is."""

    def __init__(self, store: StoreBase) -> None:
        self._store = store
        self._lock = store._write_lock
        self._tx: Any = None

    def __enter__(self) -> sa.Connection:
        self._lock.acquire()
        try:
            self._tx = self._store.engine.begin()
            conn: sa.Connection = self._tx.__enter__()
        except BaseException:
            self._lock.release()
            raise
        if (fence := self._store.fence) is not None:
            try:
                _check_fence(conn, *fence)
            except BaseException as e:
                self.__exit__(type(e), e, e.__traceback__)
                if isinstance(e, NotActive):
                    self._store.on_fenced()
                raise
        return conn

    def __exit__(self, *exc: Any) -> None:
        try:
            self._tx.__exit__(*exc)
        finally:
            self._lock.release()


def _check_fence(conn: sa.Connection, instance: str, epoch: int) -> None:
    lease = schema.joc_lease
    holds = sa.and_(
        lease.c.name == "active",
        lease.c.holder == instance,
        lease.c.epoch == epoch,
        lease.c.expires_ms > db_now_ms(conn),
    )
    if conn.dialect.name == "postgresql":
        # A plain read, no row lock: an instance paused in the middle of a transaction (SIGSTOP)
        # must not keep the others from taking the lease over. A write of it that was under way
        # then may still commit; what must happen once has its key besides (an event, a log
        # chunk, a planned order), so it commits whole or not at all.
        held = conn.execute(sa.select(sa.func.count()).where(holds)).scalar_one()
    else:
        # SQLite: an UPDATE, which takes the database's write lock first; a read first would make
        # the transaction fail at once when it writes after another connection wrote.
        held = conn.execute(lease.update().where(holds).values(epoch=lease.c.epoch)).rowcount
    if not held:
        row = conn.execute(sa.select(lease.c.holder, lease.c.address).where(lease.c.name == "active")).one()
        active = row.address if row.holder and row.holder != instance else ""
        raise NotActive(
            f"JOC instance {instance} no longer holds the lease of epoch {epoch}: it writes nothing", active
        )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers (watch streams, listings) never wait for the ingestion's writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def type_word(type: int) -> str:
    return naming.enum_word(items_pb2.ItemType, type)


def utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything JOC stores is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)
