"""What an order does next at its position: the semantics of each instruction, written once.

Which side runs an instruction is data (`Scope`): the controller runs controller-scope
instructions and hands orders to agents; an agent runs what is in its own scope and hands the
order back (OrderDetachable) when its next instruction is not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gen.ostinato.common.v1 import events_pb2, order_pb2, values_pb2, workflow_pb2
from ostinato.workflow import expressions
from ostinato.workflow.model import job_of
from ostinato.workflow.orders import last_outcome, succeeded
from ostinato.workflow.positions import instruction_at, next_position

S = order_pb2.OrderState
A = order_pb2.AttachedState


@dataclass(frozen=True, slots=True)
class ControllerScope:
    pass


@dataclass(frozen=True, slots=True)
class AgentScope:
    agent: str


Scope = ControllerScope | AgentScope


@dataclass(frozen=True, slots=True)
class ExecuteJob:
    """The order is to run a job here; the agent core picks the subagent and process key."""

    job_name: str
    job: workflow_pb2.Job
    execute: workflow_pb2.Execute


Step = list[events_pb2.Event] | ExecuteJob | None


def _event(**kind: object) -> events_pb2.Event:
    return events_pb2.Event(**kind)  # type: ignore[arg-type]


def _agent_of(workflow: workflow_pb2.Workflow, instruction: workflow_pb2.Instruction | None) -> str:
    if instruction is not None and instruction.WhichOneof("kind") == "execute":
        return job_of(workflow, instruction.execute)[1].agent
    return ""


def is_due(order: order_pb2.Order, now_ms: int) -> bool:
    return not order.HasField("scheduled_for") or order.scheduled_for.ToMilliseconds() <= now_ms


def step(order: order_pb2.Order, workflow: workflow_pb2.Workflow, scope: Scope, now_ms: int) -> Step:
    """The next events (or job to execute) for an order held by `scope`; None: nothing now."""
    at_agent = isinstance(scope, AgentScope)
    if at_agent and order.attached_state != A.ATTACHED_STATE_ATTACHED:
        return None
    if not at_agent and order.attached_state not in (A.ATTACHED_STATE_DETACHED, A.ATTACHED_STATE_UNSPECIFIED):
        return None
    instruction = instruction_at(workflow, order.position)
    agent = _agent_of(workflow, instruction)

    if order.state == S.ORDER_STATE_FRESH:
        if not at_agent and agent:
            # The agent starts it at its time, even while the controller is away.
            return [_event(order_attachable=events_pb2.OrderAttachable(agent=agent))]
        return [_event(order_started=events_pb2.OrderStarted())] if is_due(order, now_ms) else None

    if order.state == S.ORDER_STATE_PROCESSED:
        outcome = last_outcome(order)
        if succeeded(outcome):
            return [_event(order_moved=events_pb2.OrderMoved(to=next_position(order.position)))]
        if at_agent:
            return [_event(order_detachable=events_pb2.OrderDetachable())]
        return [_event(order_failed=events_pb2.OrderFailed(outcome=outcome))]

    if order.state != S.ORDER_STATE_READY:
        return None
    kind = instruction.WhichOneof("kind") if instruction is not None else None
    if at_agent:
        assert isinstance(scope, AgentScope)
        if kind == "execute" and agent == scope.agent:
            name, job = job_of(workflow, instruction.execute)  # type: ignore[union-attr]
            return ExecuteJob(name, job, instruction.execute)  # type: ignore[union-attr]
        return [_event(order_detachable=events_pb2.OrderDetachable())]

    if kind == "execute":
        return [_event(order_attachable=events_pb2.OrderAttachable(agent=agent))]
    if kind is None:
        outcome = workflow_pb2.Outcome(kind=workflow_pb2.OUTCOME_KIND_SUCCEEDED)
        return [_event(order_finished=events_pb2.OrderFinished(outcome=outcome))]
    if kind == "fail":
        fail = instruction.fail  # type: ignore[union-attr]
        outcome = workflow_pb2.Outcome(
            kind=workflow_pb2.OUTCOME_KIND_FAILED, message=fail.message or "failed by Fail instruction"
        )
        for k, v in fail.named_values.items():
            outcome.named_values[k].CopyFrom(v)
        return [_event(order_failed=events_pb2.OrderFailed(outcome=outcome))]
    if kind == "finish":
        finish = instruction.finish  # type: ignore[union-attr]
        outcome = (
            finish.outcome
            if finish.HasField("outcome")
            else workflow_pb2.Outcome(kind=workflow_pb2.OUTCOME_KIND_SUCCEEDED)
        )
        return [_event(order_finished=events_pb2.OrderFinished(outcome=outcome))]
    raise ValueError(f"instruction {kind} has no semantics yet")


def order_scope(order: order_pb2.Order) -> dict[str, values_pb2.Value]:
    """Variables visible to expressions: arguments, overlaid by values returned so far."""
    scope: dict[str, values_pb2.Value] = dict(order.arguments)
    scope.update(order.variables)
    return scope


def job_environment(order: order_pb2.Order, run: ExecuteJob) -> dict[str, str]:
    """Environment of the job's process: its env expressions evaluated over the order's variables,
    after the job's default arguments and the Execute's arguments."""
    variables: dict[str, values_pb2.Value] = dict(run.job.default_arguments)
    variables.update(order_scope(order))
    for k, expr in run.execute.arguments.items():
        variables[k] = values_pb2.Value(string=expressions.evaluate_text(expr, variables))
    executable = run.job.executable
    env: Mapping[str, str] = (
        executable.shell_script.env
        if executable.WhichOneof("kind") == "shell_script"
        else executable.command_line.env
    )
    return {k: expressions.evaluate_text(expr, variables) for k, expr in env.items()}
