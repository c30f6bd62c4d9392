"""JOC's tables as the code uses them: the schema at the latest migration (joc_svc.migrations makes
a database so; a test checks that both agree)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# SQLite autoincrements only an INTEGER PRIMARY KEY; PostgreSQL gets BIGINT identity.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.DateTime(timezone=True)

objects = sa.Table(
    "inventory_objects",
    metadata,
    sa.Column("path", sa.String, primary_key=True),
    sa.Column("type", sa.String, primary_key=True),  # ItemType word, e.g. WORKFLOW
    sa.Column("json", sa.Text, nullable=False),
    sa.Column("modified_at", Time, nullable=False),
    sa.Column("deployed_version_id", sa.String, nullable=False, default=""),
    sa.Column("released_at", Time),  # calendars and schedules
)

deployments = sa.Table(
    "deployments",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("path", sa.String, nullable=False, index=True),
    sa.Column("type", sa.String, nullable=False),
    sa.Column("version_id", sa.String, nullable=False),
    sa.Column("controller_id", sa.String, nullable=False),
    sa.Column("status", sa.String, nullable=False),  # DEPLOYED or NOT_DEPLOYED
    sa.Column("message", sa.Text, nullable=False, default=""),
    sa.Column("account", sa.String, nullable=False, default=""),
    sa.Column("requested_at", Time, nullable=False),
    sa.Column("confirmed_at", Time),
    # True while JOC still delivers it (NOT_DEPLOYED until the controller confirms).
    sa.Column("pending", sa.Boolean, nullable=False, default=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("signer", sa.String, nullable=False, default=""),
)

# Each deployed version exactly as delivered (signed JSON and signature): redeployment and
# re-delivery after a restart send these bytes again.
deployed_items = sa.Table(
    "deployed_items",
    metadata,
    sa.Column("path", sa.String, primary_key=True),
    sa.Column("type", sa.String, primary_key=True),
    sa.Column("version_id", sa.String, primary_key=True),
    sa.Column("json", sa.Text, nullable=False),
    sa.Column("signature", sa.LargeBinary, nullable=False),  # ostinato.common.v1.Signature
    sa.Column("created_at", Time, nullable=False),
    sa.Column("account", sa.String, nullable=False),
)

# ItemAttached events: an agent journaled a deployed version (the deployment's last step).
deployment_agents = sa.Table(
    "deployment_agents",
    metadata,
    sa.Column("controller_id", sa.String, primary_key=True),
    sa.Column("path", sa.String, primary_key=True),
    sa.Column("version_id", sa.String, primary_key=True),
    sa.Column("agent", sa.String, primary_key=True),
    sa.Column("attached_at", Time, nullable=False),
)

releases = sa.Table(
    "releases",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("path", sa.String, nullable=False, index=True),
    sa.Column("type", sa.String, nullable=False),
    sa.Column("json", sa.Text, nullable=False),
    sa.Column("account", sa.String, nullable=False),
    sa.Column("released_at", Time, nullable=False),
)

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("roles", sa.String, nullable=False),  # Role words, comma separated: ADMIN,VIEWER
    sa.Column("signing_key", sa.Text),  # PEM; never at security level high
    sa.Column("signing_certificate", sa.Text),
    sa.Column("created_at", Time, nullable=False),
    # RFC 4514 subject of the TLS client certificate that names the account (migration 4).
    sa.Column("cert_subject", sa.String, unique=True),
)

account_tokens = sa.Table(
    "account_tokens",
    metadata,
    sa.Column("token_hash", sa.String, primary_key=True),  # SHA-256 hex of the token
    sa.Column("account", sa.String, nullable=False, index=True),
    sa.Column("created_at", Time, nullable=False),
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("order_id", sa.String, primary_key=True),
    sa.Column("controller_id", sa.String, nullable=False),
    sa.Column("workflow_path", sa.String, nullable=False, index=True),
    sa.Column("state", sa.String, nullable=False, index=True),  # OrderState word, e.g. PROCESSING
    sa.Column("order", sa.LargeBinary, nullable=False),  # ostinato.common.v1.Order
    sa.Column("added_at", Time, nullable=False, index=True),
    sa.Column("updated_at", Time, nullable=False),
    # Set when the controller deleted the order from its state; JOC keeps the history.
    sa.Column("deleted_at", Time),
    # The first snapshot event id JOC took this order from when it resynchronised (it missed
    # events of the order before it): the stored history has a gap there.
    sa.Column("resynced_at_event", sa.BigInteger),
    # Set when the order had left the controller while JOC was not following its events (found
    # on resynchronisation): the OrderState word JOC saw last; its `order` then has state
    # UNSPECIFIED (unknown), deleted_at when JOC found out.
    sa.Column("left_unseen_state", sa.String),
)

order_events = sa.Table(
    "order_events",
    metadata,
    sa.Column("controller_id", sa.String, primary_key=True),
    sa.Column("event_id", sa.BigInteger, primary_key=True),
    sa.Column("order_id", sa.String, nullable=False, index=True),
    sa.Column("event", sa.LargeBinary, nullable=False),  # ostinato.common.v1.Event
)

order_logs = sa.Table(
    "order_logs",
    metadata,
    sa.Column("order_id", sa.String, primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),  # the OrderStdWritten event's id
    sa.Column("stream", sa.String, nullable=False),  # STDOUT or STDERR
    sa.Column("chunk", sa.Text, nullable=False),
    sa.Column("timestamp", Time, nullable=False),
)

cursors = sa.Table(
    "controller_event_cursors",
    metadata,
    sa.Column("controller_id", sa.String, primary_key=True),
    sa.Column("last_event_id", sa.BigInteger, nullable=False),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("account", sa.String, nullable=False),
    sa.Column("action", sa.String, nullable=False),
    sa.Column("object", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("at", Time, nullable=False, index=True),
)

# The daily plan (joc_svc.dailyplan): one row per planned start and order id. `state` is what JOC
# last recorded (PLANNED, SUBMITTED, FINISHED, FAILED, CANCELLED); readers combine a submitted row
# with the orders projection for what happened since.
plan_orders = sa.Table(
    "plan_orders",
    metadata,
    sa.Column("order_id", sa.String, primary_key=True),
    sa.Column("controller_id", sa.String, nullable=False),
    sa.Column("plan_date", sa.Date, nullable=False, index=True),
    sa.Column("schedule_path", sa.String, nullable=False, index=True),
    sa.Column("workflow_path", sa.String, nullable=False, index=True),
    sa.Column("order_name", sa.String, nullable=False),
    sa.Column("scheduled_for", Time, nullable=False),
    sa.Column("variables", sa.Text, nullable=False),  # JSON: name -> constant expression
    sa.Column("submission", sa.Integer, nullable=False),  # the number it was planned under
    sa.Column("state", sa.String, nullable=False),
    sa.Column("late", sa.Boolean, nullable=False, default=False),
    sa.Column("missed", sa.Boolean, nullable=False, default=False),
    sa.Column("workflow_version_id", sa.String, nullable=False, default=""),
    sa.Column("submitted_at", Time),
    sa.Column("message", sa.Text, nullable=False, default=""),  # why the controller refused it
    sa.Column("attempted_at", Time),  # its last refused submission
    sa.Index("ix_plan_orders_state_scheduled_for", "state", "scheduled_for"),
    sa.Index("ix_plan_orders_due", "state", "missed", "plan_date", "scheduled_for"),
)

# Per controller, plan date and schedule: the date's submission number (order ids include it; it
# grows when the date is cancelled and planned again), whether its orders are submitted (AUTO:
# when the date comes within days-ahead-submit; NOW; HELD: only when asked), and the IANA tz
# release it was planned with. A record means "planned": automatic planning skips it, so that
# orders deleted by hand are not planned again.
plan_submissions = sa.Table(
    "plan_submissions",
    metadata,
    sa.Column("controller_id", sa.String, primary_key=True),
    sa.Column("plan_date", sa.Date, primary_key=True),
    sa.Column("schedule_path", sa.String, primary_key=True),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("mode", sa.String, nullable=False),
    sa.Column("tz_version", sa.String, nullable=False),
    sa.Column("planned_at", Time, nullable=False),
)

# The JOC cluster (joc_svc.instance). One row, name "active": the instance whose lease runs until
# `expires_ms` (the database's clock) holds the JOC `epoch`, which grows with every take-over.
# A switch-over ends the lease at once and names the `successor` ("": any instance but the one
# that `resigned`, which waits a grace before it may take it back).
joc_lease = sa.Table(
    "joc_lease",
    metadata,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("holder", sa.String, nullable=False),
    sa.Column("address", sa.String, nullable=False),  # the holder's gRPC address
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("expires_ms", sa.BigInteger, nullable=False),
    sa.Column("successor", sa.String, nullable=False),
    sa.Column("resigned", sa.String, nullable=False),
)

# Every JOC instance that ever ran against this database, with its last heartbeat (database clock).
joc_instances = sa.Table(
    "joc_instances",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("address", sa.String, nullable=False),
    sa.Column("web_url", sa.String, nullable=False),
    sa.Column("started_ms", sa.BigInteger, nullable=False),
    sa.Column("heartbeat_ms", sa.BigInteger, nullable=False),
)
