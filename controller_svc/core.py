"""The controller's deterministic core: its state and the decisions that change it.

One way in: `handle(stimulus, now_ms)` with one of the frozen stimuli below returns the events it
emitted (already applied to this working state; the journal must commit them before anything acts
on them). One way out: `agent_work(agent, committed_id)`, what an agent's driver is to send (orders
to attach, commands, orders to detach), taken from a queue per agent that the core fills as it
emits events, each piece once and only once the event that calls for it is committed.

Nothing here scans all orders: timers and the pending work per agent are indexes kept in step with
every event the core emits, so a stimulus costs the same with ten or a hundred thousand orders
held. They are rebuilt from the state when a node becomes active.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gen.ostinato.common.v1 import commands_pb2, events_pb2, items_pb2, order_pb2, values_pb2, workflow_pb2
from ostinato.errors import InvalidArgument, NotFound, StaleEpoch
from ostinato.workflow import expressions, model
from ostinato.workflow.events import MIRRORED_KINDS
from ostinato.workflow.holder import OrderHolder
from ostinato.workflow.model import item_digest
from ostinato.workflow.orders import TERMINAL_STATES, mark_of
from ostinato.workflow.positions import enter, instruction_at, next_position, text
from ostinato.workflow.step import ControllerScope, ControllerWork, OrderScope, fail, failed, step

A = order_pb2.AttachedState
S = order_pb2.OrderState
Event = events_pb2.Event

# Ids of orders that left are remembered this long: AddOrders repeated by a client that lost the
# answer (a fail-over between commit and reply) must not run a finished order again.
ENDED_ORDER_RETENTION_MS = 3_600_000


# --- stimuli: everything that can happen to a controller ---


@dataclass(frozen=True, slots=True)
class NewOrder:
    id: str
    workflow_path: str
    workflow_version_id: str = ""  # "": the current version
    arguments: Mapping[str, values_pb2.Value] = field(default_factory=dict)
    scheduled_for_ms: int | None = None
    trace_parent: str = ""


@dataclass(frozen=True, slots=True)
class Deploy:
    items: tuple[items_pb2.SignedItem, ...]


@dataclass(frozen=True, slots=True)
class AddOrders:
    """All or none: a bad order refuses the whole request, before anything is journaled."""

    orders: tuple[NewOrder, ...]


@dataclass(frozen=True, slots=True)
class CommandOrder:
    """One command; a refused one raises InvalidArgument before anything is journaled."""

    command: commands_pb2.OrderCommand


@dataclass(frozen=True, slots=True)
class AgentEvents:
    """Events of an agent's journal, in id order (some may have been seen already)."""

    agent: str
    events: tuple[Event, ...]


@dataclass(frozen=True, slots=True)
class ReleaseEvents:
    """JOC stored this controller's events up to `until_id`."""

    until_id: int


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: orders waiting here for their time move on."""


@dataclass(frozen=True, slots=True)
class TransferOrders:
    """Moves these orders of a workflow to another version of it, keeping their ids (JS7's
    TransferOrders): those that have not started (fresh) and are scheduled at or after `from_ms`;
    the others are left as they are. An order here moves at once; an order at an agent is marked,
    and its agent moves it unless it started first (the controller mirrors what the agent did).
    The caller names the orders, so that no stimulus reads every order held."""

    workflow_path: str
    order_ids: tuple[str, ...]
    to_version_id: str = ""  # "": the current version
    from_ms: int | None = None  # None: whatever their scheduled time


@dataclass(frozen=True, slots=True)
class Fence:
    """A JOC call carries the epoch of its JOC's lease (higher with every take-over in JOC's
    cluster). Handled before the call's command, in the same decision: an epoch older than the
    newest seen raises StaleEpoch before anything is journaled, so a deposed JOC cannot act after
    a new one did; a newer one is journaled. 0: the call carries none (tools, tests)."""

    epoch: int


Stimulus = Deploy | AddOrders | CommandOrder | AgentEvents | ReleaseEvents | Tick | TransferOrders | Fence


@dataclass(frozen=True, slots=True)
class Added:
    """AddOrders' answer for one order: `existed` when the id was known (held, or ended lately)."""

    id: str
    workflow_version_id: str
    existed: bool


# --- work: what an agent's driver is to send once the events behind it are committed ---


@dataclass
class AgentWork:
    attach: list[order_pb2.Order] = field(default_factory=list)
    commands: list[commands_pb2.OrderCommand] = field(default_factory=list)
    detach: list[str] = field(default_factory=list)
    # Workflow versions (path, version) the commands move orders to: the agent must hold them first.
    versions: set[tuple[str, str]] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.attach or self.commands or self.detach)


class ControllerState(OrderHolder):
    def __init__(self) -> None:
        super().__init__()
        self.signed_items: dict[tuple[str, str], items_pb2.SignedItem] = {}
        self.current_version: dict[str, str] = {}
        self.agent_observed: dict[str, int] = {}
        self.locks: dict[str, workflow_pb2.LockItem] = {}
        self.job_resources: dict[str, workflow_pb2.JobResourceItem] = {}
        self.lock_holders: dict[str, dict[str, int]] = {}
        self.lock_queues: dict[str, list[tuple[str, int]]] = {}
        # Orders deleted within ENDED_ORDER_RETENTION_MS: id -> workflow version, and the ids
        # in order of deletion with the deletion's event time, for expiry.
        self.ended_orders: dict[str, str] = {}
        self.ended_expiry: deque[tuple[int, str]] = deque()
        self.subagent_clusters: dict[str, workflow_pb2.SubagentClusterItem] = {}
        # Items every agent (job resources) or one agent (its subagent clusters) must hold, as
        # sent: (ItemDeployed field, path) -> the item, its version_id a digest of its JSON.
        self.agent_items: dict[tuple[str, str], items_pb2.SignedItem] = {}
        # What each agent journaled: (agent, ItemDeployed field, path) -> version_id.
        self.attached: dict[tuple[str, str, str], str] = {}
        # The newest JOC lease epoch seen (see Fence); 0: none yet.
        self.joc_epoch = 0

    def apply_to_state(self, event: Event) -> None:
        kind = event.WhichOneof("kind")
        if kind == "order_deleted" and event.order_id in self.orders:
            self._remember_ended(event.order_id, event.timestamp.ToMilliseconds())
        super().apply_to_state(event)
        if kind == "item_deployed":
            deployed = event.item_deployed
            if deployed.WhichOneof("item") == "lock":
                self.locks[deployed.lock.path] = deployed.lock
                return
            if deployed.WhichOneof("item") == "job_resource":
                self.job_resources[deployed.job_resource.path] = deployed.job_resource
                self._keep_for_agents(deployed, items_pb2.ITEM_TYPE_JOB_RESOURCE, deployed.job_resource.path)
                return
            if deployed.WhichOneof("item") == "subagent_cluster":
                self.subagent_clusters[deployed.subagent_cluster.path] = deployed.subagent_cluster
                path = deployed.subagent_cluster.path
                self._keep_for_agents(deployed, items_pb2.ITEM_TYPE_SUBAGENT_CLUSTER, path)
                return
            wf = deployed.workflow
            self.signed_items[(wf.path, wf.version_id)] = items_pb2.SignedItem(
                type=items_pb2.ITEM_TYPE_WORKFLOW,
                path=wf.path,
                version_id=wf.version_id,
                json=deployed.signed_json,
                signature=deployed.signature,
            )
            previous = self.current_version.get(wf.path)
            self.current_version[wf.path] = wf.version_id
            if previous and previous != wf.version_id and (wf.path, previous) not in self.version_users:
                self.version_unused((wf.path, previous))
        elif kind == "agent_events_observed":
            self.agent_observed[event.agent_events_observed.agent] = event.agent_events_observed.until_id
        elif kind == "joc_epoch_raised":
            self.joc_epoch = event.joc_epoch_raised.epoch
        elif kind == "item_attached":
            a = event.item_attached
            self.attached[(a.agent, a.item or "workflow", a.path)] = a.version_id
        elif kind == "order_lock_acquired":
            e = event.order_lock_acquired
            self.lock_holders.setdefault(e.lock_path, {})[event.order_id] = e.count
            self._unqueue(event.order_id)
        elif kind == "order_lock_queued":
            e2 = event.order_lock_queued
            self.lock_queues.setdefault(e2.lock_path, []).append((event.order_id, e2.count))
        elif kind == "order_lock_released":
            self.lock_holders.get(event.order_lock_released.lock_path, {}).pop(event.order_id, None)
        elif kind in ("order_cancelled", "order_deleted"):
            self._unqueue(event.order_id)

    def _keep_for_agents(self, deployed: events_pb2.ItemDeployed, item_type: int, path: str) -> None:
        kind = deployed.WhichOneof("item")
        assert kind is not None
        self.agent_items[(kind, path)] = items_pb2.SignedItem(
            type=item_type,  # type: ignore[arg-type]
            path=path,
            version_id=item_digest(deployed.signed_json),
            json=deployed.signed_json,
            signature=deployed.signature,
        )

    def _remember_ended(self, order_id: str, at_ms: int) -> None:
        # Expiry goes by event time, so every node and every replay forgets the same ids.
        while self.ended_expiry and self.ended_expiry[0][0] < at_ms - ENDED_ORDER_RETENTION_MS:
            self.ended_orders.pop(self.ended_expiry.popleft()[1], None)
        self.ended_orders[order_id] = self.orders[order_id].workflow_version_id
        self.ended_expiry.append((at_ms, order_id))

    def version_unused(self, key: tuple[str, str]) -> None:
        # An older version goes once its last order has left; the current one stays.
        if self.current_version.get(key[0]) != key[1]:
            self.workflows.pop(key, None)
            self.signed_items.pop(key, None)

    def _unqueue(self, order_id: str) -> None:
        for queue in self.lock_queues.values():
            queue[:] = [q for q in queue if q[0] != order_id]

    def lock_free(self, path: str) -> int:
        return self.locks[path].limit - sum(self.lock_holders.get(path, {}).values())


class ControllerCore:
    def __init__(self, state: ControllerState, agents: frozenset[str]) -> None:
        self.state = state
        self.agents = agents
        # (due ms, order id, the order's event id then): orders waiting here for a time; stale once
        # the order has a newer event (a newer entry was pushed if it still waits).
        self._timers: list[tuple[int, str, int]] = []
        # Pending work per order: (agent, "attach"|"command"|"detach", id of the event that called
        # for it); and per agent the queue of those pieces in event order, for its driver.
        self._pending: dict[str, tuple[str, str, int]] = {}
        self._queues: dict[str, deque[tuple[int, str, str]]] = {agent: deque() for agent in agents}
        for order_id in state.orders:
            self._note_order(order_id, None)

    # --- the one way in ---

    def handle(self, stimulus: Stimulus, now_ms: int) -> list[Event]:
        if isinstance(stimulus, AgentEvents):
            return self._agent_events(stimulus.agent, stimulus.events, now_ms)
        if isinstance(stimulus, AddOrders):
            return self._add_orders(stimulus.orders, now_ms)
        if isinstance(stimulus, ReleaseEvents):
            return self.state.release(stimulus.until_id, now_ms)
        if isinstance(stimulus, Tick):
            return self._tick(now_ms)
        if isinstance(stimulus, CommandOrder):
            return self._command(stimulus.command, now_ms)
        if isinstance(stimulus, Deploy):
            return self._deploy(stimulus.items, now_ms)
        if isinstance(stimulus, TransferOrders):
            return self._transfer(stimulus, now_ms)
        if isinstance(stimulus, Fence):
            return self._fence(stimulus.epoch, now_ms)
        raise TypeError(f"not a controller stimulus: {stimulus!r}")

    def added(self, stimulus: AddOrders, events: list[Event]) -> list[Added]:
        """AddOrders' answer, from what handling it emitted: an order it did not add existed."""
        new = {e.order_id for e in events if e.WhichOneof("kind") == "order_added"}
        answer = []
        for o in stimulus.orders:
            held = self.state.orders.get(o.id)
            version = held.workflow_version_id if held is not None else self.state.ended_orders.get(o.id, "")
            answer.append(Added(o.id, version, existed=o.id not in new))
        return answer

    def transferred(self, stimulus: TransferOrders, events: list[Event]) -> tuple[str, list[str]]:
        """TransferOrders' answer: the version, and the orders moved or marked to move."""
        version = stimulus.to_version_id or self.state.current_version.get(stimulus.workflow_path, "")
        return version, [e.order_id for e in events]

    # --- the one way out ---

    def agent_work(self, agent: str, committed_id: int) -> AgentWork:
        """What this controller owes `agent` now that events up to `committed_id` are committed,
        each piece handed out once (after a new session, `agent_session` puts back what is due)."""
        work = AgentWork()
        queue = self._queues[agent]
        while queue and queue[0][0] <= committed_id:
            event_id, kind, order_id = queue.popleft()
            if self._pending.get(order_id) != (agent, kind, event_id):
                continue  # moved on meanwhile
            order = self.state.orders[order_id]
            if kind == "attach":
                work.attach.append(order)
            elif kind == "detach":
                work.detach.append(order_id)
            else:
                work.commands += _commands_of(order)
                transfer = mark_of(order, "transfer")
                if transfer is not None:
                    work.versions.add((order.workflow_path, transfer.transfer.workflow_version_id))
        return work

    def agent_session(self, agent: str) -> None:
        """A new session with the agent: whatever is pending for it is to be sent (again)."""
        self._queues[agent] = deque(
            sorted(
                (event_id, kind, order_id)
                for order_id, (a, kind, event_id) in self._pending.items()
                if a == agent
            )
        )

    def items_to_attach(self, agent: str) -> list[items_pb2.SignedItem]:
        """Job resources and the agent's subagent clusters in a version the agent has not
        journaled (it reports each with an event): sent before orders, which may need them."""
        return [
            item
            for (kind, path), item in self.state.agent_items.items()
            if (kind == "job_resource" or self.state.subagent_clusters[path].agent == agent)
            and self.state.attached.get((agent, kind, path)) != item.version_id
        ]

    def next_wake_ms(self) -> int | None:
        timers = self._timers
        while timers and self.state.order_event_id.get(timers[0][1]) != timers[0][2]:
            heapq.heappop(timers)  # stale
        return timers[0][0] if timers else None

    # --- events and indexes ---

    def _emit(self, now_ms: int, order_id: str = "", **kind: Any) -> Event:
        event = self.state.emit(now_ms, order_id, **kind)
        if order_id:
            self._note_order(order_id, event)
        return event

    def _note_order(self, order_id: str, event: Event | None) -> None:
        """Brings the indexes in step with the order after `event` (None: as the state has it)."""
        order = self.state.orders.get(order_id)
        if order is None:
            self._pending.pop(order_id, None)
            return
        event_id = self.state.order_event_id[order_id]
        attached = order.attached_state
        if attached == A.ATTACHED_STATE_DETACHED:
            self._pending.pop(order_id, None)
            due = _due_ms(order)
            if due is not None:
                heapq.heappush(self._timers, (due, order_id, event_id))
            return
        kind = (
            "attach"
            if attached == A.ATTACHED_STATE_ATTACHING
            else "detach"
            if attached == A.ATTACHED_STATE_DETACHABLE
            else "command"
            if order.marks
            else None
        )
        if kind is None:
            self._pending.pop(order_id, None)
            return
        pending = self._pending.get(order_id)
        # Once per entering a kind of work, and for commands again whenever the marks change: not
        # for each of the agent's events mirrored meanwhile (its output, say).
        marks_changed = event is not None and event.WhichOneof("kind") == "order_marked"
        if pending is not None and pending[:2] == (order.agent, kind) and not marks_changed:
            return
        self._pending[order_id] = (order.agent, kind, event_id)
        self._queues[order.agent].append((event_id, kind, order_id))

    def _emit_like(self, order_id: str, proto: Event, now_ms: int) -> Event:
        kind = proto.WhichOneof("kind")
        assert kind is not None
        return self._emit(now_ms, order_id, **{kind: getattr(proto, kind)})

    # --- deployment ---

    def _deploy(self, items: tuple[items_pb2.SignedItem, ...], now_ms: int) -> list[Event]:
        locks: dict[str, workflow_pb2.LockItem] = {}
        resources: dict[str, tuple[workflow_pb2.JobResourceItem, items_pb2.SignedItem]] = {}
        clusters: dict[str, tuple[workflow_pb2.SubagentClusterItem, items_pb2.SignedItem]] = {}
        workflows: list[tuple[workflow_pb2.Workflow, items_pb2.SignedItem, str]] = []
        for i, item in enumerate(items):
            field = f"items[{i}]"
            if not item.path.startswith("/"):
                raise InvalidArgument(f"not an absolute path: {item.path!r}", field=f"{field}.path")
            if item.type == items_pb2.ITEM_TYPE_LOCK:
                locks[item.path] = _parse_lock(item, field)
            elif item.type == items_pb2.ITEM_TYPE_JOB_RESOURCE:
                resources[item.path] = (_parse_job_resource(item, field), item)
            elif item.type == items_pb2.ITEM_TYPE_SUBAGENT_CLUSTER:
                clusters[item.path] = (self._parse_subagent_cluster(item, field), item)
            elif item.type == items_pb2.ITEM_TYPE_WORKFLOW:
                workflows.append((self._check_workflow(item, field), item, field))
            else:
                name = items_pb2.ItemType.Name(item.type)
                raise InvalidArgument(f"{name} cannot be deployed yet", field=f"{field}.type")
        for workflow, item, field in workflows:
            for lock_path, lock_field in model.locks_of(workflow).items():
                if lock_path not in locks and lock_path not in self.state.locks:
                    raise InvalidArgument(
                        f"workflow {item.path} uses lock {lock_path}, which is not deployed",
                        field=f"{field}.json.{lock_field}",
                    )
        events = []
        for path, lock in locks.items():
            known = self.state.locks.get(path)
            if known is None or known.limit != lock.limit:
                events.append(self._emit(now_ms, item_deployed=events_pb2.ItemDeployed(lock=lock)))
        for path, (resource, item) in resources.items():
            if self.state.job_resources.get(path) != resource:
                deployed = events_pb2.ItemDeployed(
                    job_resource=resource, signed_json=item.json, signature=item.signature
                )
                events.append(self._emit(now_ms, item_deployed=deployed))
        for path, (cluster, item) in clusters.items():
            if self.state.subagent_clusters.get(path) != cluster:
                deployed = events_pb2.ItemDeployed(subagent_cluster=cluster, signed_json=item.json)
                events.append(self._emit(now_ms, item_deployed=deployed))
        for workflow, item, _ in workflows:
            if (workflow.path, workflow.version_id) in self.state.workflows:
                continue  # the same version again: idempotent
            deployed = events_pb2.ItemDeployed(
                workflow=workflow, signed_json=item.json, signature=item.signature
            )
            events.append(self._emit(now_ms, item_deployed=deployed))
        return events

    def _parse_subagent_cluster(
        self, item: items_pb2.SignedItem, field: str
    ) -> workflow_pb2.SubagentClusterItem:
        try:
            cluster = model.parse_item(item, workflow_pb2.SubagentClusterItem())
        except InvalidArgument as e:
            raise e.within(field) from None
        try:
            model.check_subagent_cluster(cluster)
        except InvalidArgument as e:
            raise e.within(f"{field}.json ({item.path})") from None
        if cluster.agent not in self.agents:
            known = ", ".join(sorted(self.agents)) or "none"
            raise InvalidArgument(
                f"unknown agent {cluster.agent!r}; this controller has {known}",
                field=f"{field}.json ({item.path}).agent",
            )
        return cluster

    def _check_workflow(self, item: items_pb2.SignedItem, field: str) -> workflow_pb2.Workflow:
        try:
            workflow = model.parse_workflow(item.json)
        except InvalidArgument as e:
            raise InvalidArgument(str(e), field=f"{field}.json ({item.path})") from None
        if workflow.path != item.path or workflow.version_id != item.version_id:
            raise InvalidArgument(
                f"path and versionId inside the JSON ({workflow.path} {workflow.version_id}) differ"
                f" from the item's ({item.path} {item.version_id})",
                field=f"{field}.json",
            )
        if not workflow.version_id:
            raise InvalidArgument("a workflow needs a version id", field=f"{field}.version_id")
        unknown = sorted(model.agents_of(workflow) - self.agents)
        if unknown:
            raise InvalidArgument(
                f"workflow {item.path} names unknown agent(s) {', '.join(unknown)};"
                f" this controller has {', '.join(sorted(self.agents)) or 'none'}",
                field=f"{field}.json.jobs.agent",
            )
        return workflow

    # --- orders ---

    def _add_orders(self, new_orders: tuple[NewOrder, ...], now_ms: int) -> list[Event]:
        orders: list[order_pb2.Order] = []
        for i, new in enumerate(new_orders):
            field = f"orders[{i}]"
            if not new.id or "|" in new.id:
                raise InvalidArgument(
                    f"not an order id: {new.id!r} (empty, or with '|')", field=f"{field}.id"
                )
            # Known (held, or ended lately: a repeated request), or twice in this request: added once.
            if new.id in self.state.orders or new.id in self.state.ended_orders:
                continue
            version = new.workflow_version_id or self.state.current_version.get(new.workflow_path, "")
            if (new.workflow_path, version) not in self.state.workflows:
                what = f"version {version} of " if new.workflow_version_id else ""
                raise NotFound(
                    f"unknown workflow {what}{new.workflow_path!r}", field=f"{field}.workflow_path"
                )
            workflow = self.state.workflows[(new.workflow_path, version)]
            order = order_pb2.Order(
                id=new.id,
                workflow_path=new.workflow_path,
                workflow_version_id=version,
                state=S.ORDER_STATE_FRESH,
                attached_state=A.ATTACHED_STATE_DETACHED,
                trace_parent=new.trace_parent,
                position=order_pb2.Position(nr=0),
            )
            for k, v in prepared_arguments(workflow, dict(new.arguments), f"{field}.arguments").items():
                order.arguments[k].CopyFrom(v)
            if new.scheduled_for_ms is not None:
                order.scheduled_for.FromMilliseconds(new.scheduled_for_ms)
            orders.append(order)
        events: list[Event] = []
        for order in orders:  # all checked first: a bad order in a request adds none
            if order.id in self.state.orders:
                continue  # the same id twice in one request
            events.append(self._emit(now_ms, order.id, order_added=events_pb2.OrderAdded(order=order)))
            events += self.step_order(order.id, now_ms)
        return events

    def step_order(self, order_id: str, now_ms: int) -> list[Event]:
        """Runs controller-scope instructions until the order waits, leaves for an agent or ends."""
        events: list[Event] = []
        for _ in range(1000):  # a workflow cannot loop without an agent or a timer in between
            order = self.state.orders.get(order_id)
            if order is None:
                return events
            decided = step(order, self.state.workflow_of(order), ControllerScope(), now_ms)
            if isinstance(decided, ControllerWork):
                done, progressed = self._work(order, decided, now_ms)
                events += done
                if not progressed:
                    return events
                continue
            if not isinstance(decided, list) or not decided:
                return events
            for proto in decided:
                events.append(self._emit_like(order_id, proto, now_ms))
            events += self._grant_released_locks(decided, now_ms)
        raise RuntimeError(f"order {order_id}: no progress after 1000 steps")

    def _work(self, order: order_pb2.Order, work: ControllerWork, now_ms: int) -> tuple[list[Event], bool]:
        """Does what involves other orders or locks. Returns events and whether `order` moved on."""
        emit = self._emit
        if work.kind == "lock":
            return self._lock(order, work, now_ms)
        if work.kind in ("fork", "fork_list"):
            return self._fork(order, work, now_ms)
        if work.kind == "add_order":
            return self._add_order(order, work, now_ms)
        if work.kind == "join":
            return self._join(order.parent_id, now_ms), False
        # finish, fail, cancel: the order ends here (or waits failed); its locks go first.
        events = [
            emit(now_ms, order.id, order_lock_released=events_pb2.OrderLockReleased(lock_path=h.lock_path))
            for h in reversed(order.held_locks)
        ]
        released = [h.lock_path for h in order.held_locks]
        if work.kind == "cancel":
            for child_id in list(order.children):
                events += self.cancel_order(child_id, now_ms)
            events.append(emit(now_ms, order.id, order_cancelled=events_pb2.OrderCancelled()))
        elif work.kind == "fail":
            events.append(emit(now_ms, order.id, order_failed=events_pb2.OrderFailed(outcome=work.outcome)))
        else:
            events.append(
                emit(now_ms, order.id, order_finished=events_pb2.OrderFinished(outcome=work.outcome))
            )
        for path in released:
            events += self._grant(path, now_ms)
        parent = self.state.orders.get(order.parent_id) if order.parent_id else None
        if parent is not None and parent.state == S.ORDER_STATE_FORKED:
            events += self._join(order.parent_id, now_ms)  # the join deletes the child
        elif self.state.orders[order.id].state in TERMINAL_STATES:  # (also a child whose parent went)
            events.append(emit(now_ms, order.id, order_deleted=events_pb2.OrderDeleted()))
        return events, False

    def _lock(self, order: order_pb2.Order, work: ControllerWork, now_ms: int) -> tuple[list[Event], bool]:
        assert work.instruction is not None
        lock = work.instruction.lock
        known = self.state.locks.get(lock.lock_path)
        if known is None:
            return self._fail_here(order, f"lock {lock.lock_path} is not deployed", now_ms)
        count = lock.count or known.limit
        if count > known.limit:
            return self._fail_here(
                order, f"lock {lock.lock_path} has a limit of {known.limit}, not {count}", now_ms
            )
        queue = self.state.lock_queues.get(lock.lock_path, [])
        if any(q[0] == order.id for q in queue):
            return [], False
        if queue or self.state.lock_free(lock.lock_path) < count:  # first come, first served
            queued = events_pb2.OrderLockQueued(lock_path=lock.lock_path, count=count)
            return [self._emit(now_ms, order.id, order_lock_queued=queued)], False
        return self._acquire(order.id, lock.lock_path, count, now_ms), True

    def _acquire(self, order_id: str, lock_path: str, count: int, now_ms: int) -> list[Event]:
        acquired = events_pb2.OrderLockAcquired(lock_path=lock_path, count=count)
        into = enter(self.state.orders[order_id].position, "lock")
        return [
            self._emit(now_ms, order_id, order_lock_acquired=acquired),
            self._emit(now_ms, order_id, order_moved=events_pb2.OrderMoved(to=into)),
        ]

    def _grant(self, lock_path: str, now_ms: int) -> list[Event]:
        """Hands a released lock to the orders queued for it, in their order."""
        events: list[Event] = []
        queue = self.state.lock_queues.get(lock_path, [])
        while queue and self.state.lock_free(lock_path) >= queue[0][1]:
            order_id, count = queue[0]
            events += self._acquire(order_id, lock_path, count, now_ms)  # removes it from the queue
            events += self.step_order(order_id, now_ms)
        return events

    def _grant_released_locks(self, decided: list[Event], now_ms: int) -> list[Event]:
        events: list[Event] = []
        for proto in decided:
            if proto.WhichOneof("kind") == "order_lock_released":
                events += self._grant(proto.order_lock_released.lock_path, now_ms)
        return events

    def _fork(self, order: order_pb2.Order, work: ControllerWork, now_ms: int) -> tuple[list[Event], bool]:
        assert work.instruction is not None
        children: list[events_pb2.ForkedChild] = []
        if work.kind == "fork":
            children = [
                events_pb2.ForkedChild(order_id=f"{order.id}|{b.id}", branch_id=f"fork+{b.id}")
                for b in work.instruction.fork.branches
            ]
        else:
            fork_list = work.instruction.fork_list
            scope = OrderScope(order, self.state.workflow_of(order))
            elements = scope.variable(fork_list.children)
            if elements is None or elements.WhichOneof("kind") != "list":
                return self._fail_here(
                    order, f"forkList: variable {fork_list.children!r} is not a list", now_ms
                )
            name = fork_list.element_variable or "element"
            for index, element in enumerate(elements.list.values):
                child = events_pb2.ForkedChild(order_id=f"{order.id}|{index}", branch_id="fork")
                child.arguments[name].CopyFrom(element)
                if element.WhichOneof("kind") == "object":
                    for k, v in element.object.fields.items():
                        child.arguments[k].CopyFrom(v)
                children.append(child)
        events = [self._emit(now_ms, order.id, order_forked=events_pb2.OrderForked(children=children))]
        for child in children:
            new = order_pb2.Order(
                id=child.order_id,
                workflow_path=order.workflow_path,
                workflow_version_id=order.workflow_version_id,
                position=enter(order.position, child.branch_id),
                state=S.ORDER_STATE_READY,
                attached_state=A.ATTACHED_STATE_DETACHED,
                trace_parent=order.trace_parent,
                parent_id=order.id,
                branch_id=child.branch_id,
            )
            for source in (order.arguments, order.variables, child.arguments):
                for k, v in source.items():
                    new.arguments[k].CopyFrom(v)
            events.append(self._emit(now_ms, new.id, order_added=events_pb2.OrderAdded(order=new)))
            events += self.step_order(new.id, now_ms)
        if not children:
            events += self._join(order.id, now_ms)
        return events, False

    def _join(self, parent_id: str, now_ms: int) -> list[Event]:
        """Joins the parent when every child ended its branch (finished, or failed when the fork
        joins failed children); deletes the children and carries on with the parent."""
        parent = self.state.orders.get(parent_id)
        if parent is None or parent.state != S.ORDER_STATE_FORKED:
            return []
        fork = instruction_at(self.state.workflow_of(parent), parent.position)
        assert fork is not None
        join_if_failed = (
            fork.fork.join_if_failed if fork.WhichOneof("kind") == "fork" else fork.fork_list.join_if_failed
        )
        children = [self.state.orders.get(c) for c in parent.children]
        failed_children: list[str] = []
        for child in children:
            if child is None or child.state in TERMINAL_STATES:
                continue
            if child.state == S.ORDER_STATE_FAILED and join_if_failed:
                failed_children.append(child.id)
                continue
            at_end = child.state == S.ORDER_STATE_READY and child.attached_state == A.ATTACHED_STATE_DETACHED
            if not (at_end and instruction_at(self.state.workflow_of(child), child.position) is None):
                return []
        cancelled = [c.id for c in children if c is not None and c.state == S.ORDER_STATE_CANCELLED]
        if failed_children or cancelled:
            outcome = failed(
                f"child order(s) {', '.join(failed_children + cancelled)} failed or were cancelled"
            )
        else:
            outcome = workflow_pb2.Outcome(kind=workflow_pb2.OUTCOME_KIND_SUCCEEDED)
        for child in children:
            if child is not None:
                for k, v in child.variables.items():
                    outcome.named_values[k].CopyFrom(v)
        events = [
            self._emit(now_ms, c.id, order_deleted=events_pb2.OrderDeleted())
            for c in children
            if c is not None
        ]
        events.append(self._emit(now_ms, parent_id, order_joined=events_pb2.OrderJoined(outcome=outcome)))
        return events + self.step_order(parent_id, now_ms)

    def _add_order(
        self, order: order_pb2.Order, work: ControllerWork, now_ms: int
    ) -> tuple[list[Event], bool]:
        assert work.instruction is not None
        add = work.instruction.add_order
        version = self.state.current_version.get(add.workflow_path)
        if version is None:
            return self._fail_here(order, f"addOrder: unknown workflow {add.workflow_path!r}", now_ms)
        workflow = self.state.workflows[(add.workflow_path, version)]
        scope = OrderScope(order, self.state.workflow_of(order))
        try:
            given = {k: expressions.evaluate(e, scope) for k, e in add.arguments.items()}
            arguments = prepared_arguments(workflow, given, "addOrder.arguments")
        except InvalidArgument as e:
            return self._fail_here(order, f"addOrder: {e}", now_ms)
        new_id = f"{order.id}|{add.id_suffix or text(order.position)}"
        events = [
            self._emit(now_ms, order.id, order_order_added=events_pb2.OrderOrderAdded(added_order_id=new_id))
        ]
        if new_id not in self.state.orders:
            new = order_pb2.Order(
                id=new_id,
                workflow_path=add.workflow_path,
                workflow_version_id=version,
                state=S.ORDER_STATE_FRESH,
                attached_state=A.ATTACHED_STATE_DETACHED,
                position=order_pb2.Position(nr=0),
                trace_parent=order.trace_parent,
            )
            for k, v in arguments.items():
                new.arguments[k].CopyFrom(v)
            events.append(self._emit(now_ms, new_id, order_added=events_pb2.OrderAdded(order=new)))
            events += self.step_order(new_id, now_ms)
        moved = events_pb2.OrderMoved(to=next_position(order.position))
        events.append(self._emit(now_ms, order.id, order_moved=moved))
        return events, True

    def _fail_here(self, order: order_pb2.Order, message: str, now_ms: int) -> tuple[list[Event], bool]:
        """A failure of a controller instruction: caught like any other, else the order fails."""
        decided = fail(order, self.state.workflow_of(order), failed(message), at_agent=False)
        if isinstance(decided, ControllerWork):
            return self._work(order, decided, now_ms)
        assert isinstance(decided, list)
        events = [self._emit_like(order.id, proto, now_ms) for proto in decided]
        return events + self._grant_released_locks(decided, now_ms), True

    def _tick(self, now_ms: int) -> list[Event]:
        """Orders at the controller whose time has come (scheduled ones, sleeping, retry delays)."""
        events: list[Event] = []
        timers = self._timers
        while timers and timers[0][0] <= now_ms:
            _, order_id, event_id = heapq.heappop(timers)
            if self.state.order_event_id.get(order_id) == event_id:
                events += self.step_order(order_id, now_ms)
        return events

    # --- commands ---

    def _command(self, command: commands_pb2.OrderCommand, now_ms: int) -> list[Event]:
        order = self.state.orders.get(command.order_id)
        if order is None:
            raise InvalidArgument(f"unknown order {command.order_id!r}", field="order_id")
        kind = command.WhichOneof("kind")
        state_name = S.Name(order.state).removeprefix("ORDER_STATE_").lower()
        at_agent = order.attached_state != A.ATTACHED_STATE_DETACHED
        if kind == "cancel":
            if order.state in TERMINAL_STATES:
                raise InvalidArgument(f"order is {state_name} already", field="cancel")
            if at_agent:
                return self._mark(
                    order, order_pb2.OrderMark(cancel=order_pb2.CancelMark(kill=command.cancel.kill)), now_ms
                )
            return self.cancel_order(order.id, now_ms)
        if kind == "suspend":
            if order.state not in (
                S.ORDER_STATE_FRESH,
                S.ORDER_STATE_READY,
                S.ORDER_STATE_WAITING,
                S.ORDER_STATE_PROCESSING,
                S.ORDER_STATE_PROCESSED,
            ):
                raise InvalidArgument(f"a {state_name} order cannot be suspended", field="suspend")
            mark = order_pb2.OrderMark(suspend=order_pb2.SuspendMark(kill=command.suspend.kill))
            return self._mark(order, mark, now_ms) + ([] if at_agent else self.step_order(order.id, now_ms))
        if kind == "resume":
            if order.state not in (S.ORDER_STATE_SUSPENDED, S.ORDER_STATE_FAILED):
                raise InvalidArgument(f"a {state_name} order cannot be resumed", field="resume")
            resume = command.resume
            if resume.HasField("position"):
                try:
                    instruction_at(self.state.workflow_of(order), resume.position)
                except (ValueError, IndexError):
                    raise InvalidArgument(
                        "the workflow has no such position", field="resume.position"
                    ) from None
            if at_agent:
                mark = order_pb2.OrderMark(
                    resume=order_pb2.ResumeMark(position=resume.position, variables=resume.variables)
                )
                if not resume.HasField("position"):
                    mark.resume.ClearField("position")
                return self._mark(order, mark, now_ms)
            resumed = events_pb2.OrderResumed(variables=resume.variables)
            if resume.HasField("position"):
                resumed.position.CopyFrom(resume.position)
            return [
                self._emit(now_ms, order.id, order_resumed=resumed),
                *self.step_order(order.id, now_ms),
            ]
        if kind == "answer_prompt":
            if order.state != S.ORDER_STATE_PROMPTING:
                raise InvalidArgument(f"order is {state_name}, not prompting", field="answer_prompt")
            answered = events_pb2.OrderPromptAnswered()
            return [
                self._emit(now_ms, order.id, order_prompt_answered=answered),
                *self.step_order(order.id, now_ms),
            ]
        if kind == "transfer":
            raise InvalidArgument("orders move to a workflow version by TransferOrders", field="transfer")
        raise InvalidArgument("no command given", field="kind")

    def _transfer(self, stimulus: TransferOrders, now_ms: int) -> list[Event]:
        path = stimulus.workflow_path
        version = stimulus.to_version_id or self.state.current_version.get(path, "")
        if (path, version) not in self.state.workflows:
            what = f"version {version} of " if stimulus.to_version_id else ""
            raise NotFound(f"unknown workflow {what}{path!r}", field="workflow_path")
        events: list[Event] = []
        for order_id in dict.fromkeys(stimulus.order_ids):
            order = self.state.orders.get(order_id)
            if order is None or order.workflow_path != path or order.state != S.ORDER_STATE_FRESH:
                continue
            if order.workflow_version_id == version:
                continue
            due = order.scheduled_for.ToMilliseconds() if order.HasField("scheduled_for") else None
            if stimulus.from_ms is not None and (due is None or due < stimulus.from_ms):
                continue
            if order.attached_state == A.ATTACHED_STATE_DETACHED:
                moved = events_pb2.OrderTransferred(workflow_version_id=version)
                events.append(self._emit(now_ms, order_id, order_transferred=moved))
            elif order.attached_state in (A.ATTACHED_STATE_ATTACHING, A.ATTACHED_STATE_ATTACHED):
                mark = order_pb2.OrderMark(transfer=order_pb2.TransferMark(workflow_version_id=version))
                events += self._mark(order, mark, now_ms)
            # A detachable order is on its way back for a cancel: nothing to move.
        return events

    def _fence(self, epoch: int, now_ms: int) -> list[Event]:
        if epoch == 0 or epoch == self.state.joc_epoch:
            return []
        if epoch < self.state.joc_epoch:
            raise StaleEpoch(f"JOC epoch {epoch} is stale: epoch {self.state.joc_epoch} took over")
        return [self._emit(now_ms, joc_epoch_raised=events_pb2.JocEpochRaised(epoch=epoch))]

    def _mark(self, order: order_pb2.Order, mark: order_pb2.OrderMark, now_ms: int) -> list[Event]:
        kind = mark.WhichOneof("kind")
        marks = [m for m in order.marks if m.WhichOneof("kind") != kind] + [mark]
        return [self._emit(now_ms, order.id, order_marked=events_pb2.OrderMarked(marks=marks))]

    def cancel_order(self, order_id: str, now_ms: int) -> list[Event]:
        order = self.state.orders.get(order_id)
        if order is None or order.state in TERMINAL_STATES:
            return []
        if order.attached_state != A.ATTACHED_STATE_DETACHED:
            return self._mark(order, order_pb2.OrderMark(cancel=order_pb2.CancelMark(kill=True)), now_ms)
        return self._work(order, ControllerWork("cancel"), now_ms)[0]

    # --- agents ---

    def _agent_events(self, agent: str, agent_events: tuple[Event, ...], now_ms: int) -> list[Event]:
        """Mirrors an agent's order events (each agent event id once) and carries on with orders
        the agent handed back."""
        observed = self.state.agent_observed.get(agent, 0)
        events: list[Event] = []
        for e in agent_events:
            if e.id <= observed:
                continue
            observed = e.id
            kind = e.WhichOneof("kind")
            if kind == "item_deployed":
                events.append(self._emit(now_ms, item_attached=_attached(agent, e.item_deployed)))
                continue
            if kind not in MIRRORED_KINDS or e.order_id not in self.state.orders:
                continue
            # The event's content, copied once into the controller's own event.
            content = (
                events_pb2.OrderAttached(agent=e.order_attached.agent)  # the controller has the order
                if kind == "order_attached"
                else getattr(e, kind)
            )
            events.append(self._emit(e.timestamp.ToMilliseconds(), e.order_id, **{kind: content}))
            if kind == "order_detached":
                events += self.step_order(e.order_id, now_ms)
        if observed > self.state.agent_observed.get(agent, 0):
            observed_event = events_pb2.AgentEventsObserved(agent=agent, until_id=observed)
            events.append(self._emit(now_ms, agent_events_observed=observed_event))
        return events


def _commands_of(order: order_pb2.Order) -> list[commands_pb2.OrderCommand]:
    """Marks of an order at an agent, as commands for it (it carries them out and reports)."""
    commands = []
    for mark in order.marks:
        kind = mark.WhichOneof("kind")
        if kind == "cancel":
            commands.append(
                commands_pb2.OrderCommand(
                    order_id=order.id, cancel=commands_pb2.CancelOrder(kill=mark.cancel.kill)
                )
            )
        elif kind == "suspend":
            commands.append(
                commands_pb2.OrderCommand(
                    order_id=order.id, suspend=commands_pb2.SuspendOrder(kill=mark.suspend.kill)
                )
            )
        elif kind == "resume":
            resume = commands_pb2.ResumeOrder(variables=mark.resume.variables)
            if mark.resume.HasField("position"):
                resume.position.CopyFrom(mark.resume.position)
            commands.append(commands_pb2.OrderCommand(order_id=order.id, resume=resume))
        elif kind == "transfer":
            transfer = commands_pb2.TransferOrder(workflow_version_id=mark.transfer.workflow_version_id)
            commands.append(commands_pb2.OrderCommand(order_id=order.id, transfer=transfer))
    return commands


def _due_ms(order: order_pb2.Order) -> int | None:
    if order.state == S.ORDER_STATE_FRESH and order.HasField("scheduled_for"):
        return int(order.scheduled_for.ToMilliseconds())
    if order.state == S.ORDER_STATE_WAITING and order.HasField("waiting_until"):
        return int(order.waiting_until.ToMilliseconds())
    return None


def _parse_lock(item: items_pb2.SignedItem, field: str) -> workflow_pb2.LockItem:
    try:
        lock = model.parse_item(item, workflow_pb2.LockItem())
    except InvalidArgument as e:
        raise e.within(field) from None
    if lock.limit < 1:
        raise InvalidArgument("a lock needs a limit of at least 1", field=f"{field}.json.limit ({item.path})")
    return lock


def _attached(agent: str, deployed: events_pb2.ItemDeployed) -> events_pb2.ItemAttached:
    kind = deployed.WhichOneof("item")
    if kind == "workflow":
        wf = deployed.workflow
        return events_pb2.ItemAttached(agent=agent, path=wf.path, version_id=wf.version_id, item=kind)
    item = getattr(deployed, str(kind))
    return events_pb2.ItemAttached(
        agent=agent, path=item.path, version_id=item_digest(deployed.signed_json), item=str(kind)
    )


def _parse_job_resource(item: items_pb2.SignedItem, field: str) -> workflow_pb2.JobResourceItem:
    try:
        resource = model.parse_item(item, workflow_pb2.JobResourceItem())
    except InvalidArgument as e:
        raise e.within(field) from None
    for kind, values in (("variables", resource.variables), ("env", resource.env)):
        for k, expr in values.items():
            expressions.check(expr, f"{field}.json.{kind}.{k} ({item.path})")
    return resource


def prepared_arguments(
    workflow: workflow_pb2.Workflow, given: dict[str, values_pb2.Value], field: str
) -> dict[str, values_pb2.Value]:
    """Arguments checked against the workflow's declared parameters, defaults applied. A workflow
    that declares no parameters takes any arguments."""
    preparation = workflow.order_preparation
    if not workflow.HasField("order_preparation"):
        return given
    result: dict[str, values_pb2.Value] = {}
    for name, parameter in preparation.parameters.items():
        if parameter.final_expression:
            if name in given:
                raise InvalidArgument("is fixed by the workflow and cannot be given", field=f"{field}.{name}")
            continue
        value = given.get(name)
        if value is None:
            if not parameter.HasField("default"):
                raise InvalidArgument(
                    f"missing; the workflow {workflow.path} requires it", field=f"{field}.{name}"
                )
            value = parameter.default
        expected = _VALUE_KIND.get(parameter.type)
        if expected and value.WhichOneof("kind") != expected:
            raise InvalidArgument(
                f"must be a {expected}, not {value.WhichOneof('kind')}", field=f"{field}.{name}"
            )
        result[name] = value
    undeclared = sorted(set(given) - set(preparation.parameters))
    if undeclared and not preparation.allow_undeclared:
        raise InvalidArgument(
            f"not a parameter of {workflow.path}: {', '.join(undeclared)}", field=f"{field}.{undeclared[0]}"
        )
    for name in undeclared:
        result[name] = given[name]
    for name, parameter in preparation.parameters.items():
        if parameter.final_expression:
            result[name] = expressions.evaluate(parameter.final_expression, expressions.MappingScope(result))
    return result


_VALUE_KIND = {
    workflow_pb2.PARAMETER_TYPE_STRING: "string",
    workflow_pb2.PARAMETER_TYPE_NUMBER: "number",
    workflow_pb2.PARAMETER_TYPE_BOOLEAN: "boolean",
    workflow_pb2.PARAMETER_TYPE_LIST: "list",
    workflow_pb2.PARAMETER_TYPE_OBJECT: "object",
}
