"""JOC's database: inventory, deployment history (with the delivered items and agent confirmations),
releases, the orders projection, order events and logs, the controller event cursors and the audit
log, the daily plan, and the JOC cluster's lease. SQLAlchemy Core over a URL (SQLite default,
PostgreSQL); the schema comes from joc_svc.migrations, the tables' definitions from joc_svc.schema.

One module per concept, each a part of `Store` (a class over the shared engine and write lock of
store.base); `Store` is the one object the rest of JOC holds. Parts are mixins rather than objects
of their own because they share one engine, one write lock and sometimes one transaction (applying
a controller's events records agent confirmations of deployments), and callers keep calling
`store.put_object(...)` without knowing which part answers.

Every method is blocking and short; the servicers and the event ingestion call them through
asyncio.to_thread so the event loop never waits on the database. Writes take one process-wide lock:
SQLite has a single writer anyway, and a deferred SQLite transaction that reads before it writes
fails at once (no busy wait) when another connection wrote in between.
"""

from __future__ import annotations

from joc_svc.store.audit import AuditRow, AuditStore
from joc_svc.store.base import default_url
from joc_svc.store.deployments import DeploymentRow, DeploymentStore
from joc_svc.store.ingest import Applied, ControllerBehind, IngestStore, Resynced
from joc_svc.store.inventory import InventoryStore, ObjectRow
from joc_svc.store.lease import InstanceRow, LeaseStore, LeaseView
from joc_svc.store.orders import LogRow, OrderFilter, OrderPage, OrderRow, OrderStore
from joc_svc.store.plan import PlanStore

__all__ = [
    "Applied",
    "AuditRow",
    "ControllerBehind",
    "DeploymentRow",
    "InstanceRow",
    "LeaseView",
    "LogRow",
    "ObjectRow",
    "OrderFilter",
    "OrderPage",
    "OrderRow",
    "Resynced",
    "Store",
    "default_url",
]


class Store(InventoryStore, DeploymentStore, OrderStore, IngestStore, AuditStore, PlanStore, LeaseStore):
    """JOC's database, all parts over one engine."""
