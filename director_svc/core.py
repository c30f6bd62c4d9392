"""The director's deterministic core: orders attached to this agent, and the job executions it
hands to subagents.

No I/O: the shell passes time and the set of subagents with a live session in; it starts
processes only for OrderProcessingStarted events that are committed, and feeds what subagents
report back in as stimuli. Every method returns the events it emitted (already applied here).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gen.ostinato.common.v1 import commands_pb2, events_pb2, items_pb2, order_pb2, workflow_pb2
from gen.ostinato.subagent.v1 import subagent_pb2
from ostinato.errors import InvalidArgument
from ostinato.workflow import model, positions
from ostinato.workflow.holder import OrderHolder
from ostinato.workflow.model import item_digest
from ostinato.workflow.orders import mark_of
from ostinato.workflow.step import AgentScope, ExecuteJob, failed, job_environment, step

A = order_pb2.AttachedState
S = order_pb2.OrderState
Event = events_pb2.Event
SUCCEEDED = workflow_pb2.OUTCOME_KIND_SUCCEEDED
FAILED = workflow_pb2.OUTCOME_KIND_FAILED


@dataclass
class SubagentRun:
    run_id: str
    observed_seq: int
    process_limit: int = 0  # 0: none
    director_timeout_s: float = 0.0


class DirectorState(OrderHolder):
    # An order leaves the agent when the controller detaches it.
    leaving_kinds = frozenset({"order_detached", "order_deleted"})
    snapshot_classes = (*OrderHolder.snapshot_classes, SubagentRun)

    def __init__(self) -> None:
        super().__init__()
        self.subagent_runs: dict[str, SubagentRun] = {}
        # Counts job starts; round-robin picks by it, so replay picks the same.
        self.starts = 0
        # Processes running per job (workflow path and job), for jobs' process limits.
        self.running: dict[tuple[str, str], int] = {}
        # ... and per subagent, for subagents' own process limits.
        self.subagent_running: dict[str, int] = {}
        self.subagent_clusters: dict[str, workflow_pb2.SubagentClusterItem] = {}
        self.job_resources: dict[str, workflow_pb2.JobResourceItem] = {}
        self.item_versions: dict[tuple[str, str], str] = {}  # (ItemDeployed field, path) -> digest
        # Jobs started per subagent cluster: its round-robin turns by it, so replay picks the same.
        self.cluster_starts: dict[str, int] = {}
        # As signed, for subagents, which verify what they run: workflow versions and the current
        # version of each job resource.
        self.signed_workflows: dict[tuple[str, str], items_pb2.SignedItem] = {}
        self.signed_resources: dict[str, items_pb2.SignedItem] = {}

    def apply_to_state(self, event: Event) -> None:
        kind = event.WhichOneof("kind")
        if kind == "order_processed" and self.orders[event.order_id].state == S.ORDER_STATE_PROCESSING:
            order = self.orders[event.order_id]  # counted before it leaves PROCESSING
            self._count(order, -1)
            self._count_on(order.processing.subagent_id, -1)
        super().apply_to_state(event)
        if kind == "subagent_messages_observed":
            o = event.subagent_messages_observed
            run = self.subagent_runs.get(o.subagent_id)
            if run is not None and run.run_id == o.run_id:
                run.observed_seq = o.until_seq
            else:  # a new run: its Welcome's figures come with it
                self.subagent_runs[o.subagent_id] = SubagentRun(
                    o.run_id, o.until_seq, o.process_limit, o.director_timeout_seconds
                )
        elif kind == "order_processing_started":
            self.starts += 1
            order = self.orders[event.order_id]
            self._count(order, +1)
            self._count_on(order.processing.subagent_id, +1)
            cluster = self.job_of(order).subagent_cluster_id
            if cluster:
                self.cluster_starts[cluster] = self.cluster_starts.get(cluster, 0) + 1
        elif kind == "item_deployed":
            deployed = event.item_deployed
            item = deployed.WhichOneof("item")
            if item == "workflow":
                wf = deployed.workflow
                self.signed_workflows[(wf.path, wf.version_id)] = items_pb2.SignedItem(
                    type=items_pb2.ITEM_TYPE_WORKFLOW,
                    path=wf.path,
                    version_id=wf.version_id,
                    json=deployed.signed_json,
                    signature=deployed.signature,
                )
            elif item == "subagent_cluster":
                self.subagent_clusters[deployed.subagent_cluster.path] = deployed.subagent_cluster
                self.item_versions[(item, deployed.subagent_cluster.path)] = item_digest(deployed.signed_json)
            elif item == "job_resource":
                self.job_resources[deployed.job_resource.path] = deployed.job_resource
                self.item_versions[(item, deployed.job_resource.path)] = item_digest(deployed.signed_json)
                self.signed_resources[deployed.job_resource.path] = items_pb2.SignedItem(
                    type=items_pb2.ITEM_TYPE_JOB_RESOURCE,
                    path=deployed.job_resource.path,
                    version_id=item_digest(deployed.signed_json),
                    json=deployed.signed_json,
                    signature=deployed.signature,
                )

    def job_of(self, order: order_pb2.Order) -> workflow_pb2.Job:
        return _job_at(self.workflow_of(order), order)

    def _count_on(self, subagent_id: str, delta: int) -> None:
        self.subagent_running[subagent_id] = self.subagent_running.get(subagent_id, 0) + delta

    def has_room(self, subagent_id: str) -> bool:
        run = self.subagent_runs.get(subagent_id)
        limit = run.process_limit if run is not None else 0
        return not limit or self.subagent_running.get(subagent_id, 0) < limit

    def job_key(self, order: order_pb2.Order) -> tuple[str, str]:
        instruction = positions.instruction_at(self.workflow_of(order), order.position)
        assert instruction is not None
        name = instruction.execute.job_name or f"@{positions.text(order.position)}"
        return order.workflow_path, name

    def _count(self, order: order_pb2.Order, delta: int) -> None:
        key = self.job_key(order)
        self.running[key] = self.running.get(key, 0) + delta


@dataclass(frozen=True)
class ProcessSpec:
    """What a subagent needs to start a job execution."""

    process_key: str
    order_id: str
    job_name: str
    subagent_id: str
    executable: workflow_pb2.Executable
    env: dict[str, str]
    timeout_s: float
    sigkill_delay_s: float
    trace_parent: str
    # Where the job is, for the subagent's check against the signed workflow.
    workflow_path: str = ""
    workflow_version_id: str = ""
    position: order_pb2.Position = field(default_factory=order_pb2.Position)
    job_resource_paths: tuple[str, ...] = ()


@dataclass
class DirectorCore:
    state: DirectorState
    agent: str
    subagent_ids: list[str] = field(default_factory=list)  # in configured order

    def attach_items(self, items: list[items_pb2.SignedItem], now_ms: int) -> list[Event]:
        """Workflows, job resources and subagent clusters the controller hands over (each
        journaled once per version; the controller learns from the event that it arrived)."""
        events = []
        for i, item in enumerate(items):
            field = f"items[{i}]"
            if item.type == items_pb2.ITEM_TYPE_WORKFLOW:
                try:
                    workflow = model.parse_workflow(item.json)
                except InvalidArgument as e:
                    raise InvalidArgument(str(e), field=f"{field}.json ({item.path})") from None
                if (workflow.path, workflow.version_id) in self.state.workflows:
                    continue
                deployed = events_pb2.ItemDeployed(
                    workflow=workflow, signed_json=item.json, signature=item.signature
                )
            elif item.type == items_pb2.ITEM_TYPE_JOB_RESOURCE:
                if self.state.item_versions.get(("job_resource", item.path)) == item_digest(item.json):
                    continue
                resource = _parse_item(item, workflow_pb2.JobResourceItem(), field)
                deployed = events_pb2.ItemDeployed(
                    job_resource=resource, signed_json=item.json, signature=item.signature
                )
            elif item.type == items_pb2.ITEM_TYPE_SUBAGENT_CLUSTER:
                if self.state.item_versions.get(("subagent_cluster", item.path)) == item_digest(item.json):
                    continue
                cluster = _parse_item(item, workflow_pb2.SubagentClusterItem(), field)
                if cluster.agent != self.agent:
                    raise InvalidArgument(
                        f"subagent cluster {item.path} is of agent {cluster.agent!r}, not {self.agent!r}",
                        field=f"{field}.json.agent",
                    )
                deployed = events_pb2.ItemDeployed(subagent_cluster=cluster, signed_json=item.json)
            else:
                name = items_pb2.ItemType.Name(item.type)
                raise InvalidArgument(f"an agent does not take {name} items", field=f"{field}.type")
            events.append(self.state.emit(now_ms, item_deployed=deployed))
        return events

    def attach_orders(self, orders: list[order_pb2.Order], now_ms: int, available: set[str]) -> list[Event]:
        for i, order in enumerate(orders):
            if (order.workflow_path, order.workflow_version_id) not in self.state.workflows:
                raise InvalidArgument(
                    f"workflow {order.workflow_path} version {order.workflow_version_id} is not attached",
                    field=f"orders[{i}].workflow_version_id",
                )
        events = []
        for order in orders:
            if order.id in self.state.orders:
                continue  # attached already: the controller repeats itself after reconnecting
            attached = events_pb2.OrderAttached(agent=self.agent, order=order)
            events.append(self.state.emit(now_ms, order.id, order_attached=attached))
            events += self.step_order(order.id, now_ms, available)
        return events

    def detach_orders(self, order_ids: list[str], now_ms: int) -> list[Event]:
        events = []
        for order_id in order_ids:
            order = self.state.orders.get(order_id)
            if order is not None and order.attached_state == A.ATTACHED_STATE_DETACHABLE:
                events.append(self.state.emit(now_ms, order_id, order_detached=events_pb2.OrderDetached()))
        return events

    def step_order(self, order_id: str, now_ms: int, available: set[str]) -> list[Event]:
        """Runs agent-scope instructions until the order waits, processes or leaves."""
        events: list[Event] = []
        for _ in range(1000):
            order = self.state.orders.get(order_id)
            if order is None:
                return events
            decided = step(order, self.state.workflow_of(order), AgentScope(self.agent), now_ms)
            if isinstance(decided, ExecuteJob):
                try:
                    job_environment(order, self.state.workflow_of(order), decided, self.state.job_resources)
                except InvalidArgument as e:  # e.g. a variable the job's env names is missing
                    events += self._fail(order, f"job environment: {e}", now_ms)
                    continue
                limit = decided.job.process_limit or 1
                if self.state.running.get(self.state.job_key(order), 0) >= limit:
                    return events  # stays ready; woken when a process of the job ends
                subagent = self._pick_subagent(decided.job, available)
                if isinstance(subagent, InvalidArgument):  # a cluster the agent does not have
                    events += self._fail(order, str(subagent), now_ms)
                    continue
                if subagent is None:
                    return events  # stays ready; woken when a subagent comes or has room again
                processing = order_pb2.Processing(subagent_id=subagent, process_key=process_key(order))
                processing.started_at.FromMilliseconds(now_ms)
                started = events_pb2.OrderProcessingStarted(processing=processing)
                events.append(self.state.emit(now_ms, order_id, order_processing_started=started))
                return events
            if not decided:
                return events
            assert isinstance(decided, list), decided  # controller work never reaches an agent
            events += self._emit_all(order_id, decided, now_ms)
        raise RuntimeError(f"order {order_id}: no progress after 1000 steps")

    def _fail(self, order: order_pb2.Order, message: str, now_ms: int) -> list[Event]:
        """The job cannot start: it is processed with a failed outcome that says why, without a
        process; the workflow goes on from there (a try catches it, else the order fails)."""
        processed = events_pb2.OrderProcessed(outcome=failed(message))
        return [self.state.emit(now_ms, order.id, order_processed=processed)]

    def _emit_all(self, order_id: str, protos: list[Event], now_ms: int) -> list[Event]:
        """Emits what a workflow step decided (events without id and time yet), in order."""
        events = []
        for proto in protos:
            kind = proto.WhichOneof("kind")
            assert kind is not None
            events.append(self.state.emit(now_ms, order_id, **{kind: getattr(proto, kind)}))
        return events

    def _pick_subagent(self, job: workflow_pb2.Job, available: set[str]) -> str | None | InvalidArgument:
        """The subagent for the job's next process: by the job's subagent cluster (fixed priority:
        the first available in priority order; round robin: the available ones in turn), else
        any of this director's subagents in turn. None while none is available with room."""
        if not job.subagent_cluster_id:
            candidates = [s for s in self.subagent_ids if s in available and self.state.has_room(s)]
            return candidates[self.state.starts % len(candidates)] if candidates else None
        cluster = self.state.subagent_clusters.get(job.subagent_cluster_id)
        if cluster is None:
            return InvalidArgument(
                f"subagent cluster {job.subagent_cluster_id} is not deployed to agent {self.agent}",
                field="subagentClusterId",
            )
        ranked = [p.subagent_id for p in sorted(cluster.subagents, key=lambda p: -p.priority)]  # stable
        candidates = [s for s in ranked if s in available and self.state.has_room(s)]
        if not candidates:
            return None
        if cluster.scheduling_mode == workflow_pb2.SCHEDULING_MODE_ROUND_ROBIN:
            return candidates[self.state.cluster_starts.get(cluster.path, 0) % len(candidates)]
        return candidates[0]

    def wake(self, now_ms: int, available: set[str]) -> list[Event]:
        """Orders that may move now: fresh or waiting ones whose time came, ready ones waiting for
        a subagent or for a job's process limit."""
        movable = (S.ORDER_STATE_FRESH, S.ORDER_STATE_READY, S.ORDER_STATE_PROCESSED, S.ORDER_STATE_WAITING)
        events: list[Event] = []
        for order_id, order in list(self.state.orders.items()):
            if order.state in movable:
                events += self.step_order(order_id, now_ms, available)
        return events

    def next_wake_ms(self) -> int | None:
        due = []
        for o in self.state.orders.values():
            if o.state == S.ORDER_STATE_FRESH and o.HasField("scheduled_for"):
                due.append(o.scheduled_for.ToMilliseconds())
            elif o.state == S.ORDER_STATE_WAITING and o.HasField("waiting_until"):
                due.append(o.waiting_until.ToMilliseconds())
        return min(due) if due else None

    # --- subagents ---

    def subagent_welcome(
        self, subagent_id: str, welcome: subagent_pb2.Welcome, now_ms: int, available: set[str]
    ) -> list[Event]:
        """A session began. A different run id means the subagent restarted: processes it no
        longer knows are lost, and their orders get a disrupted outcome rather than a second run.
        With the same run (or the first ever session) a key it does not know was never received,
        so it stays processing and the shell sends it (`processes_to_start` minus known keys).
        """
        previous = self.state.subagent_runs.get(subagent_id)
        known = set(welcome.known_process_keys)
        events: list[Event] = []
        restarted = previous is not None and previous.run_id != welcome.run_id
        for order in list(self.state.orders.values()):
            if order.state != S.ORDER_STATE_PROCESSING or order.processing.subagent_id != subagent_id:
                continue
            key = order.processing.process_key
            if key in known:
                continue
            if restarted:
                outcome = workflow_pb2.Outcome(
                    kind=workflow_pb2.OUTCOME_KIND_DISRUPTED,
                    message=f"subagent {subagent_id} restarted; the process was lost",
                )
                processed = events_pb2.OrderProcessed(outcome=outcome)
                events.append(self.state.emit(now_ms, order.id, order_processed=processed))
                events += self.step_order(order.id, now_ms, available)
        if previous is None or restarted:
            observed = events_pb2.SubagentMessagesObserved(
                subagent_id=subagent_id,
                run_id=welcome.run_id,
                until_seq=0,
                process_limit=welcome.process_limit,
                director_timeout_seconds=welcome.director_timeout_seconds,
            )
            events.append(self.state.emit(now_ms, subagent_messages_observed=observed))
        return events

    def subagent_unreachable(
        self, subagent_id: str, for_s: float, now_ms: int, available: set[str]
    ) -> list[Event]:
        """The subagent has been unreachable so long that it has killed its processes (its own
        watchdog, after its director timeout) or is down: their jobs end disrupted, and the
        workflow decides (a retry runs the job again, elsewhere if need be). The shell calls this
        once the subagent's director timeout and the heartbeat silences on both sides passed."""
        events: list[Event] = []
        for order in list(self.state.orders.values()):
            if order.state != S.ORDER_STATE_PROCESSING or order.processing.subagent_id != subagent_id:
                continue
            outcome = workflow_pb2.Outcome(
                kind=workflow_pb2.OUTCOME_KIND_DISRUPTED,
                message=f"subagent {subagent_id} unreachable for {for_s:.0f} s; its process was killed",
            )
            events.append(
                self.state.emit(now_ms, order.id, order_processed=events_pb2.OrderProcessed(outcome=outcome))
            )
            events += self.step_order(order.id, now_ms, available)
        return events

    def subagent_messages(
        self,
        subagent_id: str,
        run_id: str,
        messages: list[subagent_pb2.SessionResponse],
        now_ms: int,
        available: set[str],
    ) -> list[Event]:
        """Applies each numbered message once (seq above what the journal has observed)."""
        run = self.state.subagent_runs.get(subagent_id)
        observed = run.observed_seq if run is not None and run.run_id == run_id else 0
        events: list[Event] = []
        ended = False
        by_key = {
            o.processing.process_key: o.id
            for o in self.state.orders.values()
            if o.state == S.ORDER_STATE_PROCESSING and o.processing.subagent_id == subagent_id
        }
        for message in messages:
            if message.seq <= observed:
                continue
            observed = message.seq
            kind = message.WhichOneof("kind")
            if kind == "process_output":
                out = message.process_output
                order_id = by_key.get(out.process_key)
                if order_id is not None and out.chunk:
                    stream = (
                        events_pb2.STD_STREAM_STDERR
                        if out.stream == subagent_pb2.OUTPUT_STREAM_STDERR
                        else events_pb2.STD_STREAM_STDOUT
                    )
                    written = events_pb2.OrderStdWritten(stream=stream, chunk=out.chunk)
                    events.append(self.state.emit(now_ms, order_id, order_std_written=written))
            elif kind == "process_exited":
                exited = message.process_exited
                order_id = by_key.pop(exited.process_key, None)
                if order_id is None:
                    continue
                order = self.state.orders[order_id]
                job = self.state.job_of(order)
                outcome = outcome_of(exited, job, order.processing.stderr_written)
                processed = events_pb2.OrderProcessed(outcome=outcome)
                events.append(self.state.emit(now_ms, order_id, order_processed=processed))
                events += self.step_order(order_id, now_ms, available)
                ended = True
        if run is None or run.run_id != run_id or observed > run.observed_seq:
            mark = events_pb2.SubagentMessagesObserved(
                subagent_id=subagent_id, run_id=run_id, until_seq=observed
            )
            events.append(self.state.emit(now_ms, subagent_messages_observed=mark))
        if ended:
            events += self.wake(now_ms, available)  # orders held back by a job's process limit
        return events

    def processes_to_start(self, subagent_id: str, committed_id: int) -> list[ProcessSpec]:
        """Job executions on this subagent whose start is committed (the shell sends each once
        per session)."""
        specs = []
        for order in self.state.orders.values():
            if (
                order.state == S.ORDER_STATE_PROCESSING
                and order.processing.subagent_id == subagent_id
                and self.state.order_event_id[order.id] <= committed_id
            ):
                specs.append(self.process_spec(order))
        return specs

    def processing_keys(self, subagent_id: str) -> set[str]:
        """Keys of every execution on this subagent, committed or not."""
        return {
            o.processing.process_key
            for o in self.state.orders.values()
            if o.state == S.ORDER_STATE_PROCESSING and o.processing.subagent_id == subagent_id
        }

    def process_spec(self, order: order_pb2.Order) -> ProcessSpec:
        workflow = self.state.workflow_of(order)
        instruction = positions.instruction_at(workflow, order.position)
        assert instruction is not None and instruction.WhichOneof("kind") == "execute"
        name, job = model.job_of(workflow, instruction.execute)
        run = ExecuteJob(name, job, instruction.execute)
        # Checked before the job started (step_order), and the order's variables have not changed.
        env = {
            "OSTINATO_ORDER_ID": order.id,
            "JS7_ORDER_ID": order.id,  # what JS7 jobs read
            "OSTINATO_WORKFLOW_PATH": order.workflow_path,
            "OSTINATO_JOB_NAME": name,
            "OSTINATO_POSITION": positions.text(order.position),
            "OSTINATO_SUBAGENT_ID": order.processing.subagent_id,
            **job_environment(order, workflow, run, self.state.job_resources),
        }
        return ProcessSpec(
            process_key=order.processing.process_key,
            order_id=order.id,
            job_name=name or f"@{positions.text(order.position)}",
            subagent_id=order.processing.subagent_id,
            executable=job.executable,
            env=env,
            timeout_s=job.timeout.ToNanoseconds() / 1e9,
            sigkill_delay_s=job.sigkill_delay.ToNanoseconds() / 1e9,
            trace_parent=order.trace_parent,
            workflow_path=order.workflow_path,
            workflow_version_id=order.workflow_version_id,
            # A copy: the order's own position moves on when the job has ended.
            position=order_pb2.Position(nr=order.position.nr, branch_path=order.position.branch_path),
            job_resource_paths=(*job.job_resource_paths, *workflow.job_resource_paths),
        )

    def command_orders(
        self, commands: list[commands_pb2.OrderCommand], now_ms: int, available: set[str]
    ) -> tuple[list[Event], list[commands_pb2.OrderCommandResult]]:
        """Commands the controller forwards for orders here. Repeating one changes nothing:
        marks are replaced, a kill is asked for once."""
        events: list[Event] = []
        results = []
        for command in commands:
            order = self.state.orders.get(command.order_id)
            if order is None:
                results.append(
                    commands_pb2.OrderCommandResult(order_id=command.order_id, error="not at this agent")
                )
                continue
            events += self._command(order, command, now_ms, available)
            results.append(commands_pb2.OrderCommandResult(order_id=command.order_id))
        return events, results

    def _command(
        self, order: order_pb2.Order, command: commands_pb2.OrderCommand, now_ms: int, available: set[str]
    ) -> list[Event]:
        kind = command.WhichOneof("kind")
        events: list[Event] = []
        if kind in ("cancel", "suspend"):
            kill = command.cancel.kill if kind == "cancel" else command.suspend.kill
            mark = (
                order_pb2.OrderMark(cancel=order_pb2.CancelMark(kill=kill))
                if kind == "cancel"
                else order_pb2.OrderMark(suspend=order_pb2.SuspendMark(kill=kill))
            )
            if mark_of(order, kind) != mark:
                marks = [m for m in order.marks if m.WhichOneof("kind") != kind] + [mark]
                events.append(
                    self.state.emit(now_ms, order.id, order_marked=events_pb2.OrderMarked(marks=marks))
                )
            if kill and order.state == S.ORDER_STATE_PROCESSING and not order.processing.kill_requested:
                events.append(
                    self.state.emit(now_ms, order.id, order_kill_requested=events_pb2.OrderKillRequested())
                )
        elif kind == "resume":
            if order.state in (S.ORDER_STATE_SUSPENDED, S.ORDER_STATE_FAILED):
                resumed = events_pb2.OrderResumed(variables=command.resume.variables)
                if command.resume.HasField("position"):
                    resumed.position.CopyFrom(command.resume.position)
                events.append(self.state.emit(now_ms, order.id, order_resumed=resumed))
            elif mark_of(order, "suspend") is not None:  # not suspended yet: the suspension is called off
                marks = [m for m in order.marks if m.WhichOneof("kind") not in ("suspend", "resume")]
                events.append(
                    self.state.emit(now_ms, order.id, order_marked=events_pb2.OrderMarked(marks=marks))
                )
        return events + self.step_order(order.id, now_ms, available)

    def processes_to_kill(self, subagent_id: str, committed_id: int) -> list[str]:
        return [
            o.processing.process_key
            for o in self.state.orders.values()
            if o.state == S.ORDER_STATE_PROCESSING
            and o.processing.subagent_id == subagent_id
            and o.processing.kill_requested
            and self.state.order_event_id[o.id] <= committed_id
        ]

    def orders_detachable(self, committed_id: int) -> list[str]:
        return [
            o.id
            for o in self.state.orders.values()
            if o.attached_state == A.ATTACHED_STATE_DETACHABLE
            and self.state.order_event_id[o.id] <= committed_id
        ]


def process_key(order: order_pb2.Order) -> str:
    """Unique per job execution: the order, its position and how many outcomes it has so far."""
    return f"{order.id}@{positions.text(order.position)}#{len(order.historic_outcomes)}"


def _job_at(workflow: workflow_pb2.Workflow, order: order_pb2.Order) -> workflow_pb2.Job:
    instruction = positions.instruction_at(workflow, order.position)
    assert instruction is not None
    return model.job_of(workflow, instruction.execute)[1]


def outcome_of(
    exited: subagent_pb2.ProcessExited, job: workflow_pb2.Job, stderr_written: bool = False
) -> workflow_pb2.Outcome:
    success_codes = set(job.success_return_codes) or {0}
    if exited.signal:
        reason = "timed out" if exited.timed_out else f"killed by signal {exited.signal}"
        message = f"{reason}; {exited.message}" if exited.message else reason
        outcome = workflow_pb2.Outcome(
            kind=workflow_pb2.OUTCOME_KIND_KILLED,
            signal=exited.signal,
            return_code=exited.return_code,
            message=message,
        )
    elif exited.return_code not in success_codes or exited.timed_out or exited.not_started:
        message = exited.message or f"return code {exited.return_code}"
        outcome = workflow_pb2.Outcome(kind=FAILED, return_code=exited.return_code, message=message)
    elif job.fail_on_stderr and stderr_written:
        outcome = workflow_pb2.Outcome(
            kind=FAILED, return_code=exited.return_code, message="the job wrote to stderr"
        )
    else:
        outcome = workflow_pb2.Outcome(kind=SUCCEEDED, return_code=exited.return_code)
    for k, v in exited.returned_values.items():
        outcome.named_values[k].string = v
    return outcome


def _parse_item(item: items_pb2.SignedItem, into: model.M, field: str) -> model.M:
    try:
        return model.parse_item(item, into)
    except InvalidArgument as e:
        raise e.within(field) from None
