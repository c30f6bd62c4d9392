"""The controller's deterministic core: its state and the decisions that change it.

No I/O here: the shell passes time in and carries out what committed events call for (attaching
orders to agents, detaching them). Every method returns the events it emitted; they are already
applied to this (working) state and must be committed by the journal before anything acts on them.
"""

from __future__ import annotations

from dataclasses import dataclass

from gen.ostinato.common.v1 import events_pb2, items_pb2, order_pb2, workflow_pb2
from gen.ostinato.controller.v1 import controller_pb2
from ostinato.errors import InvalidArgument, NotFound
from ostinato.workflow import model
from ostinato.workflow.holder import OrderHolder
from ostinato.workflow.orders import TERMINAL_STATES
from ostinato.workflow.step import ControllerScope, step

A = order_pb2.AttachedState
S = order_pb2.OrderState
Event = events_pb2.Event

# Agent events that change the controller's copy of an order; the rest is the agent's own business.
MIRRORED_KINDS = frozenset(
    {
        "order_attached",
        "order_started",
        "order_processing_started",
        "order_std_written",
        "order_processed",
        "order_moved",
        "order_detachable",
        "order_detached",
    }
)


class ControllerState(OrderHolder):
    def __init__(self) -> None:
        super().__init__()
        self.signed_items: dict[tuple[str, str], items_pb2.SignedItem] = {}
        self.current_version: dict[str, str] = {}
        self.agent_observed: dict[str, int] = {}

    def apply_to_state(self, event: Event) -> None:
        super().apply_to_state(event)
        kind = event.WhichOneof("kind")
        if kind == "item_deployed":
            wf = event.item_deployed.workflow
            self.signed_items[(wf.path, wf.version_id)] = items_pb2.SignedItem(
                type=items_pb2.ITEM_TYPE_WORKFLOW,
                path=wf.path,
                version_id=wf.version_id,
                json=event.item_deployed.signed_json,
                signature=event.item_deployed.signature,
            )
            self.current_version[wf.path] = wf.version_id
        elif kind == "agent_events_observed":
            self.agent_observed[event.agent_events_observed.agent] = event.agent_events_observed.until_id


@dataclass
class ControllerCore:
    state: ControllerState
    agents: frozenset[str]

    def deploy(self, items: list[items_pb2.SignedItem], now_ms: int) -> list[Event]:
        checked: list[tuple[workflow_pb2.Workflow, items_pb2.SignedItem]] = []
        for i, item in enumerate(items):
            field = f"items[{i}]"
            if item.type != items_pb2.ITEM_TYPE_WORKFLOW:
                raise InvalidArgument(
                    f"{items_pb2.ItemType.Name(item.type)} cannot be deployed yet", field=f"{field}.type"
                )
            if not item.path.startswith("/"):
                raise InvalidArgument(f"not an absolute path: {item.path!r}", field=f"{field}.path")
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
            checked.append((workflow, item))
        events = []
        for workflow, item in checked:
            if (workflow.path, workflow.version_id) in self.state.workflows:
                continue  # the same version again: idempotent
            deployed = events_pb2.ItemDeployed(
                workflow=workflow, signed_json=item.json, signature=item.signature
            )
            events.append(self.state.emit(now_ms, item_deployed=deployed))
        return events

    def add_orders(
        self, new_orders: list[controller_pb2.NewOrder], now_ms: int
    ) -> tuple[list[Event], list[controller_pb2.AddedOrder]]:
        events: list[Event] = []
        added: list[controller_pb2.AddedOrder] = []
        orders: list[order_pb2.Order] = []
        for i, new in enumerate(new_orders):
            field = f"orders[{i}]"
            if not new.id:
                raise InvalidArgument("an order needs an id", field=f"{field}.id")
            if new.id in self.state.orders:
                existing = self.state.orders[new.id]
                added.append(
                    controller_pb2.AddedOrder(
                        id=new.id, workflow_version_id=existing.workflow_version_id, existed=True
                    )
                )
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
            for k, parameter in workflow.order_preparation.parameters.items():
                if parameter.HasField("default"):
                    order.arguments[k].CopyFrom(parameter.default)
            for k, v in new.arguments.items():
                order.arguments[k].CopyFrom(v)
            if new.HasField("scheduled_for"):
                order.scheduled_for.CopyFrom(new.scheduled_for)
            orders.append(order)
            added.append(controller_pb2.AddedOrder(id=new.id, workflow_version_id=version))
        for order in orders:  # all checked first: a bad order in a request adds none
            events.append(self.state.emit(now_ms, order.id, order_added=events_pb2.OrderAdded(order=order)))
            events += self.step_order(order.id, now_ms)
        return events, added

    def step_order(self, order_id: str, now_ms: int) -> list[Event]:
        """Runs controller-scope instructions until the order waits, leaves for an agent or ends."""
        events: list[Event] = []
        for _ in range(1000):  # a workflow cannot loop without an agent or a timer in between
            order = self.state.orders.get(order_id)
            if order is None:
                return events
            decided = step(order, self.state.workflow_of(order), ControllerScope(), now_ms)
            if not isinstance(decided, list) or not decided:
                return events
            for proto in decided:
                proto.order_id = order_id
                events.append(self._emit_like(proto, now_ms))
            if self.state.orders[order_id].state in TERMINAL_STATES:
                events.append(self.state.emit(now_ms, order_id, order_deleted=events_pb2.OrderDeleted()))
                return events
        raise RuntimeError(f"order {order_id}: no progress after 1000 steps")

    def wake(self, now_ms: int) -> list[Event]:
        """Fresh orders whose time has come and that start at the controller."""
        events: list[Event] = []
        for order_id, order in list(self.state.orders.items()):
            if order.state == S.ORDER_STATE_FRESH and order.attached_state == A.ATTACHED_STATE_DETACHED:
                events += self.step_order(order_id, now_ms)
        return events

    def next_wake_ms(self) -> int | None:
        due = [
            o.scheduled_for.ToMilliseconds()
            for o in self.state.orders.values()
            if o.state == S.ORDER_STATE_FRESH
            and o.attached_state == A.ATTACHED_STATE_DETACHED
            and o.HasField("scheduled_for")
        ]
        return min(due) if due else None

    def on_agent_events(self, agent: str, agent_events: list[Event], now_ms: int) -> list[Event]:
        """Mirrors an agent's order events (each agent event id once) and carries on with orders
        the agent handed back."""
        observed = self.state.agent_observed.get(agent, 0)
        events: list[Event] = []
        for e in agent_events:
            if e.id <= observed:
                continue
            observed = e.id
            kind = e.WhichOneof("kind")
            if kind not in MIRRORED_KINDS or e.order_id not in self.state.orders:
                continue
            mirrored = Event()
            mirrored.CopyFrom(e)
            if kind == "order_attached":
                mirrored.order_attached.ClearField("order")  # the controller has the order already
            events.append(self._emit_like(mirrored, e.timestamp.ToMilliseconds()))
            if kind == "order_detached":
                events += self.step_order(e.order_id, now_ms)
        if observed > self.state.agent_observed.get(agent, 0):
            observed_event = events_pb2.AgentEventsObserved(agent=agent, until_id=observed)
            events.append(self.state.emit(now_ms, agent_events_observed=observed_event))
        return events

    def _emit_like(self, proto: Event, now_ms: int) -> Event:
        kind = proto.WhichOneof("kind")
        assert kind is not None
        return self.state.emit(now_ms, proto.order_id, **{kind: getattr(proto, kind)})

    def orders_to_attach(self, agent: str, committed_id: int) -> list[order_pb2.Order]:
        return [
            o
            for o in self.state.orders.values()
            if o.agent == agent
            and o.attached_state == A.ATTACHED_STATE_ATTACHING
            and self.state.order_event_id[o.id] <= committed_id
        ]

    def orders_to_detach(self, agent: str, committed_id: int) -> list[str]:
        return [
            o.id
            for o in self.state.orders.values()
            if o.agent == agent
            and o.attached_state == A.ATTACHED_STATE_DETACHABLE
            and self.state.order_event_id[o.id] <= committed_id
        ]
