"""The deployment history: what was deployed to which controller, the versions as delivered
(with signatures) and the agents that confirmed them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from gen.ostinato.common.v1 import items_pb2
from gen.ostinato.joc.v1 import joc_pb2
from joc_svc import naming
from joc_svc.schema import deployed_items, deployment_agents, deployments, objects
from joc_svc.store.base import StoreBase, type_word, utc
from ostinato.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class DeploymentRow:
    path: str
    type: int
    version_id: str
    controller_id: str
    status: int  # joc_pb2.DeploymentStatus
    message: str
    account: str
    requested_at: datetime
    confirmed_at: datetime | None
    id: int = 0
    pending: bool = False
    attempts: int = 0
    signer: str = ""
    agents: tuple[tuple[str, datetime], ...] = ()  # (agent, attached at): ItemAttached events


class DeploymentStore(StoreBase):
    def record_deployments(self, rows: Sequence[DeploymentRow]) -> list[DeploymentRow]:
        """Writes history rows as they are; a DEPLOYED one marks its object with its version id."""
        result = []
        with self._write() as conn:
            for row in rows:
                result.append(_insert_deployment(conn, row))
                if row.status == joc_pb2.DEPLOYMENT_STATUS_DEPLOYED:
                    conn.execute(
                        objects.update()
                        .where((objects.c.path == row.path) & (objects.c.type == type_word(row.type)))
                        .values(deployed_version_id=row.version_id)
                    )
        return result

    def list_deployments(
        self, path: str = "", limit: int = 0, controller_id: str = "", pending_only: bool = False
    ) -> list[DeploymentRow]:
        query = sa.select(deployments).order_by(deployments.c.id.desc())
        if path:
            query = query.where(deployments.c.path == path)
        if controller_id:
            query = query.where(deployments.c.controller_id == controller_id)
        if pending_only:
            query = query.where(deployments.c.pending.is_(True))
        if limit > 0:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return _with_agents(conn, [_deployment(r) for r in conn.execute(query)])

    def deployments_by_id(self, ids: Sequence[int]) -> list[DeploymentRow]:
        """The rows in the order of `ids`."""
        with self.engine.connect() as conn:
            found = {
                r.id: _deployment(r)
                for r in conn.execute(sa.select(deployments).where(deployments.c.id.in_(ids)))
            }
            return _with_agents(conn, [found[i] for i in ids if i in found])

    def deployed_json(self, path: str, type: int, version_id: str) -> str | None:
        """The JSON of a version as it was delivered (signed), None when JOC never deployed it."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(deployed_items.c.json).where(
                    (deployed_items.c.path == path)
                    & (deployed_items.c.type == type_word(type))
                    & (deployed_items.c.version_id == version_id)
                )
            ).scalar_one_or_none()

    def record_pending(
        self,
        items: Sequence[tuple[items_pb2.SignedItem, str]],
        controller_ids: Sequence[str],
        account: str,
        now: datetime,
        skipped: Sequence[DeploymentRow] = (),
    ) -> list[DeploymentRow]:
        """In one transaction: each (item, signer subject) as delivered version, a pending history
        row per item and controller (in that order: items of one controller are delivered in id
        order), and the rows of objects not deployed at all."""
        rows = []
        with self._write() as conn:
            for item, _ in items:
                _keep_item(conn, item, account, now)
            for controller_id in controller_ids:
                for item, signer in items:
                    rows.append(
                        _insert_deployment(
                            conn,
                            DeploymentRow(
                                path=item.path,
                                type=item.type,
                                version_id=item.version_id,
                                controller_id=controller_id,
                                status=joc_pb2.DEPLOYMENT_STATUS_NOT_DEPLOYED,
                                message="not delivered yet",
                                account=account,
                                requested_at=now,
                                confirmed_at=None,
                                pending=True,
                                signer=signer,
                            ),
                        )
                    )
            rows += [_insert_deployment(conn, row) for row in skipped]
        return rows

    def pending_deliveries(
        self, controller_id: str, limit: int = 1000
    ) -> list[tuple[DeploymentRow, items_pb2.SignedItem]]:
        """A controller's pending rows, oldest first, each with the item to deliver."""
        query = (
            sa.select(deployments, deployed_items.c.json, deployed_items.c.signature)
            .join(
                deployed_items,
                (deployed_items.c.path == deployments.c.path)
                & (deployed_items.c.type == deployments.c.type)
                & (deployed_items.c.version_id == deployments.c.version_id),
            )
            .where((deployments.c.controller_id == controller_id) & deployments.c.pending.is_(True))
            .order_by(deployments.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            result = []
            for r in conn.execute(query):
                row = _deployment(r)
                item = _item(row.type, row.path, row.version_id, r.json, r.signature)
                result.append((row, item))
            return result

    def pending_controllers(self) -> set[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(deployments.c.controller_id).where(deployments.c.pending.is_(True)).distinct()
            )
            return {r.controller_id for r in rows}

    def mark_delivered(self, ids: Sequence[int], now: datetime) -> None:
        """The controller confirmed: deployed. Each object shows the newest version confirmed."""
        if not ids:
            return
        with self._write() as conn:
            conn.execute(
                deployments.update()
                .where(deployments.c.id.in_(ids) & deployments.c.pending.is_(True))
                .values(
                    status="DEPLOYED",
                    pending=False,
                    message="",
                    confirmed_at=now,
                    attempts=deployments.c.attempts + 1,
                )
            )
            newest: dict[tuple[str, str], tuple[int, str]] = {}
            for r in conn.execute(sa.select(deployments).where(deployments.c.id.in_(ids))):
                key = (r.path, r.type)
                if key not in newest or r.id > newest[key][0]:
                    newest[key] = (r.id, r.version_id)
            for (path, type_word), (_, version_id) in newest.items():
                conn.execute(
                    objects.update()
                    .where((objects.c.path == path) & (objects.c.type == type_word))
                    .values(deployed_version_id=version_id)
                )

    def mark_attempted(self, ids: Sequence[int], message: str) -> None:
        """A delivery failed for a reason that may pass (the controller is unreachable)."""
        if not ids:
            return
        with self._write() as conn:
            conn.execute(
                deployments.update()
                .where(deployments.c.id.in_(ids) & deployments.c.pending.is_(True))
                .values(message=message, attempts=deployments.c.attempts + 1)
            )

    def mark_rejected(self, row_id: int, message: str) -> None:
        """The controller refused the item: not deployed, for good."""
        with self._write() as conn:
            conn.execute(
                deployments.update()
                .where((deployments.c.id == row_id) & deployments.c.pending.is_(True))
                .values(message=message, pending=False, attempts=deployments.c.attempts + 1)
            )

    def versions_deployed_to(self, controller_id: str, folder: str) -> list[tuple[items_pb2.SignedItem, str]]:
        """Redeployment: for each object below a folder, the version last deployed to the
        controller, as it was delivered (with its signer)."""
        prefix = naming.folder_prefix(naming.check_folder(folder))
        query = (
            sa.select(deployments.c.path, deployments.c.type, deployments.c.version_id, deployments.c.signer)
            .where(
                (deployments.c.controller_id == controller_id)
                & (deployments.c.status == "DEPLOYED")
                & deployments.c.path.startswith(prefix, autoescape=True)
            )
            .order_by(deployments.c.id.desc())
        )
        with self.engine.connect() as conn:
            latest: dict[tuple[str, str], tuple[str, str]] = {}
            for r in conn.execute(query):
                latest.setdefault((r.path, r.type), (r.version_id, r.signer))
            result = []
            for (path, type_word), (version_id, signer) in sorted(latest.items()):
                stored = conn.execute(
                    sa.select(deployed_items).where(
                        (deployed_items.c.path == path)
                        & (deployed_items.c.type == type_word)
                        & (deployed_items.c.version_id == version_id)
                    )
                ).first()
                if stored is None:
                    continue  # deployed before JOC kept what it delivered
                item_type = naming.enum_value(items_pb2.ItemType, type_word)
                item = _item(item_type, path, version_id, stored.json, stored.signature)
                result.append((item, signer))
            return result


def _deployment(r: Any) -> DeploymentRow:
    return DeploymentRow(
        path=r.path,
        type=naming.enum_value(items_pb2.ItemType, r.type),
        version_id=r.version_id,
        controller_id=r.controller_id,
        status=naming.enum_value(joc_pb2.DeploymentStatus, r.status),
        message=r.message,
        account=r.account,
        requested_at=utc(r.requested_at),
        confirmed_at=utc(r.confirmed_at) if r.confirmed_at else None,
        id=r.id,
        pending=bool(r.pending),
        attempts=int(r.attempts or 0),
        signer=r.signer or "",
    )


def _insert_deployment(conn: sa.Connection, row: DeploymentRow) -> DeploymentRow:
    new_id = conn.execute(
        deployments.insert()
        .values(
            path=row.path,
            type=type_word(row.type),
            version_id=row.version_id,
            controller_id=row.controller_id,
            status=naming.enum_word(joc_pb2.DeploymentStatus, row.status),
            message=row.message,
            account=row.account,
            requested_at=row.requested_at,
            confirmed_at=row.confirmed_at,
            pending=row.pending,
            attempts=row.attempts,
            signer=row.signer,
        )
        .returning(deployments.c.id)
    ).scalar_one()
    return _deployment(conn.execute(sa.select(deployments).where(deployments.c.id == new_id)).one())


def _item(type: int, path: str, version_id: str, json_text: str, signature: bytes) -> items_pb2.SignedItem:
    item = items_pb2.SignedItem(type=type, path=path, version_id=version_id, json=json_text)  # type: ignore[arg-type]
    if signature:
        item.signature.ParseFromString(signature)
    return item


def _keep_item(conn: sa.Connection, item: items_pb2.SignedItem, account: str, now: datetime) -> None:
    """Stores a delivered version. A version is one JSON text for good (controllers take the same
    path and version again as a repetition): the same version with other JSON is refused; with
    the same JSON but another signature (signed again after a rejection) the new one is kept."""
    key = (
        (deployed_items.c.path == item.path)
        & (deployed_items.c.type == type_word(item.type))
        & (deployed_items.c.version_id == item.version_id)
    )
    known = conn.execute(sa.select(deployed_items).where(key)).first()
    signature = item.signature.SerializeToString()
    if known is not None:
        if known.json != item.json:
            raise InvalidArgument(
                f"{item.path} version {item.version_id} exists with other content;"
                " export it again for a new version"
            )
        if known.signature != signature:
            conn.execute(deployed_items.update().where(key).values(signature=signature))
    else:
        conn.execute(
            deployed_items.insert().values(
                path=item.path,
                type=type_word(item.type),
                version_id=item.version_id,
                json=item.json,
                signature=signature,
                created_at=now,
                account=account,
            )
        )


def record_attached(
    conn: sa.Connection, controller_id: str, agent: str, path: str, version_id: str, at: datetime
) -> None:
    key = (
        (deployment_agents.c.controller_id == controller_id)
        & (deployment_agents.c.path == path)
        & (deployment_agents.c.version_id == version_id)
        & (deployment_agents.c.agent == agent)
    )
    if conn.execute(sa.select(deployment_agents.c.agent).where(key)).first() is None:
        conn.execute(
            deployment_agents.insert().values(
                controller_id=controller_id, path=path, version_id=version_id, agent=agent, attached_at=at
            )
        )


def _with_agents(conn: sa.Connection, rows: list[DeploymentRow]) -> list[DeploymentRow]:
    """The rows with the agents that confirmed their versions."""
    if not rows:
        return rows
    paths = {r.path for r in rows}
    confirmed: dict[tuple[str, str, str], list[tuple[str, datetime]]] = {}
    for r in conn.execute(
        sa.select(deployment_agents)
        .where(deployment_agents.c.path.in_(paths))
        .order_by(deployment_agents.c.attached_at, deployment_agents.c.agent)
    ):
        confirmed.setdefault((r.controller_id, r.path, r.version_id), []).append(
            (r.agent, utc(r.attached_at))
        )
    return [
        dataclasses.replace(
            row, agents=tuple(confirmed.get((row.controller_id, row.path, row.version_id), ()))
        )
        for row in rows
    ]
