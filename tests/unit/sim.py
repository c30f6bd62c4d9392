"""The whole system's cores in memory: a controller, a director per agent, scripted subagents
and a clock the test moves. The cores are driven only through their stimulus API (`handle`) and
their work (`agent_work`, `subagent_work`), as the real shells drive them (only committed state
acts; every hand-over is idempotent), but deterministically."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from controller_svc import core as c
from director_svc import core as d
from director_svc.core import ProcessSpec
from gen.ostinato.common.v1 import commands_pb2, events_pb2, items_pb2, order_pb2
from ostinato.errors import InvalidArgument
from ostinato.process import Exited, Message, Output, Stream
from ostinato.workflow.model import canonical_json, parse_workflow
from ostinato.workflow.values import to_value

T0 = 1_700_000_000_000
HANG = "hang"
ALL = 10**12  # every event is committed at once here


@dataclass
class Result:
    """What a scripted process does: exit code, output, returned values; HANG keeps it running."""

    rc: int | str = 0
    stdout: str = ""
    stderr: str = ""
    returned: dict[str, str] = field(default_factory=dict)


Script = Callable[[ProcessSpec], Result]


class Sim:
    def __init__(self, agents: tuple[str, ...] = ("agent-1",), script: Script | None = None) -> None:
        self.now = T0
        self.controller = c.ControllerCore(c.ControllerState(), frozenset(agents))
        self.directors = {a: d.DirectorCore(d.DirectorState(), a, [f"{a}/s"]) for a in agents}
        self.script: Script = script or (lambda spec: Result())
        self.started: list[ProcessSpec] = []  # every process start, in order
        self.running: dict[str, ProcessSpec] = {}
        self.seq = {a: 0 for a in agents}
        self.observed = {a: 0 for a in agents}
        self.versions = 0
        for agent, director in self.directors.items():
            director.handle(d.SubagentWelcomed(f"{agent}/s", "run-1"), self.now)
            self.controller.agent_session(agent)

    # --- set-up ---

    def deploy(self, workflow: dict, path: str = "/wf", locks: dict[str, int] | None = None) -> str:
        self.versions += 1
        version = f"v{self.versions}"
        wf = parse_workflow(json.dumps(workflow), path)
        wf.version_id = version
        items = [
            items_pb2.SignedItem(type=items_pb2.ITEM_TYPE_LOCK, path=p, json=json.dumps({"limit": n}))
            for p, n in (locks or {}).items()
        ]
        items.append(
            items_pb2.SignedItem(
                type=items_pb2.ITEM_TYPE_WORKFLOW, path=path, version_id=version, json=canonical_json(wf)
            )
        )
        self.controller.handle(c.Deploy(tuple(items)), self.now)
        return version

    def add(self, order_id: str, path: str = "/wf", at: int | None = None, **arguments: object) -> None:
        new = c.NewOrder(
            order_id, path, arguments={k: to_value(v) for k, v in arguments.items()}, scheduled_for_ms=at
        )
        self.controller.handle(c.AddOrders((new,)), self.now)
        self.run()

    def command(self, order_id: str, **kind: object) -> commands_pb2.OrderCommandResult:
        command = commands_pb2.OrderCommand(order_id=order_id, **kind)  # type: ignore[arg-type]
        try:
            self.controller.handle(c.CommandOrder(command), self.now)
            result = commands_pb2.OrderCommandResult(order_id=order_id)
        except InvalidArgument as e:
            result = commands_pb2.OrderCommandResult(order_id=order_id, error=str(e))
        self.run()
        return result

    # --- running ---

    def advance(self, ms: int) -> None:
        self.now += ms
        self.run()

    def finish(self, key: str, result: Result) -> None:
        """Ends a hanging process with `result`."""
        spec = self.running.pop(key)
        self._report(spec, result)
        self.run()

    def run(self) -> None:
        for _ in range(10_000):
            if not self._round():
                return
        raise AssertionError("no quiet state after 10000 rounds")

    def _round(self) -> bool:
        controller = self.controller
        progress = bool(controller.handle(c.Tick(), self.now))
        for agent, director in self.directors.items():
            work = controller.agent_work(agent, ALL)
            if work.attach:
                keys = sorted({(o.workflow_path, o.workflow_version_id) for o in work.attach})
                items = tuple(controller.state.signed_items[key] for key in keys)
                director.handle(d.AttachItems(items), self.now)
                director.handle(d.AttachOrders(tuple(work.attach)), self.now)
            if work.commands:
                director.handle(d.CommandOrders(tuple(work.commands)), self.now)
            if work.detach:
                director.handle(d.DetachOrders(tuple(work.detach)), self.now)
            progress |= bool(work)
            progress |= bool(director.handle(d.Tick(), self.now))
            subagent_work = director.subagent_work(f"{agent}/s", ALL)
            for spec in subagent_work.starts:
                assert all(s.process_key != spec.process_key for s in self.started), f"{spec} twice"
                self.started.append(spec)
                result = self.script(spec)
                if result.rc == HANG:
                    self.running[spec.process_key] = spec
                else:
                    self._report(spec, result)
            for key in subagent_work.kills:
                if key in self.running:
                    self._report(self.running.pop(key), Result(rc=128 + 15), signal=15)
            progress |= bool(subagent_work)
            new = director.state.log.after(self.observed[agent], director.state.last_event_id)
            if new:
                self.observed[agent] = new[-1].id
                controller.handle(c.AgentEvents(agent, tuple(new)), self.now)
                progress = True
        return progress

    def _report(self, spec: ProcessSpec, result: Result, signal: int = 0) -> None:
        agent = spec.subagent_id.split("/")[0]
        messages: list[tuple[int, Message]] = []
        for stream, text in ((Stream.STDOUT, result.stdout), (Stream.STDERR, result.stderr)):
            if text:
                self.seq[agent] += 1
                messages.append((self.seq[agent], Output(spec.process_key, stream, text)))
        self.seq[agent] += 1
        returned = tuple(sorted(result.returned.items()))
        exited = Exited(spec.process_key, return_code=int(result.rc), signal=signal, returned_values=returned)
        messages.append((self.seq[agent], exited))
        self.directors[agent].handle(d.SubagentMessages(spec.subagent_id, "run-1", tuple(messages)), self.now)

    # --- looking ---

    def events(self, order_id: str) -> list[events_pb2.Event]:
        return [e for e in self.controller.state.log.events if e.order_id == order_id]

    def kinds(self, order_id: str, *, skip: tuple[str, ...] = ("order_std_written",)) -> list[str]:
        return [str(e.WhichOneof("kind")) for e in self.events(order_id) if e.WhichOneof("kind") not in skip]

    def order(self, order_id: str) -> order_pb2.Order:
        return self.controller.state.orders[order_id]

    def jobs(self) -> list[str]:
        """Names of the jobs started, in order, with their order: `order:job`."""
        return [f"{s.order_id}:{s.job_name}" for s in self.started]
