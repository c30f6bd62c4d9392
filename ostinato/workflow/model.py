"""Workflows: parsing their canonical JSON, validating them, resolving jobs.

Errors name the field as the user wrote it (JSON names: `jobs.a.executable.shellScript.script`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from gen.ostinato.common.v1 import items_pb2, workflow_pb2
from ostinato import limits
from ostinato.errors import InvalidArgument
from ostinato.workflow import expressions, positions

Workflow = workflow_pb2.Workflow
M = TypeVar("M", bound=Message)


def canonical_json(message: Message) -> str:
    """The one JSON text of a message: what is signed, deployed and compared."""
    return json_format.MessageToJson(message, indent=None, sort_keys=True, ensure_ascii=False)


def parse_workflow(json_text: str, path: str = "") -> workflow_pb2.Workflow:
    """Parses and validates; `path`, when given, overrides the path inside the JSON. The JSON's
    size and nesting are checked first (see ostinato.limits), so that protobuf's own recursion
    limit is never what refuses it."""
    value = limits.load_item_json(json_text, "", limits.SIGNED_ITEM_BYTES)
    if not isinstance(value, dict):
        raise InvalidArgument("a workflow is a JSON object")
    limits.check_instruction_nesting(value)
    workflow = workflow_pb2.Workflow()
    try:
        json_format.ParseDict(value, workflow)
    except json_format.ParseError as e:
        raise InvalidArgument(_parse_error_text(str(e)), field=_parse_error_field(str(e))) from None
    if path:
        workflow.path = path
    validate(workflow)
    return workflow


def _parse_error_field(text: str) -> str:
    # protobuf says: ... has no field named "agnt" at "Workflow.jobs[a]".
    marker = ' at "'
    if marker in text:
        where = text.rsplit(marker, 1)[1].split('"', 1)[0]
        return where.split(".", 1)[1] if "." in where else ""
    return ""


def _parse_error_text(text: str) -> str:
    first = text.split("\n", 1)[0]
    return first.split(' at "', 1)[0] if ' at "' in first else first


def validate(workflow: workflow_pb2.Workflow) -> None:
    if not workflow.instructions:
        raise InvalidArgument("a workflow needs at least one instruction", field="instructions")
    for name, job in workflow.jobs.items():
        if not name:
            raise InvalidArgument("a job needs a name", field="jobs")
        _validate_job(job, f"jobs.{name}")
    for name, parameter in workflow.order_preparation.parameters.items():
        if parameter.HasField("default"):
            limits.check_value(parameter.default, f"orderPreparation.parameters.{name}.default")
    _validate_block(workflow, workflow.instructions, "instructions", frozenset())
    seen: set[str] = set()
    for _, instruction, field in walk(workflow):
        if instruction.label:
            if instruction.label in seen:
                raise InvalidArgument(
                    f"label {limits.excerpt(instruction.label)} is used twice", field=f"{field}.label"
                )
            seen.add(instruction.label)


def walk(workflow: workflow_pb2.Workflow) -> Iterator[tuple[str, workflow_pb2.Instruction, str]]:
    """Every instruction with its position text and its field path in the JSON."""

    def visit(
        block: Iterable[workflow_pb2.Instruction], prefix: str, field: str
    ) -> Iterator[tuple[str, workflow_pb2.Instruction, str]]:
        for i, instruction in enumerate(block):
            where = f"{field}[{i}]"
            yield f"{prefix}{i}", instruction, where
            for branch, sub_field, sub_block in positions.blocks(instruction):
                yield from visit(sub_block, f"{prefix}{i}/{branch}:", f"{where}.{sub_field}")

    yield from visit(workflow.instructions, "", "instructions")


def _validate_block(
    workflow: workflow_pb2.Workflow,
    instructions: Iterable[workflow_pb2.Instruction],
    field: str,
    within: frozenset[str],
) -> None:
    """`within`: kinds of the enclosing blocks that matter (catch, cycle, fork)."""
    for i, instruction in enumerate(instructions):
        where = f"{field}[{i}]"
        kind = instruction.WhichOneof("kind")
        if kind is None:
            raise InvalidArgument("no instruction given (e.g. execute)", field=where)
        _validate_instruction(workflow, instruction, kind, where, within)
        for branch, sub_field, block in positions.blocks(instruction):
            inner = within
            if branch.startswith("catch"):
                inner = within | {"catch"}
            elif branch.startswith("try"):
                inner = within - {"catch"}
            elif branch.startswith("cycle"):
                inner = within | {"cycle"}
            elif branch.startswith("fork"):
                inner = frozenset({"fork"})  # a branch is a child order: nothing outside reaches in
            _validate_block(workflow, block, f"{where}.{sub_field}", inner)


def _validate_instruction(  # noqa: C901 - one rule per instruction kind
    workflow: workflow_pb2.Workflow,
    instruction: workflow_pb2.Instruction,
    kind: str,
    where: str,
    within: frozenset[str],
) -> None:
    if kind == "execute":
        ex = instruction.execute
        ref = ex.WhichOneof("job_ref")
        if ref is None:
            raise InvalidArgument("give jobName or job", field=f"{where}.execute")
        if ref == "job_name" and ex.job_name not in workflow.jobs:
            raise InvalidArgument(
                f"unknown job {limits.excerpt(ex.job_name)}", field=f"{where}.execute.jobName"
            )
        if ref == "job":
            _validate_job(ex.job, f"{where}.execute.job")
        for k, expr in ex.arguments.items():
            expressions.check(expr, f"{where}.execute.arguments.{k}")
    elif kind == "fork":
        ids = [b.id for b in instruction.fork.branches]
        if not ids:
            raise InvalidArgument("a fork needs branches", field=f"{where}.fork.branches")
        for n, branch_id in enumerate(ids):
            if not branch_id or "|" in branch_id or "/" in branch_id or ":" in branch_id:
                raise InvalidArgument(
                    f"not a branch id: {limits.excerpt(branch_id)}", field=f"{where}.fork.branches[{n}].id"
                )
        if len(set(ids)) != len(ids):
            raise InvalidArgument("branch ids must differ", field=f"{where}.fork.branches")
    elif kind == "fork_list":
        if not instruction.fork_list.children:
            raise InvalidArgument("name the list variable", field=f"{where}.forkList.children")
    elif kind == "retry":
        if "catch" not in within:
            raise InvalidArgument("Retry belongs in a catch block", field=f"{where}.retry")
    elif kind == "try_catch":
        if instruction.try_catch.max_tries < 0:
            raise InvalidArgument("must not be negative", field=f"{where}.tryCatch.maxTries")
    elif kind == "if_else":
        if not instruction.if_else.condition:
            raise InvalidArgument("required", field=f"{where}.ifElse.condition")
        expressions.check(instruction.if_else.condition, f"{where}.ifElse.condition")
    elif kind == "lock":
        if not instruction.lock.lock_path.startswith("/"):
            raise InvalidArgument("an absolute lock path is required", field=f"{where}.lock.lockPath")
        if instruction.lock.count < 0:
            raise InvalidArgument("must not be negative", field=f"{where}.lock.count")
    elif kind == "sleep":
        if instruction.sleep.duration.ToMilliseconds() < 0:
            raise InvalidArgument("must not be negative", field=f"{where}.sleep.duration")
    elif kind == "cycle":
        cycle = instruction.cycle
        if "cycle" in within:
            raise InvalidArgument("cycles do not nest", field=f"{where}.cycle")
        if cycle.limit <= 0 and not cycle.HasField("window"):
            raise InvalidArgument("give a limit or a window, or it never ends", field=f"{where}.cycle")
    elif kind == "break_cycle":
        if "cycle" not in within:
            raise InvalidArgument("Break belongs in a Cycle", field=f"{where}.breakCycle")
    elif kind == "add_order":
        if not instruction.add_order.workflow_path.startswith("/"):
            raise InvalidArgument(
                "an absolute workflow path is required", field=f"{where}.addOrder.workflowPath"
            )
        for k, expr in instruction.add_order.arguments.items():
            expressions.check(expr, f"{where}.addOrder.arguments.{k}")


def _validate_job(job: workflow_pb2.Job, field: str) -> None:
    if not job.agent:
        raise InvalidArgument("required: the agent that runs the job", field=f"{field}.agent")
    kind = job.executable.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument("required: shellScript or commandLine", field=f"{field}.executable")
    if kind == "shell_script":
        if not job.executable.shell_script.script.strip():
            raise InvalidArgument("empty script", field=f"{field}.executable.shellScript.script")
        env = job.executable.shell_script.env
        env_field = f"{field}.executable.shellScript.env"
    else:
        if not job.executable.command_line.argv:
            raise InvalidArgument("empty command line", field=f"{field}.executable.commandLine.argv")
        env = job.executable.command_line.env
        env_field = f"{field}.executable.commandLine.env"
    for k, expr in env.items():
        expressions.check(expr, f"{env_field}.{k}")
    limits.check_arguments(job.default_arguments, f"{field}.defaultArguments")
    if job.process_limit < 0:
        raise InvalidArgument("must not be negative", field=f"{field}.processLimit")
    if job.timeout.seconds < 0 or job.timeout.nanos < 0:
        raise InvalidArgument("must not be negative", field=f"{field}.timeout")
    if job.sigkill_delay.seconds < 0 or job.sigkill_delay.nanos < 0:
        raise InvalidArgument("must not be negative", field=f"{field}.sigkillDelay")


def job_of(workflow: workflow_pb2.Workflow, execute: workflow_pb2.Execute) -> tuple[str, workflow_pb2.Job]:
    """The job an Execute runs and its name (inline jobs are named by their position later)."""
    if execute.WhichOneof("job_ref") == "job_name":
        return execute.job_name, workflow.jobs[execute.job_name]
    return "", execute.job


def agents_of(workflow: workflow_pb2.Workflow) -> set[str]:
    """Every agent a workflow's jobs name, for checking them against the agents a controller has."""
    agents = {job.agent for job in workflow.jobs.values()}
    for _, instruction, _ in walk(workflow):
        if instruction.WhichOneof("kind") == "execute" and instruction.execute.WhichOneof("job_ref") == "job":
            agents.add(instruction.execute.job.agent)
    return agents


def locks_of(workflow: workflow_pb2.Workflow) -> dict[str, str]:
    """Lock paths the workflow uses, with the field that names each."""
    return {
        instruction.lock.lock_path: f"{field}.lock.lockPath"
        for _, instruction, field in walk(workflow)
        if instruction.WhichOneof("kind") == "lock"
    }


def item_digest(signed_json: str) -> str:
    """Version of an item that has none of its own (job resource, subagent cluster): controller
    and agents compare it to tell whether the agent holds the item as deployed."""
    return hashlib.sha256(signed_json.encode()).hexdigest()[:16]


def parse_item(item: items_pb2.SignedItem, into: M) -> M:
    """An item's JSON parsed into its proto, with the item's path; errors name `json (PATH)`."""
    try:
        value = limits.load_item_json(item.json, "", limits.SIGNED_ITEM_BYTES)
    except InvalidArgument as e:
        raise InvalidArgument(e.message, field=f"json ({item.path})") from None
    try:
        json_format.ParseDict(value, into)
    except json_format.ParseError as e:
        raise InvalidArgument(str(e).split("\n")[0], field=f"json ({item.path})") from None
    into.path = item.path  # type: ignore[attr-defined]
    return into


def check_subagent_cluster(cluster: workflow_pb2.SubagentClusterItem) -> None:
    """What JOC and controller both require of a subagent cluster; errors name the JSON field."""
    if not cluster.agent:
        raise InvalidArgument("missing; give the agent's name", field="agent")
    if not cluster.subagents:
        raise InvalidArgument("missing; give at least one {subagentId, priority}", field="subagents")
    seen = set()
    for i, s in enumerate(cluster.subagents):
        if not s.subagent_id or s.subagent_id in seen:
            what = "missing" if not s.subagent_id else f"{limits.excerpt(s.subagent_id)} given twice"
            raise InvalidArgument(what, field=f"subagents[{i}].subagentId")
        seen.add(s.subagent_id)
