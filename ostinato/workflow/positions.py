"""Positions in a workflow: the instruction number in the innermost block, and the path of
enclosing instructions with the branch taken in each. Branch names carry counts where an
instruction repeats its block (`try+N`, `catch+N`, `cycle+N`), so no further state is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

from gen.ostinato.common.v1 import order_pb2, workflow_pb2

Position = order_pb2.Position
Instructions = Sequence[workflow_pb2.Instruction]


def position(nr: int, branch_path: list[tuple[int, str]] | None = None) -> order_pb2.Position:
    return order_pb2.Position(
        nr=nr, branch_path=[order_pb2.BranchStep(nr=n, branch=b) for n, b in branch_path or []]
    )


def text(p: order_pb2.Position) -> str:
    """JS7-like notation: `2`, `1/fork+a:0`, `0/try+1:3`."""
    prefix = "".join(f"{s.nr}/{s.branch}:" for s in p.branch_path)
    return f"{prefix}{p.nr}"


def parse_text(value: str) -> order_pb2.Position:
    """Reads `text()` back (for resume at a position)."""
    steps = value.split(":")
    path = []
    for step in steps[:-1]:
        nr, _, branch = step.partition("/")
        path.append((int(nr), branch))
    return position(int(steps[-1]), path)


def split_branch(branch: str) -> tuple[str, int]:
    """`try+2` -> ("try", 2); `fork+a` -> ("fork", -1) keeps its id in the name; `then` -> ("then", 0)."""
    name, _, suffix = branch.partition("+")
    if suffix.isdigit():
        return name, int(suffix)
    return (name if not suffix else branch), 0


def child_block(instruction: workflow_pb2.Instruction, branch: str) -> Instructions:
    kind = instruction.WhichOneof("kind")
    name, _ = split_branch(branch)
    if kind == "fork" and branch.startswith("fork+"):
        branch_id = branch[len("fork+") :]
        for b in instruction.fork.branches:
            if b.id == branch_id:
                return b.block.instructions
    elif kind == "fork_list" and branch == "fork":
        return instruction.fork_list.block.instructions
    elif kind == "try_catch" and name in ("try", "catch"):
        return getattr(instruction.try_catch, name).instructions  # `try` is a keyword
    elif kind == "if_else" and branch in ("then", "else"):
        return getattr(instruction.if_else, branch).instructions
    elif kind == "lock" and branch == "lock":
        return instruction.lock.block.instructions
    elif kind == "cycle" and name == "cycle":
        return instruction.cycle.block.instructions
    raise ValueError(f"instruction {kind} has no block {branch!r}")


def block_at(workflow: workflow_pb2.Workflow, p: order_pb2.Position) -> Instructions:
    block: Instructions = workflow.instructions
    for step in p.branch_path:
        block = child_block(block[step.nr], step.branch)
    return block


def instruction_at(workflow: workflow_pb2.Workflow, p: order_pb2.Position) -> workflow_pb2.Instruction | None:
    """The instruction at p, or None at the end of its block."""
    block = block_at(workflow, p)
    return block[p.nr] if 0 <= p.nr < len(block) else None


def enclosing(p: order_pb2.Position, depth: int | None = None) -> order_pb2.Position:
    """The position of the instruction whose block the depth-th branch step enters (default:
    the innermost, i.e. the instruction whose block holds p)."""
    steps = list(p.branch_path)
    depth = len(steps) - 1 if depth is None else depth
    return order_pb2.Position(branch_path=steps[:depth], nr=steps[depth].nr)


def enter(p: order_pb2.Position, branch: str) -> order_pb2.Position:
    """The first position in the block `branch` of the instruction at p."""
    return order_pb2.Position(
        branch_path=[*p.branch_path, order_pb2.BranchStep(nr=p.nr, branch=branch)], nr=0
    )


def next_position(p: order_pb2.Position) -> order_pb2.Position:
    q = order_pb2.Position()
    q.CopyFrom(p)
    q.nr += 1
    return q


def is_within(p: order_pb2.Position, outer: order_pb2.Position, branch_prefix: str = "") -> bool:
    """Whether p lies inside a block of the instruction at `outer`."""
    depth = len(outer.branch_path)
    if len(p.branch_path) <= depth:
        return False
    if list(p.branch_path)[:depth] != list(outer.branch_path):
        return False
    step = p.branch_path[depth]
    return step.nr == outer.nr and step.branch.startswith(branch_prefix)


def labels(workflow: workflow_pb2.Workflow) -> dict[str, order_pb2.Position]:
    """Every labelled instruction's position, for `variable(label=...)` and resume at a label."""
    found: dict[str, order_pb2.Position] = {}

    def walk(block: Instructions, path: list[tuple[int, str]]) -> None:
        for nr, instruction in enumerate(block):
            if instruction.label:
                found[instruction.label] = position(nr, path)
            for branch in branches(instruction):
                walk(child_block(instruction, branch), [*path, (nr, branch)])

    walk(workflow.instructions, [])
    return found


def branches(instruction: workflow_pb2.Instruction) -> list[str]:
    """Names of the blocks an instruction has (their first try or cycle, for counted ones)."""
    kind = instruction.WhichOneof("kind")
    if kind == "fork":
        return [f"fork+{b.id}" for b in instruction.fork.branches]
    if kind == "fork_list":
        return ["fork"]
    if kind == "try_catch":
        return ["try+0", "catch+0"]
    if kind == "if_else":
        return ["then", "else"]
    if kind == "lock":
        return ["lock"]
    if kind == "cycle":
        return ["cycle+0"]
    return []
