"""The whole system's cores in memory: a controller, a director per agent, scripted subagents
and a clock the test moves. Messages between them follow the same rules as the real shells
(only committed state acts; every hand-over is idempotent), but deterministically."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from controller_svc.core import ControllerCore, ControllerState
from director_svc.core import DirectorCore, DirectorState, ProcessSpec
from gen.ostinato.common.v1 import commands_pb2, events_pb2, items_pb2, order_pb2
from gen.ostinato.controller.v1 import controller_pb2
from gen.ostinato.subagent.v1 import subagent_pb2
from ostinato.workflow.model import canonical_json, parse_workflow
from ostinato.workflow.values import to_value

T0 = 1_700_000_000_000
HANG = "hang"


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
        self.controller = ControllerCore(ControllerState(), frozenset(agents))
        self.directors = {a: DirectorCore(DirectorState(), a, [f"{a}/s"]) for a in agents}
        self.script: Script = script or (lambda spec: Result())
        self.started: list[ProcessSpec] = []  # every process start, in order
        self.running: dict[str, ProcessSpec] = {}
        self.seq = {a: 0 for a in agents}
        self.observed = {a: 0 for a in agents}
        self.sent: set[tuple[str, str, int]] = set()
        self.versions = 0
        for agent, director in self.directors.items():
            director.subagent_welcome(f"{agent}/s", subagent_pb2.Welcome(run_id="run-1"), self.now, set())

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
        self.controller.deploy(items, self.now)
        return version

    def add(self, order_id: str, path: str = "/wf", at: int | None = None, **arguments: object) -> None:
        new = controller_pb2.NewOrder(id=order_id, workflow_path=path)
        for k, v in arguments.items():
            new.arguments[k].CopyFrom(to_value(v))
        if at is not None:
            new.scheduled_for.FromMilliseconds(at)
        self.controller.add_orders([new], self.now)
        self.run()

    def command(self, order_id: str, **kind: object) -> commands_pb2.OrderCommandResult:
        _, results = self.controller.command_orders(
            [commands_pb2.OrderCommand(order_id=order_id, **kind)], self.now
        )  # type: ignore[arg-type]
        self.run()
        return results[0]

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
        c = self.controller
        progress = bool(c.wake(self.now))
        for agent, d in self.directors.items():
            committed = 10**12
            work = c.agent_work(agent, committed, self.sent)
            if work.attach:
                fresh = [o for _, o in work.attach]
                items = [c.state.signed_items[(o.workflow_path, o.workflow_version_id)] for o in fresh]
                d.attach_items(items, self.now)
                d.attach_orders(fresh, self.now, {f"{agent}/s"})
            if work.commands:
                d.command_orders([cmd for _, cmd in work.commands], self.now, {f"{agent}/s"})
            if work.detach:
                d.detach_orders([i for _, i in work.detach], self.now)
            for pieces in (work.attach, work.commands, work.detach):
                self.sent |= {key for key, _ in pieces}
                progress |= bool(pieces)
            progress |= bool(d.wake(self.now, {f"{agent}/s"}))
            for spec in d.processes_to_start(f"{agent}/s", committed):
                if spec.process_key in self.running or any(
                    s.process_key == spec.process_key for s in self.started
                ):
                    continue
                self.started.append(spec)
                result = self.script(spec)
                if result.rc == HANG:
                    self.running[spec.process_key] = spec
                else:
                    self._report(spec, result)
                progress = True
            for key in d.processes_to_kill(f"{agent}/s", committed):
                if key in self.running:
                    self._report(self.running.pop(key), Result(rc=128 + 15), signal=15)
                    progress = True
            new = d.state.log.after(self.observed[agent], d.state.last_event_id)
            if new:
                self.observed[agent] = new[-1].id
                c.on_agent_events(agent, list(new), self.now)
                progress = True
        return progress

    def _report(self, spec: ProcessSpec, result: Result, signal: int = 0) -> None:
        agent = spec.subagent_id.split("/")[0]
        d = self.directors[agent]
        messages = []
        for stream, text in (
            (subagent_pb2.OUTPUT_STREAM_STDOUT, result.stdout),
            (subagent_pb2.OUTPUT_STREAM_STDERR, result.stderr),
        ):
            if text:
                self.seq[agent] += 1
                out = subagent_pb2.ProcessOutput(process_key=spec.process_key, stream=stream, chunk=text)
                messages.append(subagent_pb2.SessionResponse(seq=self.seq[agent], process_output=out))
        self.seq[agent] += 1
        exited = subagent_pb2.ProcessExited(
            process_key=spec.process_key,
            return_code=int(result.rc),
            signal=signal,
            returned_values=result.returned,
        )
        messages.append(subagent_pb2.SessionResponse(seq=self.seq[agent], process_exited=exited))
        d.subagent_messages(spec.subagent_id, "run-1", messages, self.now, {spec.subagent_id})

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
