"""Inventory objects (drafts of workflows, job resources, calendars, ...) and their releases."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from gen.ostinato.common.v1 import items_pb2
from joc_svc import inventory, naming
from joc_svc.schema import objects, releases
from joc_svc.store.base import StoreBase, like_escape, type_word, utc
from ostinato.errors import AlreadyExists, InvalidArgument, NotFound


@dataclass(frozen=True, slots=True)
class ObjectRow:
    path: str
    type: int  # items_pb2.ItemType
    json: str
    modified_at: datetime
    deployed_version_id: str
    released_at: datetime | None = None


class InventoryStore(StoreBase):
    def put_object(self, path: str, type: int, json_text: str, now: datetime) -> ObjectRow:
        key = (objects.c.path == path) & (objects.c.type == type_word(type))
        with self._write() as conn:
            if conn.execute(sa.select(objects.c.path).where(key)).first():
                conn.execute(objects.update().where(key).values(json=json_text, modified_at=now))
            else:
                conn.execute(
                    objects.insert().values(
                        path=path,
                        type=type_word(type),
                        json=json_text,
                        modified_at=now,
                        deployed_version_id="",
                    )
                )
            return _object(conn.execute(sa.select(objects).where(key)).one())

    def get_object(self, path: str, type: int = items_pb2.ITEM_TYPE_UNSPECIFIED) -> ObjectRow:
        with self.engine.connect() as conn:
            return _one_object(conn, path, type)

    def list_objects(
        self, folder: str, recursive: bool, type: int = items_pb2.ITEM_TYPE_UNSPECIFIED
    ) -> list[ObjectRow]:
        prefix = naming.folder_prefix(naming.check_folder(folder))
        condition = objects.c.path.startswith(prefix, autoescape=True)
        if not recursive:
            condition &= ~objects.c.path.like(like_escape(prefix) + "%/%", escape="\\")
        if type:
            condition &= objects.c.type == type_word(type)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(objects).where(condition).order_by(objects.c.path, objects.c.type))
            return [_object(r) for r in rows]

    def remove_object(self, path: str, type: int = items_pb2.ITEM_TYPE_UNSPECIFIED) -> ObjectRow:
        with self._write() as conn:
            row = _one_object(conn, path, type)
            conn.execute(
                objects.delete().where((objects.c.path == row.path) & (objects.c.type == type_word(row.type)))
            )
            return row

    def objects_to_deploy(self, paths: Iterable[str]) -> list[ObjectRow]:
        """The objects named by paths: an object's path names it (all its types), else a folder
        path names every object below it. NOT_FOUND names a path that names nothing."""
        found: dict[tuple[str, int], ObjectRow] = {}
        for path in paths:
            rows: list[ObjectRow] = []
            if path.rstrip("/"):
                naming.check_path(path.rstrip("/"), "paths")
                with self.engine.connect() as conn:
                    rows = [
                        _object(r) for r in conn.execute(sa.select(objects).where(objects.c.path == path))
                    ]
            if not rows:
                rows = self.list_objects(path, recursive=True)
            if not rows:
                raise NotFound(f"no inventory object or folder {path}", field="paths")
            for row in rows:
                found[(row.path, row.type)] = row
        return [found[k] for k in sorted(found)]

    def object_keys(self) -> set[tuple[int, str]]:
        """(type, path) of every object: what references are resolved against."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(objects.c.type, objects.c.path))
            return {(naming.enum_value(items_pb2.ItemType, r.type), r.path) for r in rows}

    def remove_folder(self, folder: str) -> list[ObjectRow]:
        """Removes every object below a folder; NOT_FOUND when there is none."""
        rows = self.list_objects(folder, recursive=True)
        if not rows:
            raise NotFound(f"no inventory objects below {folder}", field="path")
        with self._write() as conn:
            for row in rows:
                conn.execute(
                    objects.delete().where(
                        (objects.c.path == row.path) & (objects.c.type == type_word(row.type))
                    )
                )
        return rows

    def move(self, path: str, type: int, new_path: str, now: datetime) -> list[ObjectRow]:
        """Renames or moves an object (or every object below a folder) and rewrites the references
        of other drafts to follow. The moved objects count as never deployed or released at their
        new paths (controllers still hold them at the old ones)."""
        with self._write() as conn:
            query = sa.select(objects).where(objects.c.path == path)
            if type:
                query = query.where(objects.c.type == type_word(type))
            exact = [_object(r) for r in conn.execute(query.order_by(objects.c.type))]
            if exact:
                moves = [(row, new_path) for row in exact]
            else:
                prefix = naming.folder_prefix(naming.check_folder(path))
                below = [
                    _object(r)
                    for r in conn.execute(
                        sa.select(objects)
                        .where(objects.c.path.startswith(prefix, autoescape=True))
                        .order_by(objects.c.path, objects.c.type)
                    )
                    if not type or naming.enum_value(items_pb2.ItemType, r.type) == type
                ]
                if not below:
                    raise NotFound(f"no inventory object or folder {path}", field="path")
                target = naming.folder_prefix(naming.check_folder(new_path, "new_path"))
                moves = [(row, target + row.path[len(prefix) :]) for row in below]
            moving = {(row.path, row.type) for row, _ in moves}
            for row, target in moves:
                taken = conn.execute(
                    sa.select(objects.c.path).where(
                        (objects.c.path == target) & (objects.c.type == type_word(row.type))
                    )
                ).first()
                if taken and (target, row.type) not in moving:
                    raise AlreadyExists(
                        f"{inventory.word(row.type)} {target} exists already", field="new_path"
                    )
            # Two steps, so that objects moving onto each other's paths do not collide.
            for i, (row, _) in enumerate(moves):
                conn.execute(
                    objects.update()
                    .where((objects.c.path == row.path) & (objects.c.type == type_word(row.type)))
                    .values(path=f"//moving/{i}")
                )
            for i, (row, target) in enumerate(moves):
                text = row.json
                if row.type == items_pb2.ITEM_TYPE_WORKFLOW:
                    text = inventory.canonical_draft(row.type, row.json, target)  # the path inside
                conn.execute(
                    objects.update()
                    .where((objects.c.path == f"//moving/{i}") & (objects.c.type == type_word(row.type)))
                    .values(path=target, json=text, modified_at=now, deployed_version_id="", released_at=None)
                )
            followed = {(row.type, row.path): target for row, target in moves}
            for r in conn.execute(sa.select(objects)).all():
                other = _object(r)
                rewritten = inventory.rewrite_references(other.type, other.json, followed, other.path)
                if rewritten is not None and rewritten != other.json:
                    conn.execute(
                        objects.update()
                        .where((objects.c.path == other.path) & (objects.c.type == r.type))
                        .values(json=rewritten, modified_at=now)
                    )
            return [
                _object(
                    conn.execute(
                        sa.select(objects).where(
                            (objects.c.path == target) & (objects.c.type == type_word(row.type))
                        )
                    ).one()
                )
                for row, target in moves
            ]

    def release(self, rows: Sequence[ObjectRow], account: str, now: datetime) -> list[ObjectRow]:
        """Records the release of calendars and schedules as they are now."""
        result = []
        with self._write() as conn:
            for row in rows:
                key = (objects.c.path == row.path) & (objects.c.type == type_word(row.type))
                conn.execute(objects.update().where(key).values(released_at=now))
                conn.execute(
                    releases.insert().values(
                        path=row.path,
                        type=type_word(row.type),
                        json=row.json,
                        account=account,
                        released_at=now,
                    )
                )
                result.append(_object(conn.execute(sa.select(objects).where(key)).one()))
        return result


def _object(r: Any) -> ObjectRow:
    return ObjectRow(
        r.path,
        naming.enum_value(items_pb2.ItemType, r.type),
        r.json,
        utc(r.modified_at),
        r.deployed_version_id,
        utc(r.released_at) if r.released_at else None,
    )


def _one_object(conn: sa.Connection, path: str, type: int) -> ObjectRow:
    query = sa.select(objects).where(objects.c.path == path)
    if type:
        query = query.where(objects.c.type == type_word(type))
    rows = [_object(r) for r in conn.execute(query)]
    if not rows:
        raise NotFound(f"no inventory object {path}", field="path")
    if len(rows) > 1:
        words = ", ".join(type_word(r.type) for r in rows)
        raise InvalidArgument(f"{path} names objects of several types ({words}); give one", field="type")
    return rows[0]
