"""The director's deterministic core: orders attached to this agent, and the job executions it
hands to subagents.

One way in: `handle(stimulus, now_ms)` with one of the frozen stimuli below returns the events it
emitted (already applied to the working state; the journal must commit them before anything acts
on them). One way out: `subagent_work(subagent, committed_id)`, the starts and kills a subagent's
driver is to send, taken from queues the core fills as it emits events, each once and only once
the event that justifies it is committed.

Nothing here scans all orders: the core keeps indexes beside the state (timers, executions per
subagent, orders waiting for a job's process slot) and updates them with every event it emits, so
the cost of a stimulus does not grow with the number of orders held. The indexes are rebuilt from
the state when a node becomes active; the committed copy of the state (replayed on followers)
carries none of them.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gen.ostinato.common.v1 import commands_pb2, events_pb2, items_pb2, order_pb2, workflow_pb2
from ostinato.errors import InvalidArgument
from ostinato.process import Exited, Message, Output, Stream
from ostinato.workflow import model, positions
from ostinato.workflow.events import LEAVING_AGENT_KINDS
from ostinato.workflow.holder import OrderHolder
from ostinato.workflow.model import item_digest
from ostinato.workflow.orders import mark_of
from ostinato.workflow.step import AgentScope, ExecuteJob, failed, job_environment, step

A = order_pb2.AttachedState
S = order_pb2.OrderState
Event = events_pb2.Event
SUCCEEDED = workflow_pb2.OUTCOME_KIND_SUCCEEDED
FAILED = workflow_pb2.OUTCOME_KIND_FAILED


# --- stimuli: everything that can happen to a director ---


@dataclass(frozen=True, slots=True)
class AttachItems:
    """Workflows, job resources and subagent clusters the controller hands over."""

    items: tuple[items_pb2.SignedItem, ...]


@dataclass(frozen=True, slots=True)
class AttachOrders:
    orders: tuple[order_pb2.Order, ...]


@dataclass(frozen=True, slots=True)
class DetachOrders:
    order_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CommandOrders:
    commands: tuple[commands_pb2.OrderCommand, ...]


@dataclass(frozen=True, slots=True)
class ReleaseEvents:
    """The controller journaled the agent's events up to `until_id`."""

    until_id: int


@dataclass(frozen=True, slots=True)
class SubagentWelcomed:
    """A session with the subagent began; `known_process_keys` are the executions of its run that
    it knows (running, or ended with results it still holds)."""

    subagent_id: str
    run_id: str
    known_process_keys: frozenset[str] = frozenset()
    process_limit: int = 0
    director_timeout_s: float = 0.0


@dataclass(frozen=True, slots=True)
class SubagentMessages:
    """Numbered messages of a subagent run, `(seq, message)` in seq order."""

    subagent_id: str
    run_id: str
    messages: tuple[tuple[int, Message], ...]


@dataclass(frozen=True, slots=True)
class SubagentLost:
    """The session with the subagent ended; its processes may still run there."""

    subagent_id: str


@dataclass(frozen=True, slots=True)
class SubagentUnreachable:
    """The subagent has been unreachable so long (its director timeout and the heartbeat silences
    on both sides) that it has killed its processes or is down."""

    subagent_id: str
    for_s: float


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: orders whose time came move on."""


Stimulus = (
    AttachItems
    | AttachOrders
    | DetachOrders
    | CommandOrders
    | ReleaseEvents
    | SubagentWelcomed
    | SubagentMessages
    | SubagentLost
    | SubagentUnreachable
    | Tick
)


# --- work: what the shell is to do once the events behind it are committed ---


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class SubagentWork:
    starts: tuple[ProcessSpec, ...] = ()
    kills: tuple[str, ...] = ()  # process keys

    def __bool__(self) -> bool:
        return bool(self.starts or self.kills)


# --- state ---


@dataclass
class SubagentRun:
    run_id: str
    observed_seq: int
    process_limit: int = 0  # 0: none
    director_timeout_s: float = 0.0


class DirectorState(OrderHolder):
    leaving_kinds = LEAVING_AGENT_KINDS
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


# --- indexes of the working state ---


@dataclass
class _Index:
    """What the core finds without scanning: kept in step with every event the core emits."""

    # (due ms, order id, the order's event id then): fresh orders scheduled for later, waiting ones.
    # An entry is stale once the order has a newer event (a newer entry was pushed if still due).
    timers: list[tuple[int, str, int]] = field(default_factory=list)
    # Executions per subagent: process key -> order id.
    processing: dict[str, dict[str, str]] = field(default_factory=dict)
    processing_at: dict[str, tuple[str, str]] = field(default_factory=dict)  # order -> (subagent, key)
    # Orders ready at a job that had no process slot or subagent: FIFO per job, (order, event id).
    blocked: dict[tuple[str, str], deque[tuple[str, int]]] = field(default_factory=dict)
    # Work not yet taken by the subagents' drivers: (event id, order id, process key), per subagent.
    starts: dict[str, deque[tuple[int, str, str]]] = field(default_factory=dict)
    kills: dict[str, deque[tuple[int, str, str]]] = field(default_factory=dict)
    # Environments computed when a job was found able to start, for its start (not computed twice).
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    # Orders that may move without a stimulus of their own: on a node that just became active,
    # those ready or processed when the previous node stopped (stepped before any queue).
    restep: list[str] = field(default_factory=list)


class DirectorCore:
    def __init__(self, state: DirectorState, agent: str, subagent_ids: Iterable[str] = ()) -> None:
        self.state = state
        self.agent = agent
        self.subagent_ids = list(subagent_ids)  # in configured order
        # Subagents with a live session: jobs go only there. Not journaled: the shell's knowledge.
        self.available: set[str] = set()
        self._index = _Index()
        for order_id, order in state.orders.items():
            self._note_order(order_id, None)
            attached = order.attached_state == A.ATTACHED_STATE_ATTACHED
            if attached and order.state in _MAY_MOVE and _due_ms(order) is None:
                self._index.restep.append(order_id)

    # --- the one way in ---

    def handle(self, stimulus: Stimulus, now_ms: int) -> list[Event]:
        if isinstance(stimulus, SubagentMessages):
            return self._subagent_messages(stimulus, now_ms)
        if isinstance(stimulus, AttachOrders):
            return self._attach_orders(stimulus.orders, now_ms)
        if isinstance(stimulus, ReleaseEvents):
            return self.state.release(stimulus.until_id, now_ms)
        if isinstance(stimulus, DetachOrders):
            return self._detach_orders(stimulus.order_ids, now_ms)
        if isinstance(stimulus, Tick):
            return self._tick(now_ms)
        if isinstance(stimulus, AttachItems):
            return self._attach_items(stimulus.items, now_ms)
        if isinstance(stimulus, CommandOrders):
            return self._command_orders(stimulus.commands, now_ms)
        if isinstance(stimulus, SubagentWelcomed):
            return self._subagent_welcomed(stimulus, now_ms)
        if isinstance(stimulus, SubagentLost):
            self.available.discard(stimulus.subagent_id)
            return []
        if isinstance(stimulus, SubagentUnreachable):
            return self._subagent_unreachable(stimulus, now_ms)
        raise TypeError(f"not a director stimulus: {stimulus!r}")

    def command_results(self, stimulus: CommandOrders) -> list[commands_pb2.OrderCommandResult]:
        """The answer to CommandOrders: a command for an order not here is refused, each alone."""
        return [
            commands_pb2.OrderCommandResult(
                order_id=c.order_id, error="" if c.order_id in self.state.orders else "not at this agent"
            )
            for c in stimulus.commands
        ]

    # --- the one way out ---

    def subagent_work(self, subagent_id: str, committed_id: int) -> SubagentWork:
        """Starts and kills for the subagent whose events are committed, each handed out once
        (after a new session, `subagent_session` puts back what the subagent does not know)."""
        starts = []
        queue = self._index.starts.get(subagent_id)
        while queue and queue[0][0] <= committed_id:
            _, order_id, key = queue.popleft()
            if self._processing_key(order_id) == key:
                starts.append(self._process_spec(self.state.orders[order_id]))
        kills = []
        queue = self._index.kills.get(subagent_id)
        while queue and queue[0][0] <= committed_id:
            _, order_id, key = queue.popleft()
            if self._processing_key(order_id) == key:
                kills.append(key)
        return SubagentWork(tuple(starts), tuple(kills))

    def subagent_session(self, subagent_id: str, known_process_keys: frozenset[str]) -> None:
        """A new session: what was handed out before may not have arrived. Every execution on the
        subagent it does not know is to be started (once the order's events are committed), and
        every kill asked for is to be sent again."""
        starts: list[tuple[int, str, str]] = []
        kills: list[tuple[int, str, str]] = []
        for key, order_id in self._index.processing.get(subagent_id, {}).items():
            order = self.state.orders[order_id]
            event_id = self.state.order_event_id[order_id]
            if key not in known_process_keys:
                starts.append((event_id, order_id, key))
            if order.processing.kill_requested:
                kills.append((event_id, order_id, key))
        self._index.starts[subagent_id] = deque(sorted(starts))
        self._index.kills[subagent_id] = deque(sorted(kills))

    def processing_keys(self, subagent_id: str) -> set[str]:
        """Keys of every execution on this subagent, committed or not."""
        return set(self._index.processing.get(subagent_id, {}))

    def next_wake_ms(self) -> int | None:
        timers = self._index.timers
        while timers and self.state.order_event_id.get(timers[0][1]) != timers[0][2]:
            heapq.heappop(timers)  # stale
        return timers[0][0] if timers else None

    # --- stimuli ---

    def _attach_items(self, items: tuple[items_pb2.SignedItem, ...], now_ms: int) -> list[Event]:
        """Each item is journaled once per version; the controller learns from the event that it
        arrived."""
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
            events.append(self._emit(now_ms, item_deployed=deployed))
        return events

    def _attach_orders(self, orders: tuple[order_pb2.Order, ...], now_ms: int) -> list[Event]:
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
            events.append(self._emit(now_ms, order.id, order_attached=attached))
            events += self._step(order.id, now_ms)
        return events

    def _detach_orders(self, order_ids: tuple[str, ...], now_ms: int) -> list[Event]:
        events = []
        for order_id in order_ids:
            order = self.state.orders.get(order_id)
            if order is not None and order.attached_state == A.ATTACHED_STATE_DETACHABLE:
                events.append(self._emit(now_ms, order_id, order_detached=events_pb2.OrderDetached()))
        return events

    def _tick(self, now_ms: int) -> list[Event]:
        """Orders whose time came (scheduled, sleeping, retry delays, cycles), then orders waiting
        for a process slot (a safety net: slots and subagents free up through other stimuli)."""
        events: list[Event] = []
        timers = self._index.timers
        while timers and timers[0][0] <= now_ms:
            _, order_id, event_id = heapq.heappop(timers)
            if self.state.order_event_id.get(order_id) == event_id:
                events += self._step(order_id, now_ms)
        return events + self._unblock(now_ms)

    def _command_orders(self, commands: tuple[commands_pb2.OrderCommand, ...], now_ms: int) -> list[Event]:
        """Commands the controller forwards for orders here. Repeating one changes nothing:
        marks are replaced, a kill is asked for once."""
        events: list[Event] = []
        for command in commands:
            order = self.state.orders.get(command.order_id)
            if order is not None:
                events += self._command(order, command, now_ms)
        return events

    def _command(
        self, order: order_pb2.Order, command: commands_pb2.OrderCommand, now_ms: int
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
                events.append(self._emit(now_ms, order.id, order_marked=events_pb2.OrderMarked(marks=marks)))
            if kill and order.state == S.ORDER_STATE_PROCESSING and not order.processing.kill_requested:
                events.append(
                    self._emit(now_ms, order.id, order_kill_requested=events_pb2.OrderKillRequested())
                )
        elif kind == "resume":
            if order.state in (S.ORDER_STATE_SUSPENDED, S.ORDER_STATE_FAILED):
                resumed = events_pb2.OrderResumed(variables=command.resume.variables)
                if command.resume.HasField("position"):
                    resumed.position.CopyFrom(command.resume.position)
                events.append(self._emit(now_ms, order.id, order_resumed=resumed))
            elif mark_of(order, "suspend") is not None:  # not suspended yet: the suspension is called off
                marks = [m for m in order.marks if m.WhichOneof("kind") not in ("suspend", "resume")]
                events.append(self._emit(now_ms, order.id, order_marked=events_pb2.OrderMarked(marks=marks)))
        elif kind == "transfer":
            events.append(self._transfer(order, command.transfer.workflow_version_id, now_ms))
        return events + self._step(order.id, now_ms)

    def _transfer(self, order: order_pb2.Order, version: str, now_ms: int) -> Event:
        """Moves the order to the version if it has not started; else (or without that version
        here, which the controller sends first) its marks without the transfer tell the controller
        that nothing moved: either way the controller's mark goes."""
        if order.state == S.ORDER_STATE_FRESH and (order.workflow_path, version) in self.state.workflows:
            moved = events_pb2.OrderTransferred(workflow_version_id=version)
            return self._emit(now_ms, order.id, order_transferred=moved)
        marks = [m for m in order.marks if m.WhichOneof("kind") != "transfer"]
        return self._emit(now_ms, order.id, order_marked=events_pb2.OrderMarked(marks=marks))

    def _subagent_welcomed(self, welcome: SubagentWelcomed, now_ms: int) -> list[Event]:
        """A session began. A different run id means the subagent restarted: processes it no
        longer knows are lost, and their orders get a disrupted outcome rather than a second run.
        With the same run (or the first ever session) a key it does not know was never received,
        so it stays processing and is sent again (see `subagent_session`)."""
        subagent_id = welcome.subagent_id
        previous = self.state.subagent_runs.get(subagent_id)
        restarted = previous is not None and previous.run_id != welcome.run_id
        events: list[Event] = []
        if restarted:
            lost = [
                order_id
                for key, order_id in self._index.processing.get(subagent_id, {}).items()
                if key not in welcome.known_process_keys
            ]
            message = f"subagent {subagent_id} restarted; the process was lost"
            events += self._disrupt(lost, message, now_ms)
        if previous is None or restarted:
            observed = events_pb2.SubagentMessagesObserved(
                subagent_id=subagent_id,
                run_id=welcome.run_id,
                until_seq=0,
                process_limit=welcome.process_limit,
                director_timeout_seconds=welcome.director_timeout_s,
            )
            events.append(self._emit(now_ms, subagent_messages_observed=observed))
        self.available.add(subagent_id)
        self.subagent_session(subagent_id, welcome.known_process_keys)
        return events + self._unblock(now_ms)

    def _subagent_unreachable(self, lost: SubagentUnreachable, now_ms: int) -> list[Event]:
        """Its jobs end disrupted, and the workflow decides (a retry runs the job again, elsewhere
        if need be)."""
        self.available.discard(lost.subagent_id)
        order_ids = list(self._index.processing.get(lost.subagent_id, {}).values())
        message = f"subagent {lost.subagent_id} unreachable for {lost.for_s:.0f} s; its process was killed"
        return self._disrupt(order_ids, message, now_ms) + self._unblock(now_ms)

    def _disrupt(self, order_ids: list[str], message: str, now_ms: int) -> list[Event]:
        events: list[Event] = []
        outcome = workflow_pb2.Outcome(kind=workflow_pb2.OUTCOME_KIND_DISRUPTED, message=message)
        for order_id in order_ids:
            processed = events_pb2.OrderProcessed(outcome=outcome)
            events.append(self._emit(now_ms, order_id, order_processed=processed))
            events += self._step(order_id, now_ms)
        return events

    def _subagent_messages(self, stimulus: SubagentMessages, now_ms: int) -> list[Event]:
        """Applies each numbered message once (seq above what the journal has observed)."""
        subagent_id, run_id = stimulus.subagent_id, stimulus.run_id
        run = self.state.subagent_runs.get(subagent_id)
        observed = run.observed_seq if run is not None and run.run_id == run_id else 0
        events: list[Event] = []
        ended = False
        by_key = self._index.processing.get(subagent_id, {})
        for seq, message in stimulus.messages:
            if seq <= observed:
                continue
            observed = seq
            if isinstance(message, Output):
                order_id = by_key.get(message.process_key)
                if order_id is not None and message.chunk:
                    stream = (
                        events_pb2.STD_STREAM_STDERR
                        if message.stream == Stream.STDERR
                        else events_pb2.STD_STREAM_STDOUT
                    )
                    written = events_pb2.OrderStdWritten(stream=stream, chunk=message.chunk)
                    events.append(self._emit(now_ms, order_id, order_std_written=written))
            elif isinstance(message, Exited):
                order_id = by_key.get(message.process_key)
                if order_id is None:
                    continue
                order = self.state.orders[order_id]
                outcome = outcome_of(message, self.state.job_of(order), order.processing.stderr_written)
                events.append(
                    self._emit(now_ms, order_id, order_processed=events_pb2.OrderProcessed(outcome=outcome))
                )
                events += self._step(order_id, now_ms)
                ended = True
        # Recorded with what the messages changed. Messages that changed nothing (a process
        # started: its exit is what counts) cost no journal entry: acknowledging them lets the
        # subagent drop them, and a new node skips past them by seq all the same.
        if run is None or run.run_id != run_id or (events and observed > run.observed_seq):
            mark = events_pb2.SubagentMessagesObserved(
                subagent_id=subagent_id, run_id=run_id, until_seq=observed
            )
            events.append(self._emit(now_ms, subagent_messages_observed=mark))
        if ended:
            events += self._unblock(now_ms)  # orders held back by a job's or subagent's process limit
        return events

    # --- moving orders ---

    def _step(self, order_id: str, now_ms: int, queued: bool = False) -> list[Event]:
        """Runs agent-scope instructions until the order waits, processes or leaves. An order that
        cannot start its job now joins its job's queue (`queued`: it is that queue's head)."""
        events: list[Event] = []
        for _ in range(1000):
            order = self.state.orders.get(order_id)
            if order is None:
                return events
            workflow = self.state.workflow_of(order)
            decided = step(order, workflow, AgentScope(self.agent), now_ms)
            if isinstance(decided, ExecuteJob):
                job_key = self.state.job_key(order)
                subagent: str | None | InvalidArgument = None
                if self.state.running.get(job_key, 0) < (decided.job.process_limit or 1):
                    subagent = self._pick_subagent(decided.job)
                if isinstance(subagent, InvalidArgument):  # a cluster the agent does not have
                    events.append(self._cannot_start(order, str(subagent), now_ms))
                    continue
                if subagent is None:  # stays ready; retried when a slot or a subagent frees up
                    if not queued:
                        entry = (order_id, self.state.order_event_id[order_id])
                        self._index.blocked.setdefault(job_key, deque()).append(entry)
                    return events
                # Only now, for a job that can start: expressions cost, and a queue may be long.
                try:
                    env = job_environment(order, workflow, decided, self.state.job_resources)
                except InvalidArgument as e:  # e.g. a variable the job's env names is missing
                    events.append(self._cannot_start(order, f"job environment: {e}", now_ms))
                    continue
                key = process_key(order)
                self._index.env[key] = env
                processing = order_pb2.Processing(subagent_id=subagent, process_key=key)
                processing.started_at.FromMilliseconds(now_ms)
                started = events_pb2.OrderProcessingStarted(processing=processing)
                events.append(self._emit(now_ms, order_id, order_processing_started=started))
                return events
            if not decided:
                return events
            assert isinstance(decided, list), decided  # controller work never reaches an agent
            for proto in decided:
                kind = proto.WhichOneof("kind")
                assert kind is not None
                events.append(self._emit(now_ms, order_id, **{kind: getattr(proto, kind)}))
        raise RuntimeError(f"order {order_id}: no progress after 1000 steps")

    def _unblock(self, now_ms: int) -> list[Event]:
        """Starts queued orders, first come first served per job, while slots and subagents allow.
        Orders of one job wait for the same things, so a head that still cannot start holds back
        the rest of its queue: the cost is the number of jobs, not of orders waiting."""
        events: list[Event] = []
        restep, self._index.restep = self._index.restep, []
        for order_id in restep:
            events += self._step(order_id, now_ms)
        for job_key, queue in list(self._index.blocked.items()):
            while queue:
                order_id, event_id = queue[0]
                if self.state.order_event_id.get(order_id) != event_id:
                    queue.popleft()  # moved on meanwhile (cancelled, suspended, ...)
                    continue
                events += self._step(order_id, now_ms, queued=True)
                if self.state.order_event_id.get(order_id) == event_id:
                    break  # still waiting
                queue.popleft()
            if not queue:
                del self._index.blocked[job_key]
        return events

    def _cannot_start(self, order: order_pb2.Order, message: str, now_ms: int) -> Event:
        """The job cannot start: it is processed with a failed outcome that says why, without a
        process; the workflow goes on from there (a try catches it, else the order fails)."""
        processed = events_pb2.OrderProcessed(outcome=failed(message))
        return self._emit(now_ms, order.id, order_processed=processed)

    def _pick_subagent(self, job: workflow_pb2.Job) -> str | None | InvalidArgument:
        """The subagent for the job's next process: by the job's subagent cluster (fixed priority:
        the first available in priority order; round robin: the available ones in turn), else
        any of this director's subagents in turn. None while none is available with room."""
        available = self.available
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

    # --- events and indexes ---

    def _emit(self, now_ms: int, order_id: str = "", **kind: Any) -> Event:
        event = self.state.emit(now_ms, order_id, **kind)
        if order_id:
            self._note_order(order_id, event)
        return event

    def _note_order(self, order_id: str, event: Event | None) -> None:
        """Brings the indexes in step with the order after `event` (None: as the state has it)."""
        index = self._index
        order = self.state.orders.get(order_id)
        was = index.processing_at.pop(order_id, None)
        if was is not None:
            index.processing[was[0]].pop(was[1], None)
            if order is None or order.processing.process_key != was[1]:
                index.env.pop(was[1], None)  # never started (disrupted before it was handed out)
        if order is None:
            return
        event_id = self.state.order_event_id[order_id]
        if order.state == S.ORDER_STATE_PROCESSING:
            subagent, key = order.processing.subagent_id, order.processing.process_key
            index.processing.setdefault(subagent, {})[key] = order_id
            index.processing_at[order_id] = (subagent, key)
            kind = event.WhichOneof("kind") if event is not None else None
            if kind == "order_processing_started":
                index.starts.setdefault(subagent, deque()).append((event_id, order_id, key))
            elif kind == "order_kill_requested":
                index.kills.setdefault(subagent, deque()).append((event_id, order_id, key))
        elif order.attached_state == A.ATTACHED_STATE_ATTACHED:
            due = _due_ms(order)
            if due is not None:
                heapq.heappush(index.timers, (due, order_id, event_id))

    def _processing_key(self, order_id: str) -> str | None:
        at = self._index.processing_at.get(order_id)
        return at[1] if at is not None else None

    def _process_spec(self, order: order_pb2.Order) -> ProcessSpec:
        workflow = self.state.workflow_of(order)
        instruction = positions.instruction_at(workflow, order.position)
        assert instruction is not None and instruction.WhichOneof("kind") == "execute"
        name, job = model.job_of(workflow, instruction.execute)
        key = order.processing.process_key
        env = self._index.env.pop(key, None)
        if env is None:  # started by an earlier active node: computed again, as it was then
            env = job_environment(
                order, workflow, ExecuteJob(name, job, instruction.execute), self.state.job_resources
            )
        return ProcessSpec(
            process_key=key,
            order_id=order.id,
            job_name=name or f"@{positions.text(order.position)}",
            subagent_id=order.processing.subagent_id,
            executable=job.executable,
            env={
                "OSTINATO_ORDER_ID": order.id,
                "JS7_ORDER_ID": order.id,  # what JS7 jobs read
                "OSTINATO_WORKFLOW_PATH": order.workflow_path,
                "OSTINATO_JOB_NAME": name,
                "OSTINATO_POSITION": positions.text(order.position),
                "OSTINATO_SUBAGENT_ID": order.processing.subagent_id,
                **env,
            },
            timeout_s=job.timeout.ToNanoseconds() / 1e9,
            sigkill_delay_s=job.sigkill_delay.ToNanoseconds() / 1e9,
            trace_parent=order.trace_parent,
            workflow_path=order.workflow_path,
            workflow_version_id=order.workflow_version_id,
            # A copy: the order's own position moves on when the job has ended.
            position=order_pb2.Position(nr=order.position.nr, branch_path=order.position.branch_path),
            job_resource_paths=(*job.job_resource_paths, *workflow.job_resource_paths),
        )


_MAY_MOVE = frozenset({S.ORDER_STATE_FRESH, S.ORDER_STATE_READY, S.ORDER_STATE_PROCESSED})


def _due_ms(order: order_pb2.Order) -> int | None:
    if order.state == S.ORDER_STATE_FRESH and order.HasField("scheduled_for"):
        return int(order.scheduled_for.ToMilliseconds())
    if order.state == S.ORDER_STATE_WAITING and order.HasField("waiting_until"):
        return int(order.waiting_until.ToMilliseconds())
    return None


def process_key(order: order_pb2.Order) -> str:
    """Unique per job execution: the order, its position and how many outcomes it has so far."""
    return f"{order.id}@{positions.text(order.position)}#{len(order.historic_outcomes)}"


def _job_at(workflow: workflow_pb2.Workflow, order: order_pb2.Order) -> workflow_pb2.Job:
    instruction = positions.instruction_at(workflow, order.position)
    assert instruction is not None
    return model.job_of(workflow, instruction.execute)[1]


def outcome_of(exited: Exited, job: workflow_pb2.Job, stderr_written: bool = False) -> workflow_pb2.Outcome:
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
    elif exited.returned_values_refused:
        outcome = workflow_pb2.Outcome(
            kind=FAILED, return_code=exited.return_code, message=exited.returned_values_refused
        )
    elif job.fail_on_stderr and stderr_written:
        outcome = workflow_pb2.Outcome(
            kind=FAILED, return_code=exited.return_code, message="the job wrote to stderr"
        )
    else:
        outcome = workflow_pb2.Outcome(kind=SUCCEEDED, return_code=exited.return_code)
    for k, v in exited.returned_values:
        outcome.named_values[k].string = v
    return outcome


def _parse_item(item: items_pb2.SignedItem, into: model.M, field: str) -> model.M:
    try:
        return model.parse_item(item, into)
    except InvalidArgument as e:
        raise e.within(field) from None
