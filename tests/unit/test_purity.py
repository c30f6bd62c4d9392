"""Cores stay pure (DESIGN.md section 2): no I/O, clock, randomness or concurrency imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE = [
    "ostinato/workflow",
    "ostinato/dailyplan",
    "ostinato/journal/eventlog.py",
    "ostinato/journal/state.py",
    "controller_svc/core.py",
    "director_svc/core.py",
    "subagent_svc/core.py",
]
FORBIDDEN = {
    "grpc",
    "asyncio",
    "time",
    "random",
    "subprocess",
    "pysyncobj",
    "threading",
    "socket",
    "os",
    "sqlalchemy",
}


def modules() -> list[Path]:
    found: list[Path] = []
    for entry in PURE:
        path = ROOT / entry
        found += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_imports_nothing_impure(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
            if node.module.startswith("gen.") and any(a.name.endswith("_grpc") for a in node.names):
                imported.add("grpc")
    assert not imported & FORBIDDEN, f"{path.name} imports {sorted(imported & FORBIDDEN)}"


CORES = ["controller_svc/core.py", "director_svc/core.py", "subagent_svc/core.py"]


@pytest.mark.parametrize("path", CORES)
def test_cores_take_no_service_protos(path: str) -> None:
    """Request and response types of the services stay at the edge (each service's convert.py):
    a core speaks its own stimuli and the common domain protos only (DESIGN.md section 4)."""
    tree = ast.parse((ROOT / path).read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    service_protos = {m for m in modules if m.startswith("gen.") and not m.startswith("gen.ostinato.common.")}
    assert not service_protos, f"{path} imports {sorted(service_protos)}"
