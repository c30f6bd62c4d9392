"""A workflow drawn as a graph of its instructions, and an order's marks on it (pure: no I/O).

Instructions flow top to bottom. One that holds blocks (fork, try/catch, if/else, lock, cycle,
forkList) is a box whose blocks hang below it side by side and meet again in a join dot, so
a block's instructions sit in the column of its branch. Which instruction has which blocks comes
from ostinato.workflow.positions (the one place that knows), and every box is keyed by the
position of its instruction as `key()` writes it: an order's position, and the positions of its
outcomes, find their box by the same key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gen.ostinato.common.v1 import order_pb2, workflow_pb2
from ostinato.workflow import positions
from ostinato.workflow.events import outcome_text

BOX_W = 184
BOX_H = 40
GAP_X = 22
GAP_Y = 28
JOIN = 12  # the join dot's diameter
EMPTY_W = 56  # the lane of an empty block (an if without else)
MARGIN = 12
LABEL_CHARS = 24

W = workflow_pb2


@dataclass(frozen=True, slots=True)
class Node:
    key: str  # the instruction's position (see key()); "" for a join dot
    kind: str  # the instruction's kind (execute, fork, ...), "join" or "end"
    label: str  # what the box says, at most LABEL_CHARS
    detail: str  # the full text, as a tooltip
    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True, slots=True)
class Edge:
    points: tuple[tuple[int, int], ...]
    label: str = ""  # the branch an edge enters: then, else, try, catch, a fork branch's id


@dataclass(frozen=True, slots=True)
class Graph:
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    width: int
    height: int


def key(p: order_pb2.Position) -> str:
    """A position as the graph knows it: positions.text() without the counts of repeated blocks
    (`0/try+2:1` is the box `0/try:1`, whatever try it is)."""
    prefix = "".join(f"{s.nr}/{positions.split_branch(s.branch)[0]}:" for s in p.branch_path)
    return f"{prefix}{p.nr}"


def layout(workflow: workflow_pb2.Workflow) -> Graph:
    nodes: list[Node] = []
    edges: list[Edge] = []
    width, height = _block_size(workflow.instructions)
    width = max(width, BOX_W)
    center = MARGIN + width // 2
    top, bottom = _place_block(workflow.instructions, "", center, MARGIN, nodes, edges)
    end_y = bottom + GAP_Y if workflow.instructions else MARGIN
    end = Node(
        str(len(workflow.instructions)), "end", "end", "the end of the workflow", center - 40, end_y, 80, 26
    )
    if workflow.instructions:
        edges.append(_edge((center, bottom), (center, end_y)))
    nodes.append(end)
    return Graph(tuple(nodes), tuple(edges), width + 2 * MARGIN, end_y + end.h + MARGIN)


def marks(order: order_pb2.Order) -> dict[str, str]:
    """Box key -> how to mark it (CSS classes): the outcome of the last job there (succeeded,
    failed, killed, disrupted), and "current" where the order stands (the end box once it ended)."""
    found = {key(h.position): outcome_word(h.outcome) for h in order.historic_outcomes}
    here = key(order.position)
    found[here] = f"{found[here]} current" if here in found else "current"
    return found


def outcome_word(outcome: W.Outcome) -> str:
    if outcome.kind == W.OUTCOME_KIND_UNSPECIFIED:
        return "succeeded"
    return W.OutcomeKind.Name(outcome.kind).removeprefix("OUTCOME_KIND_").lower()


# ---- sizes, then places


def _block_size(block: Sequence[W.Instruction]) -> tuple[int, int]:
    if not block:
        return EMPTY_W, 0
    sizes = [_instruction_size(i) for i in block]
    return max(w for w, _ in sizes), sum(h for _, h in sizes) + GAP_Y * (len(sizes) - 1)


def _instruction_size(instruction: W.Instruction) -> tuple[int, int]:
    blocks = positions.blocks(instruction)
    if not blocks:
        return BOX_W, BOX_H
    sizes = [_block_size(b) for _, _, b in blocks]
    width = max(BOX_W, sum(w for w, _ in sizes) + GAP_X * (len(sizes) - 1))
    return width, BOX_H + GAP_Y + max(h for _, h in sizes) + GAP_Y + JOIN


def _place_block(
    block: Sequence[W.Instruction], prefix: str, center: int, y: int, nodes: list[Node], edges: list[Edge]
) -> tuple[int, int]:
    """Places the block's instructions one below the other; (top, bottom) y of what it drew."""
    top = y
    previous_bottom: int | None = None
    for nr, instruction in enumerate(block):
        bottom = _place_instruction(instruction, f"{prefix}{nr}", center, y, nodes, edges)
        if previous_bottom is not None:
            edges.append(_edge((center, previous_bottom), (center, y)))
        previous_bottom = bottom
        y = bottom + GAP_Y
    return top, previous_bottom if previous_bottom is not None else top


def _place_instruction(
    instruction: W.Instruction, at: str, center: int, y: int, nodes: list[Node], edges: list[Edge]
) -> int:
    kind = instruction.WhichOneof("kind") or "unknown"
    label, detail = describe(instruction)
    nodes.append(Node(at, kind, _short(label), detail, center - BOX_W // 2, y, BOX_W, BOX_H))
    blocks = positions.blocks(instruction)
    if not blocks:
        return y + BOX_H
    sizes = [_block_size(b) for _, _, b in blocks]
    total = sum(w for w, _ in sizes) + GAP_X * (len(sizes) - 1)
    left = center - total // 2
    block_top = y + BOX_H + GAP_Y
    join_y = block_top + max(h for _, h in sizes) + GAP_Y
    for (branch, _, block), (w, _) in zip(blocks, sizes, strict=True):
        column = left + w // 2
        name = positions.split_branch(branch)[0]
        if block:
            _, bottom = _place_block(block, f"{at}/{name}:", column, block_top, nodes, edges)
            edges.append(_edge((center, y + BOX_H), (column, block_top), _branch_label(name)))
            edges.append(_edge((column, bottom), (center, join_y)))
        else:
            edges.append(
                _edge(
                    (center, y + BOX_H), (center if len(blocks) == 1 else column, join_y), _branch_label(name)
                )
            )
        left += w + GAP_X
    nodes.append(Node("", "join", "", "", center - JOIN // 2, join_y, JOIN, JOIN))
    return join_y + JOIN


def _edge(start: tuple[int, int], end: tuple[int, int], label: str = "") -> Edge:
    """Straight down, or down, across and down again halfway above the target."""
    (x1, y1), (x2, y2) = start, end
    if x1 == x2:
        return Edge(((x1, y1), (x2, y2)), label)
    bend = y1 + min(GAP_Y // 2, (y2 - y1) // 2)
    return Edge(((x1, y1), (x1, bend), (x2, bend), (x2, y2)), label)


def _branch_label(name: str) -> str:
    return name.removeprefix("fork+") if name.startswith("fork+") else name


def _short(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


# ---- what a box says


def describe(instruction: W.Instruction) -> tuple[str, str]:
    """(label, detail) of an instruction's box."""
    kind = instruction.WhichOneof("kind")
    label, detail = _WORDS.get(kind or "", _unknown)(instruction)
    if instruction.label:
        detail = f"{instruction.label}: {detail}"
    return label, detail


def _execute(i: W.Instruction) -> tuple[str, str]:
    e = i.execute
    if e.WhichOneof("job_ref") == "job_name":
        return f"job {e.job_name}", f"execute the job {e.job_name}"
    agent = f" on {e.job.agent}" if e.job.agent else ""
    return "inline job", f"execute an inline job{agent}"


def _duration(d: object) -> str:
    seconds = getattr(d, "seconds", 0) + getattr(d, "nanos", 0) / 1e9
    return f"{seconds:g}s"


def _cycle(i: W.Instruction) -> tuple[str, str]:
    c = i.cycle
    scheme = c.WhichOneof("scheme")
    every = f"every {_duration(c.ticking)}" if scheme == "ticking" else f"pause {_duration(c.continuous)}"
    limit = f", at most {c.limit}" if c.limit else ""
    return f"cycle {every}", f"cycle: {every}{limit}"


def _if(i: W.Instruction) -> tuple[str, str]:
    return f"if {i.if_else.condition}", f"if {i.if_else.condition}"


def _try(i: W.Instruction) -> tuple[str, str]:
    tries = f" (at most {i.try_catch.max_tries} tries)" if i.try_catch.max_tries else ""
    return f"try{tries}", f"try, catch on failure{tries}"


def _fail(i: W.Instruction) -> tuple[str, str]:
    text = i.fail.message or "fail"
    return f"fail: {text}", f"fail the order{': ' + i.fail.message if i.fail.message else ''}"


def _finish(i: W.Instruction) -> tuple[str, str]:
    if i.finish.HasField("outcome"):
        return "finish", f"finish the order: {outcome_text(i.finish.outcome)}"
    return "finish", "finish the order"


def _unknown(i: W.Instruction) -> tuple[str, str]:
    kind = i.WhichOneof("kind") or "instruction"
    return kind, kind


_WORDS = {
    "execute": _execute,
    "fail": _fail,
    "finish": _finish,
    "fork": lambda i: ("fork", f"fork into {', '.join(b.id for b in i.fork.branches)}"),
    "fork_list": lambda i: (
        f"fork over ${i.fork_list.children}",
        f"a child order per element of ${i.fork_list.children}",
    ),
    "try_catch": _try,
    "retry": lambda i: ("retry", "try again"),
    "if_else": _if,
    "lock": lambda i: (
        f"lock {i.lock.lock_path}",
        f"hold lock {i.lock.lock_path}" + (f" ({i.lock.count})" if i.lock.count else " (exclusively)"),
    ),
    "prompt": lambda i: (f"prompt: {i.prompt.question}", f"ask: {i.prompt.question}"),
    "sleep": lambda i: (f"sleep {_duration(i.sleep.duration)}", f"sleep {_duration(i.sleep.duration)}"),
    "cycle": _cycle,
    "break_cycle": lambda i: ("break", "leave the cycle"),
    "add_order": lambda i: (
        f"add order {i.add_order.workflow_path}",
        f"add an order of {i.add_order.workflow_path}",
    ),
}
