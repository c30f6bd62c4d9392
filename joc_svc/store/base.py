"""What every part of the store shares: the engine over the database URL, the schema brought up to
date at start, the write lock and the small conversions between rows and protos."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from gen.ostinato.common.v1 import items_pb2
from joc_svc import migrations, naming


def default_url(data_dir: Any) -> str:
    return f"sqlite:///{data_dir}/joc.db"


class StoreBase:
    def __init__(self, url: str) -> None:
        self.url = url
        self._write_lock = threading.Lock()
        sqlite = url.startswith("sqlite")
        self.engine = sa.create_engine(url, connect_args={"timeout": 30} if sqlite else {})
        if sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self.schema_versions = migrations.migrate(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def _write(self) -> Any:
        return _Locked(self._write_lock, self.engine)


class _Locked:
    """A write transaction under the store's write lock."""

    def __init__(self, lock: threading.Lock, engine: sa.Engine) -> None:
        self._lock = lock
        self._engine = engine
        self._tx: Any = None

    def __enter__(self) -> sa.Connection:
        self._lock.acquire()
        try:
            self._tx = self._engine.begin()
            return self._tx.__enter__()
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, *exc: Any) -> None:
        try:
            self._tx.__exit__(*exc)
        finally:
            self._lock.release()


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
