"""What an order does next at its position: the semantics of each instruction, written once.

Which side runs an instruction is data (`SCOPES`): the controller runs controller-scope
instructions and hands orders to agents; an agent runs its own jobs and the instructions that may
run anywhere, and hands the order back (OrderDetachable) when the next one is not its to run.
Work that involves other orders or the controller's locks (fork, join, lock, add order, cancel)
comes back as `ControllerWork` for the controller core.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from gen.ostinato.common.v1 import events_pb2, order_pb2, values_pb2, workflow_pb2
from ostinato.errors import InvalidArgument
from ostinato.workflow import expressions
from ostinato.workflow.model import job_of
from ostinato.workflow.orders import last_outcome, mark_of, succeeded
from ostinato.workflow.positions import (
    enclosing,
    enter,
    instruction_at,
    labels,
    next_position,
    split_branch,
)
from ostinato.workflow.values import to_value

S = order_pb2.OrderState
A = order_pb2.AttachedState
Event = events_pb2.Event
FAILED = workflow_pb2.OUTCOME_KIND_FAILED
SUCCEEDED = workflow_pb2.OUTCOME_KIND_SUCCEEDED

# Where each instruction runs: "agent" (the job's agent), "controller", or "any" (wherever the
# order is, so that an agent runs it on its own while the controller is away).
SCOPES: dict[str, str] = {
    "execute": "agent",
    "fork": "controller",
    "fork_list": "controller",
    "lock": "controller",
    "prompt": "controller",
    "add_order": "controller",
    "finish": "controller",
    "fail": "any",
    "try_catch": "any",
    "retry": "any",
    "if_else": "any",
    "sleep": "any",
    "cycle": "any",
    "break_cycle": "any",
}


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


@dataclass(frozen=True, slots=True)
class ControllerWork:
    """Work the controller core does because it involves other orders or locks:
    "fork", "fork_list", "lock", "add_order" (the instruction at the order's position),
    "join" (a child order ended its branch), "cancel" (a cancel mark), "fail", "finish"."""

    kind: str
    instruction: workflow_pb2.Instruction | None = None
    outcome: workflow_pb2.Outcome | None = None


Step = list[Event] | ExecuteJob | ControllerWork | None


def _e(**kind: object) -> Event:
    return Event(**kind)  # type: ignore[arg-type]


def _ts(ms: int) -> Timestamp:
    t = Timestamp()
    t.FromMilliseconds(ms)
    return t


def _moved(to: order_pb2.Position) -> Event:
    return _e(order_moved=events_pb2.OrderMoved(to=to))


def _agent_of(workflow: workflow_pb2.Workflow, instruction: workflow_pb2.Instruction | None) -> str:
    if instruction is not None and instruction.WhichOneof("kind") == "execute":
        return job_of(workflow, instruction.execute)[1].agent
    return ""


def is_due(order: order_pb2.Order, now_ms: int) -> bool:
    return not order.HasField("scheduled_for") or order.scheduled_for.ToMilliseconds() <= now_ms


def failed(message: str) -> workflow_pb2.Outcome:
    return workflow_pb2.Outcome(kind=FAILED, message=message)


def step(order: order_pb2.Order, workflow: workflow_pb2.Workflow, scope: Scope, now_ms: int) -> Step:
    """The next events (or work) for an order held by `scope`; None: nothing now."""
    at_agent = isinstance(scope, AgentScope)
    if at_agent and order.attached_state != A.ATTACHED_STATE_ATTACHED:
        return None
    if not at_agent and order.attached_state not in (A.ATTACHED_STATE_DETACHED, A.ATTACHED_STATE_UNSPECIFIED):
        return None
    detach = [_e(order_detachable=events_pb2.OrderDetachable())]
    state = order.state
    if state in (
        S.ORDER_STATE_FRESH,
        S.ORDER_STATE_READY,
        S.ORDER_STATE_WAITING,
        S.ORDER_STATE_PROMPTING,
        S.ORDER_STATE_PROCESSED,
    ):
        if mark_of(order, "cancel") is not None:  # before the outcome: a killed job does not fail the order
            return detach if at_agent else ControllerWork("cancel")
        if mark_of(order, "suspend") is not None and state not in (
            S.ORDER_STATE_PROMPTING,
            S.ORDER_STATE_PROCESSED,
        ):
            if state != S.ORDER_STATE_WAITING or order.HasField("waiting_until"):
                return [_e(order_suspended=events_pb2.OrderSuspended())]
    position = order.position
    instruction = instruction_at(workflow, position)
    kind = instruction.WhichOneof("kind") if instruction is not None else None

    if state == S.ORDER_STATE_FRESH:
        agent = _agent_of(workflow, instruction)
        if not at_agent and agent:
            # The agent starts it at its time, even while the controller is away.
            return [_e(order_attachable=events_pb2.OrderAttachable(agent=agent))]
        return [_e(order_started=events_pb2.OrderStarted())] if is_due(order, now_ms) else None

    if state == S.ORDER_STATE_WAITING:
        if order.HasField("waiting_until") and order.waiting_until.ToMilliseconds() <= now_ms:
            return [_e(order_awoke=events_pb2.OrderAwoke())]
        return None  # a later time, or a lock's queue (the controller grants locks)

    if state == S.ORDER_STATE_PROCESSED:
        outcome = last_outcome(order)
        if succeeded(outcome):
            return [_moved(next_position(position))]
        assert outcome is not None
        return fail(order, workflow, outcome, at_agent)

    if state != S.ORDER_STATE_READY:
        return None
    if instruction is None:
        return _end_of_block(order, workflow, at_agent, now_ms)
    assert kind is not None
    where = SCOPES[kind]
    if where == "controller" and at_agent:
        return detach
    if where == "agent":
        agent = _agent_of(workflow, instruction)
        if not at_agent:
            return [_e(order_attachable=events_pb2.OrderAttachable(agent=agent))]
        assert isinstance(scope, AgentScope)
        if agent != scope.agent:
            return detach
        name, job = job_of(workflow, instruction.execute)
        return ExecuteJob(name, job, instruction.execute)

    if kind in ("fork", "fork_list", "lock", "add_order"):
        return ControllerWork(kind, instruction)
    if kind == "prompt":
        return [_e(order_prompted=events_pb2.OrderPrompted(question=instruction.prompt.question))]
    if kind == "finish":
        finish = instruction.finish
        outcome = finish.outcome if finish.HasField("outcome") else workflow_pb2.Outcome(kind=SUCCEEDED)
        return ControllerWork("finish", instruction, outcome)
    if kind == "fail":
        f = instruction.fail
        outcome = failed(f.message or "failed by a Fail instruction")
        for k, v in f.named_values.items():
            outcome.named_values[k].CopyFrom(v)
        return fail(order, workflow, outcome, at_agent, uncatchable=f.uncatchable)
    if kind == "try_catch":
        return [_moved(enter(position, "try+0"))]
    if kind == "retry":
        return _retry(order, workflow, at_agent, now_ms)
    if kind == "if_else":
        try:
            true = expressions.evaluate_bool(instruction.if_else.condition, OrderScope(order, workflow))
        except expressions.ExpressionError as e:
            return fail(order, workflow, failed(f"if: {e}"), at_agent)
        if true:
            return [_moved(enter(position, "then"))]
        if instruction.if_else.HasField("else") and getattr(instruction.if_else, "else").instructions:
            return [_moved(enter(position, "else"))]
        return [_moved(next_position(position))]
    if kind == "sleep":
        until = now_ms + instruction.sleep.duration.ToMilliseconds()
        return [_e(order_sleeping=events_pb2.OrderSleeping(until=_ts(until)))]
    if kind == "cycle":
        cycle = order_pb2.CycleState(index=0)
        cycle.started_at.FromMilliseconds(now_ms)
        if order.HasField("cycle") and order.cycle.HasField("started_at"):  # back for the next cycle
            cycle = order_pb2.CycleState(started_at=order.cycle.started_at, index=order.cycle.index + 1)
        to = enter(position, f"cycle+{cycle.index}")
        return [_e(order_cycle_started=events_pb2.OrderCycleStarted(to=to, cycle=cycle))]
    if kind == "break_cycle":
        for depth in reversed(range(len(position.branch_path))):
            if position.branch_path[depth].branch.startswith("cycle+"):
                return [_moved(next_position(enclosing(position, depth)))]
        return fail(order, workflow, failed("Break outside a Cycle"), at_agent)
    raise ValueError(f"instruction {kind} has no semantics")


def _end_of_block(
    order: order_pb2.Order, workflow: workflow_pb2.Workflow, at_agent: bool, now_ms: int
) -> Step:
    position = order.position
    detach = [_e(order_detachable=events_pb2.OrderDetachable())]
    if not position.branch_path:
        if at_agent:
            return detach
        return ControllerWork("finish", None, workflow_pb2.Outcome(kind=SUCCEEDED))
    outer = enclosing(position)
    outer_instruction = instruction_at(workflow, outer)
    assert outer_instruction is not None
    kind = outer_instruction.WhichOneof("kind")
    if kind in ("fork", "fork_list"):
        return detach if at_agent else ControllerWork("join")
    if kind == "lock":
        if at_agent:
            return detach
        released = events_pb2.OrderLockReleased(lock_path=outer_instruction.lock.lock_path)
        return [_e(order_lock_released=released), _moved(next_position(outer))]
    if kind == "cycle":
        return _cycle_end(order, outer_instruction.cycle, position, now_ms)
    return [_moved(next_position(outer))]  # try, catch, then, else


def _cycle_end(
    order: order_pb2.Order, cycle: workflow_pb2.Cycle, position: order_pb2.Position, now_ms: int
) -> Step:
    started = order.cycle.started_at.ToMilliseconds()
    index = order.cycle.index
    scheme = cycle.WhichOneof("scheme")
    if scheme == "ticking":
        interval = max(cycle.ticking.ToMilliseconds(), 1)
        ticks = max(index + 1, math.ceil((now_ms - started) / interval))  # missed ticks are skipped
        next_at = started + ticks * interval
    elif scheme == "continuous":
        next_at = now_ms + cycle.continuous.ToMilliseconds()
    else:
        next_at = now_ms
    more = (cycle.limit == 0 or index + 1 < cycle.limit) and (
        not cycle.HasField("window") or next_at < started + cycle.window.ToMilliseconds()
    )
    if more:
        state = order_pb2.CycleState(started_at=order.cycle.started_at, index=index, next_at=_ts(next_at))
        return [_e(order_cycle_finished=events_pb2.OrderCycleFinished(cycle=state))]
    return [
        _e(order_cycle_finished=events_pb2.OrderCycleFinished()),
        _moved(next_position(enclosing(position))),
    ]


def _retry(order: order_pb2.Order, workflow: workflow_pb2.Workflow, at_agent: bool, now_ms: int) -> Step:
    position = order.position
    for depth in reversed(range(len(position.branch_path))):
        name, tries = split_branch(position.branch_path[depth].branch)
        if name != "catch":
            continue
        outer = enclosing(position, depth)
        try_catch = instruction_at(workflow, outer).try_catch  # type: ignore[union-attr]
        if try_catch.max_tries and tries + 1 >= try_catch.max_tries:
            outcome = last_outcome(order) or failed("retried too often")
            return fail(order, workflow, outcome, at_agent, from_position=outer)
        delays = try_catch.retry_delays
        delay = delays[min(tries, len(delays) - 1)].ToMilliseconds() if delays else 0
        retrying = events_pb2.OrderRetrying(to=enter(outer, f"try+{tries + 1}"), until=_ts(now_ms + delay))
        return [_e(order_retrying=retrying)]
    return fail(order, workflow, failed("Retry outside a catch block"), at_agent)


def fail(
    order: order_pb2.Order,
    workflow: workflow_pb2.Workflow,
    outcome: workflow_pb2.Outcome,
    at_agent: bool,
    *,
    uncatchable: bool = False,
    from_position: order_pb2.Position | None = None,
) -> Step:
    """A failure at the order's position: caught by the innermost enclosing try (not beyond its
    fork branch), else the order fails. Leaving a lock block releases the lock, which only the
    controller can do: an agent hands such an order back."""
    position = from_position if from_position is not None else order.position
    detach = [_e(order_detachable=events_pb2.OrderDetachable())]
    left_locks: list[str] = []
    if not uncatchable:
        for depth in reversed(range(len(position.branch_path))):
            name, tries = split_branch(position.branch_path[depth].branch)
            outer = enclosing(position, depth)
            if name.startswith("fork"):
                break
            if name == "lock":
                left_locks.append(instruction_at(workflow, outer).lock.lock_path)  # type: ignore[union-attr]
            if name == "try":
                if left_locks and at_agent:
                    return detach
                releases = [
                    _e(order_lock_released=events_pb2.OrderLockReleased(lock_path=p)) for p in left_locks
                ]
                caught = events_pb2.OrderCaught(outcome=outcome, to=enter(outer, f"catch+{tries}"))
                return [*releases, _e(order_caught=caught)]
    return detach if at_agent else ControllerWork("fail", None, outcome)


class OrderScope:
    """Variables an order's expressions see: values returned so far over its arguments, over
    `defaults` (a job's default arguments); `$returnCode` of the last job; labelled lookups."""

    def __init__(
        self,
        order: order_pb2.Order,
        workflow: workflow_pb2.Workflow,
        overrides: Mapping[str, values_pb2.Value] | None = None,
        defaults: Mapping[str, values_pb2.Value] | None = None,
    ) -> None:
        self.order = order
        self.workflow = workflow
        self.overrides = overrides or {}
        self.defaults = defaults or {}

    def variable(self, name: str, label: str = "", job: str = "") -> values_pb2.Value | None:
        if label or job:
            return self._returned_at(name, label, job)
        if name in self.overrides:
            return self.overrides[name]
        if name in ("returnCode", "rc"):
            outcome = last_outcome(self.order)
            return to_value(outcome.return_code) if outcome is not None else None
        for source in (self.order.variables, self.order.arguments, self.defaults):
            if name in source:
                return source[name]
        return None

    def _returned_at(self, name: str, label: str, job: str) -> values_pb2.Value | None:
        where = labels(self.workflow).get(label) if label else None
        for historic in reversed(self.order.historic_outcomes):
            if where is not None and historic.position != where:
                continue
            if job:
                instruction = instruction_at(self.workflow, historic.position)
                if instruction is None or instruction.WhichOneof("kind") != "execute":
                    continue
                if job_of(self.workflow, instruction.execute)[0] != job:
                    continue
            if name in ("returnCode", "rc"):
                return to_value(historic.outcome.return_code)
            return historic.outcome.named_values.get(name)
        return None


def job_environment(
    order: order_pb2.Order,
    workflow: workflow_pb2.Workflow,
    run: ExecuteJob,
    resources: Mapping[str, workflow_pb2.JobResourceItem] | None = None,
) -> dict[str, str]:
    """Environment of the job's process: its env expressions evaluated over the Execute's
    arguments, the order's variables and the job's default arguments, in that order; under it
    the env of the job resources the job and its workflow name (the first named wins, as in
    JS7), whose variables the expressions see last."""
    resources = resources or {}
    named: list[workflow_pb2.JobResourceItem] = []
    for path in [*run.job.job_resource_paths, *workflow.job_resource_paths]:
        if path not in resources:
            raise InvalidArgument(f"job resource {path} is not deployed", field="jobResourcePaths")
        named.append(resources[path])
    base = OrderScope(order, workflow, defaults=run.job.default_arguments)
    defaults: dict[str, values_pb2.Value] = {}
    for resource in reversed(named):  # the first named resource wins
        defaults.update({k: expressions.evaluate(expr, base) for k, expr in resource.variables.items()})
    defaults.update(run.job.default_arguments)
    base = OrderScope(order, workflow, defaults=defaults)
    arguments = {k: expressions.evaluate(expr, base) for k, expr in run.execute.arguments.items()}
    scope = OrderScope(order, workflow, overrides=arguments, defaults=defaults)
    executable = run.job.executable
    env: dict[str, str] = {}
    for resource in reversed(named):
        env.update({k: expressions.evaluate_text(expr, scope) for k, expr in resource.env.items()})
    own: Mapping[str, str] = (
        executable.shell_script.env
        if executable.WhichOneof("kind") == "shell_script"
        else executable.command_line.env
    )
    env.update({k: expressions.evaluate_text(expr, scope) for k, expr in own.items()})
    return env
