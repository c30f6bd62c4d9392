"""Positions in a workflow and the instruction found there."""

from __future__ import annotations

from gen.ostinato.common.v1 import order_pb2, workflow_pb2

Position = order_pb2.Position


def position(nr: int, branch_path: list[tuple[int, str]] | None = None) -> order_pb2.Position:
    return order_pb2.Position(
        nr=nr, branch_path=[order_pb2.BranchStep(nr=n, branch=b) for n, b in branch_path or []]
    )


def text(p: order_pb2.Position) -> str:
    """JS7-like notation: `2`, `1/fork+a:0`."""
    prefix = "".join(f"{s.nr}/{s.branch}:" for s in p.branch_path)
    return f"{prefix}{p.nr}"


def instruction_at(workflow: workflow_pb2.Workflow, p: order_pb2.Position) -> workflow_pb2.Instruction | None:
    """The instruction at p, or None at the end of the block (the implicit end instruction)."""
    block = block_at(workflow, p)
    return block[p.nr] if 0 <= p.nr < len(block) else None


def block_at(workflow: workflow_pb2.Workflow, p: order_pb2.Position) -> list[workflow_pb2.Instruction]:
    if p.branch_path:
        # Nested blocks come with the instructions that have them (fork, try, if, ...).
        raise ValueError(f"no nested block at position {text(p)} in {workflow.path}")
    return list(workflow.instructions)


def next_position(p: order_pb2.Position) -> order_pb2.Position:
    q = order_pb2.Position()
    q.CopyFrom(p)
    q.nr += 1
    return q
