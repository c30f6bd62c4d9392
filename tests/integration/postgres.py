"""PostgreSQL for JOC's tests: the local server (started when it is not running), a fresh database
per test session, dropped after; each test gets it with an empty schema. When PostgreSQL cannot be
reached even after starting it, the tests FAIL saying so: they never skip silently.

Import the fixtures into a test module: `from tests.integration.postgres import pg_url, pg_server`.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator

import pytest

HOST = os.environ.get("OSTINATO_TEST_PG_HOST", "127.0.0.1")
PORT = int(os.environ.get("OSTINATO_TEST_PG_PORT", "5432"))
USER = os.environ.get("OSTINATO_TEST_PG_USER", "postgres")
START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def _connect(dbname: str = "postgres"):  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(host=HOST, port=PORT, user=USER, dbname=dbname, autocommit=True, connect_timeout=3)


def _reachable() -> Exception | None:
    try:
        _connect().close()
        return None
    except Exception as e:
        return e


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A database of its own for this session; yields its SQLAlchemy URL."""
    error = _reachable()
    if error is not None:
        started = subprocess.run(START, shell=True, capture_output=True, text=True, timeout=60)
        deadline = time.monotonic() + 30
        while (error := _reachable()) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if error is not None:
            pytest.fail(
                f"PostgreSQL at {USER}@{HOST}:{PORT} cannot be reached ({error}); `{START}` said:"
                f" {started.stdout}{started.stderr}",
                pytrace=False,
            )
    name = f"ostinato_test_{secrets.token_hex(4)}"
    with _connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{USER}@{HOST}:{PORT}/{name}"
    finally:
        with _connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_server: str) -> str:
    """The session's database with an empty schema."""
    name = pg_server.rsplit("/", 1)[1]
    with _connect(name) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return pg_server
