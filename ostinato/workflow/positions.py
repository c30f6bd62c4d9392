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


# Blocks an instruction repeats carry the repetition's count in their branch name.
COUNTED = frozenset({"try", "catch", "cycle"})


def split_branch(branch: str) -> tuple[str, int]:
    """`try+2` -> ("try", 2); `fork+left` -> ("fork+left", 0): only counted blocks split."""
    name, _, suffix = branch.partition("+")
    if name in COUNTED and suffix.isdigit():
        return name, int(suffix)
    return branch, 0


def blocks(instruction: workflow_pb2.Instruction) -> list[tuple[str, str, Instructions]]:
    """(branch, JSON field, instructions) of each block an instruction holds; counted blocks
    under their first count. The one place that knows which instruction has which blocks."""
    kind = instruction.WhichOneof("kind")
    if kind == "fork":
        return [
            (f"fork+{b.id}", f"fork.branches[{n}].block.instructions", b.block.instructions)
            for n, b in enumerate(instruction.fork.branches)
        ]
    if kind == "fork_list":
        return [("fork", "forkList.block.instructions", instruction.fork_list.block.instructions)]
    if kind == "try_catch":
        try_catch = instruction.try_catch
        return [
            ("try+0", "tryCatch.try.instructions", getattr(try_catch, "try").instructions),  # `try`: keyword
            ("catch+0", "tryCatch.catch.instructions", try_catch.catch.instructions),
        ]
    if kind == "if_else":
        if_else = instruction.if_else
        return [
            ("then", "ifElse.then.instructions", if_else.then.instructions),
            ("else", "ifElse.else.instructions", getattr(if_else, "else").instructions),
        ]
    if kind == "lock":
        return [("lock", "lock.block.instructions", instruction.lock.block.instructions)]
    if kind == "cycle":
        return [("cycle+0", "cycle.block.instructions", instruction.cycle.block.instructions)]
    return []


def child_block(instruction: workflow_pb2.Instruction, branch: str) -> Instructions:
    name = split_branch(branch)[0]
    for candidate, _, block in blocks(instruction):
        if split_branch(candidate)[0] == name:
            return block
    raise ValueError(f"instruction {instruction.WhichOneof('kind')} has no block {branch!r}")


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
    return [branch for branch, _, _ in blocks(instruction)]
