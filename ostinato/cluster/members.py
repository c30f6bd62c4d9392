"""Which nodes form a controller or director cluster, read from a JSON file that every node of the
cluster is given (`--cluster FILE --node NAME`):

    {"nodes": [
      {"name": "a", "address": "10.0.0.1:4444", "raft": "10.0.0.1:5444"},
      {"name": "b", "address": "10.0.0.2:4444", "raft": "10.0.0.2:5444"},
      {"name": "w", "address": "10.0.0.3:4444", "raft": "10.0.0.3:5444", "witness": true}]}

Every node votes. Raft needs a majority, so a cluster has one voter (the default: a single node)
or at least three: two full nodes and a witness, or three full nodes. A pair is refused: it
cannot elect when either node is lost (shared/DEPENDENCIES.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ostinato.errors import InvalidArgument


@dataclass(frozen=True)
class Member:
    name: str
    address: str  # gRPC
    raft: str
    witness: bool = False


@dataclass(frozen=True)
class Cluster:
    members: tuple[Member, ...]

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise InvalidArgument(f"no node {name!r} in the cluster (nodes: {self.names()})", field="node")

    def by_raft(self, raft: str) -> Member | None:
        return next((m for m in self.members if m.raft == raft), None)

    def partners(self, name: str) -> list[str]:
        return [m.raft for m in self.members if m.name != name]

    def names(self) -> list[str]:
        return [m.name for m in self.members]

    @classmethod
    def single(cls, address: str, raft: str) -> Cluster:
        return cls((Member("primary", address, raft),))

    @classmethod
    def parse(cls, data: Any) -> Cluster:
        nodes = data.get("nodes") if isinstance(data, dict) else None
        if not isinstance(nodes, list) or not nodes:
            raise InvalidArgument("expected an object with a non-empty list 'nodes'", field="nodes")
        members = []
        for i, node in enumerate(nodes):
            where = f"nodes[{i}]"
            if not isinstance(node, dict):
                raise InvalidArgument("expected an object", field=where)
            for key in ("name", "address", "raft"):
                if not isinstance(node.get(key), str) or not node[key]:
                    raise InvalidArgument("missing or not a string", field=f"{where}.{key}")
            for key in ("address", "raft"):
                if ":" not in node[key]:
                    raise InvalidArgument(f"expected HOST:PORT, got {node[key]!r}", field=f"{where}.{key}")
            unknown = set(node) - {"name", "address", "raft", "witness"}
            if unknown:
                raise InvalidArgument(f"unknown keys {sorted(unknown)}", field=where)
            members.append(Member(node["name"], node["address"], node["raft"], bool(node.get("witness"))))
        for key in ("name", "address", "raft"):
            values = [getattr(m, key) for m in members]
            duplicates = sorted({v for v in values if values.count(v) > 1})
            if duplicates:
                raise InvalidArgument(f"given twice: {duplicates}", field=f"nodes[].{key}")
        if len(members) == 2:
            raise InvalidArgument(
                "two nodes cannot elect an active node when either is lost: add a witness", field="nodes"
            )
        if all(m.witness for m in members):
            raise InvalidArgument("a cluster needs at least one full (non-witness) node", field="nodes")
        return cls(tuple(members))

    @classmethod
    def load(cls, path: Path) -> Cluster:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InvalidArgument(f"cannot read {path}: {e}", field="cluster") from None
        try:
            return cls.parse(data)
        except InvalidArgument as e:
            raise InvalidArgument(f"{path}: {e}", field="cluster") from None

    def to_json(self) -> str:
        return json.dumps(
            {
                "nodes": [
                    {
                        "name": m.name,
                        "address": m.address,
                        "raft": m.raft,
                        **({"witness": True} if m.witness else {}),
                    }
                    for m in self.members
                ]
            },
            indent=2,
        )
