"""Workflows: parsing their canonical JSON, validating them, resolving jobs.

Errors name the field as the user wrote it (JSON names: `jobs.a.executable.shellScript.script`).
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import json_format
from google.protobuf.message import Message

from gen.ostinato.common.v1 import workflow_pb2
from ostinato.errors import InvalidArgument
from ostinato.workflow import expressions

Workflow = workflow_pb2.Workflow


def canonical_json(message: Message) -> str:
    """The one JSON text of a message: what is signed, deployed and compared."""
    return json_format.MessageToJson(message, indent=None, sort_keys=True, ensure_ascii=False)


def parse_workflow(json_text: str, path: str = "") -> workflow_pb2.Workflow:
    """Parses and validates; `path`, when given, overrides the path inside the JSON."""
    workflow = workflow_pb2.Workflow()
    try:
        json_format.Parse(json_text, workflow)
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
    _validate_block(workflow, workflow.instructions, "instructions")


def _validate_block(
    workflow: workflow_pb2.Workflow, instructions: Iterable[workflow_pb2.Instruction], field: str
) -> None:
    for i, instruction in enumerate(instructions):
        where = f"{field}[{i}]"
        kind = instruction.WhichOneof("kind")
        if kind is None:
            raise InvalidArgument("no instruction given (e.g. execute)", field=where)
        if kind == "execute":
            ex = instruction.execute
            ref = ex.WhichOneof("job_ref")
            if ref is None:
                raise InvalidArgument("give jobName or job", field=f"{where}.execute")
            if ref == "job_name" and ex.job_name not in workflow.jobs:
                raise InvalidArgument(f"unknown job {ex.job_name!r}", field=f"{where}.execute.jobName")
            if ref == "job":
                _validate_job(ex.job, f"{where}.execute.job")
            for k, expr in ex.arguments.items():
                expressions.check(expr, f"{where}.execute.arguments.{k}")


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
    for instruction in workflow.instructions:
        if instruction.WhichOneof("kind") == "execute" and instruction.execute.WhichOneof("job_ref") == "job":
            agents.add(instruction.execute.job.agent)
    return agents
