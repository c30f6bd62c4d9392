"""Schema migrations of JOC's database: a `schema_version` table and ordered migration functions.

Each migration is a function of a connection that changes the schema from version N-1 to N, with
its table definitions frozen as they were at that version (never the current ones of
joc_svc.schema, which move on). `migrate` runs the missing ones at start, each in its own
transaction together with the new version number, so a crash leaves the database at a version.
A database made by JOC before migrations existed (its tables but no schema_version) is version 1.

Simple on purpose (no alembic): JOC's schema has one owner and changes rarely; tests check that a
fresh database and an upgraded one both end up equal to joc_svc.schema.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import sqlalchemy as sa

log = logging.getLogger(__name__)

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Time = sa.DateTime(timezone=True)

version_table = sa.Table("schema_version", sa.MetaData(), sa.Column("version", sa.Integer, nullable=False))

# Any 64-bit number of JOC's own: PostgreSQL serialises JOCs that migrate one database at once.
_PG_LOCK = 0x05717A70


def _v1_baseline(conn: sa.Connection) -> None:
    """The schema of the first JOC: inventory, deployments, orders, events, logs, cursors, audit."""
    md = sa.MetaData()
    sa.Table(
        "inventory_objects",
        md,
        sa.Column("path", sa.String, primary_key=True),
        sa.Column("type", sa.String, primary_key=True),
        sa.Column("json", sa.Text, nullable=False),
        sa.Column("modified_at", _Time, nullable=False),
        sa.Column("deployed_version_id", sa.String, nullable=False, default=""),
    )
    sa.Table(
        "deployments",
        md,
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("path", sa.String, nullable=False, index=True),
        sa.Column("type", sa.String, nullable=False),
        sa.Column("version_id", sa.String, nullable=False),
        sa.Column("controller_id", sa.String, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("message", sa.Text, nullable=False, default=""),
        sa.Column("account", sa.String, nullable=False, default=""),
        sa.Column("requested_at", _Time, nullable=False),
        sa.Column("confirmed_at", _Time),
    )
    sa.Table(
        "orders",
        md,
        sa.Column("order_id", sa.String, primary_key=True),
        sa.Column("controller_id", sa.String, nullable=False),
        sa.Column("workflow_path", sa.String, nullable=False, index=True),
        sa.Column("state", sa.String, nullable=False, index=True),
        sa.Column("order", sa.LargeBinary, nullable=False),
        sa.Column("added_at", _Time, nullable=False, index=True),
        sa.Column("updated_at", _Time, nullable=False),
        sa.Column("deleted_at", _Time),
    )
    sa.Table(
        "order_events",
        md,
        sa.Column("controller_id", sa.String, primary_key=True),
        sa.Column("event_id", sa.BigInteger, primary_key=True),
        sa.Column("order_id", sa.String, nullable=False, index=True),
        sa.Column("event", sa.LargeBinary, nullable=False),
    )
    sa.Table(
        "order_logs",
        md,
        sa.Column("order_id", sa.String, primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("stream", sa.String, nullable=False),
        sa.Column("chunk", sa.Text, nullable=False),
        sa.Column("timestamp", _Time, nullable=False),
    )
    sa.Table(
        "controller_event_cursors",
        md,
        sa.Column("controller_id", sa.String, primary_key=True),
        sa.Column("last_event_id", sa.BigInteger, nullable=False),
    )
    sa.Table(
        "audit_log",
        md,
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("account", sa.String, nullable=False),
        sa.Column("action", sa.String, nullable=False),
        sa.Column("object", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False, default=""),
        sa.Column("at", _Time, nullable=False, index=True),
    )
    md.create_all(conn)


def _v2_deployment_signing_accounts(conn: sa.Connection) -> None:
    """Asynchronous deployment (pending rows, delivered items, agent confirmations), releases,
    accounts with tokens and signing keys."""
    _add_column(conn, "deployments", sa.Column("pending", sa.Boolean, nullable=False), "false")
    _add_column(conn, "deployments", sa.Column("attempts", sa.Integer, nullable=False), "0")
    _add_column(conn, "deployments", sa.Column("signer", sa.String, nullable=False), "''")
    _add_column(conn, "inventory_objects", sa.Column("released_at", _Time), None)
    md = sa.MetaData()
    sa.Table(
        "deployed_items",
        md,
        sa.Column("path", sa.String, primary_key=True),
        sa.Column("type", sa.String, primary_key=True),
        sa.Column("version_id", sa.String, primary_key=True),
        sa.Column("json", sa.Text, nullable=False),
        sa.Column("signature", sa.LargeBinary, nullable=False),
        sa.Column("created_at", _Time, nullable=False),
        sa.Column("account", sa.String, nullable=False),
    )
    sa.Table(
        "deployment_agents",
        md,
        sa.Column("controller_id", sa.String, primary_key=True),
        sa.Column("path", sa.String, primary_key=True),
        sa.Column("version_id", sa.String, primary_key=True),
        sa.Column("agent", sa.String, primary_key=True),
        sa.Column("attached_at", _Time, nullable=False),
    )
    sa.Table(
        "releases",
        md,
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("path", sa.String, nullable=False, index=True),
        sa.Column("type", sa.String, nullable=False),
        sa.Column("json", sa.Text, nullable=False),
        sa.Column("account", sa.String, nullable=False),
        sa.Column("released_at", _Time, nullable=False),
    )
    sa.Table(
        "accounts",
        md,
        sa.Column("name", sa.String, primary_key=True),
        sa.Column("roles", sa.String, nullable=False),
        sa.Column("signing_key", sa.Text),
        sa.Column("signing_certificate", sa.Text),
        sa.Column("created_at", _Time, nullable=False),
    )
    sa.Table(
        "account_tokens",
        md,
        sa.Column("token_hash", sa.String, primary_key=True),
        sa.Column("account", sa.String, nullable=False, index=True),
        sa.Column("created_at", _Time, nullable=False),
    )
    md.create_all(conn)


def _v3_resync_marks(conn: sa.Connection) -> None:
    """Orders JOC resynchronised from a controller's snapshot, and orders that left their
    controller while JOC was away."""
    _add_column(conn, "orders", sa.Column("resynced_at_event", sa.BigInteger), None)
    _add_column(conn, "orders", sa.Column("left_unseen_state", sa.String), None)


def _v4_account_certificates(conn: sa.Connection) -> None:
    """A TLS client certificate's subject may name an account (at most one account each)."""
    _add_column(conn, "accounts", sa.Column("cert_subject", sa.String), None)
    conn.execute(sa.text("CREATE UNIQUE INDEX ix_accounts_cert_subject ON accounts (cert_subject)"))


def _v5_daily_plan(conn: sa.Connection) -> None:
    """The daily plan: planned orders and the submission record of each plan date and schedule."""
    md = sa.MetaData()
    sa.Table(
        "plan_orders",
        md,
        sa.Column("order_id", sa.String, primary_key=True),
        sa.Column("controller_id", sa.String, nullable=False),
        sa.Column("plan_date", sa.Date, nullable=False, index=True),
        sa.Column("schedule_path", sa.String, nullable=False, index=True),
        sa.Column("workflow_path", sa.String, nullable=False, index=True),
        sa.Column("order_name", sa.String, nullable=False),
        sa.Column("scheduled_for", _Time, nullable=False),
        sa.Column("variables", sa.Text, nullable=False),
        sa.Column("submission", sa.Integer, nullable=False),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("late", sa.Boolean, nullable=False),
        sa.Column("missed", sa.Boolean, nullable=False),
        sa.Column("workflow_version_id", sa.String, nullable=False),
        sa.Column("submitted_at", _Time),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("attempted_at", _Time),
        sa.Index("ix_plan_orders_state_scheduled_for", "state", "scheduled_for"),
        sa.Index("ix_plan_orders_due", "state", "missed", "plan_date", "scheduled_for"),
    )
    sa.Table(
        "plan_submissions",
        md,
        sa.Column("controller_id", sa.String, primary_key=True),
        sa.Column("plan_date", sa.Date, primary_key=True),
        sa.Column("schedule_path", sa.String, primary_key=True),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("mode", sa.String, nullable=False),
        sa.Column("tz_version", sa.String, nullable=False),
        sa.Column("planned_at", _Time, nullable=False),
    )
    md.create_all(conn)


def _v6_joc_cluster(conn: sa.Connection) -> None:
    """The JOC cluster: the active instance's lease (one row) and every instance's heartbeat."""
    md = sa.MetaData()
    lease = sa.Table(
        "joc_lease",
        md,
        sa.Column("name", sa.String, primary_key=True),
        sa.Column("holder", sa.String, nullable=False),
        sa.Column("address", sa.String, nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("expires_ms", sa.BigInteger, nullable=False),
        sa.Column("successor", sa.String, nullable=False),
        sa.Column("resigned", sa.String, nullable=False),
    )
    sa.Table(
        "joc_instances",
        md,
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("address", sa.String, nullable=False),
        sa.Column("web_url", sa.String, nullable=False),
        sa.Column("started_ms", sa.BigInteger, nullable=False),
        sa.Column("heartbeat_ms", sa.BigInteger, nullable=False),
    )
    md.create_all(conn)
    conn.execute(
        lease.insert().values(
            name="active", holder="", address="", epoch=0, expires_ms=0, successor="", resigned=""
        )
    )


# In order: MIGRATIONS[i] takes the schema from version i to i + 1.
MIGRATIONS: list[Callable[[sa.Connection], None]] = [
    _v1_baseline,
    _v2_deployment_signing_accounts,
    _v3_resync_marks,
    _v4_account_certificates,
    _v5_daily_plan,
    _v6_joc_cluster,
]

LATEST = len(MIGRATIONS)


def _add_column(conn: sa.Connection, table: str, column: sa.Column[object], default_sql: str | None) -> None:
    ddl = f"ALTER TABLE {table} ADD COLUMN {column.name} {column.type.compile(dialect=conn.dialect)}"
    if default_sql is not None:
        ddl += f" DEFAULT {default_sql}"
    if not column.nullable:
        ddl += " NOT NULL"
    conn.execute(sa.text(ddl))


def current_version(conn: sa.Connection) -> int:
    tables = set(sa.inspect(conn).get_table_names())
    if version_table.name in tables:
        value = conn.execute(sa.select(version_table.c.version)).scalar_one_or_none()
        return int(value or 0)
    # Before migrations existed JOC made its tables with create_all: that was version 1.
    return 1 if "inventory_objects" in tables else 0


def migrate(engine: sa.Engine) -> tuple[int, int]:
    """Brings the database to LATEST; returns (version before, version after). A database newer
    than this JOC is refused: its code would misread the tables."""
    with engine.begin() as conn:
        before = current_version(conn)
    if before > LATEST:
        raise RuntimeError(
            f"the database has schema version {before}, newer than this JOC's {LATEST}; upgrade JOC"
        )
    version = before
    while version < LATEST:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
            version = current_version(conn)  # another JOC may have migrated meanwhile
            if version >= LATEST:
                break
            MIGRATIONS[version](conn)
            version += 1
            _set_version(conn, version)
            log.info("database schema migrated to version %d", version)
    return before, version


def _set_version(conn: sa.Connection, version: int) -> None:
    version_table.create(conn, checkfirst=True)
    if conn.execute(sa.select(version_table.c.version)).first() is None:
        conn.execute(version_table.insert().values(version=version))
    else:
        conn.execute(version_table.update().values(version=version))
