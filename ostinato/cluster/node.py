"""What controller and director nodes share around their core: the journal, the life between
passive and active, the wake-up loop for timed work and stopping.

A node serves from the start. While passive (or a witness) it answers every call but the cluster
service's with UNAVAILABLE naming the active node. When its journal makes it the Raft leader, it
takes a working copy of the committed state and activates: the subclass builds its core and
starts its drivers. When deposed (another node leads, no majority heard, or a batch of its was
fenced off) it cancels them, drops the working state and is passive again: nothing it decided
but did not commit acts anywhere.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from gen.ostinato.common.v1 import cluster_pb2, events_pb2, order_pb2
from ostinato import logs, metrics
from ostinato.cluster.config import NodeConfig
from ostinato.errors import InvalidArgument, NotActive
from ostinato.journal.replicated import Journal, cluster_password
from ostinato.journal.shell import JournalShell, now_ms
from ostinato.workflow.events import kind_of

log = logging.getLogger(__name__)
order_log = logging.getLogger("ostinato.orders")
S = order_pb2.OrderState

# Served by passive nodes too.
OPEN_SERVICES = ("grpc.health.", "grpc.reflection.", "ostinato.common.v1.ClusterService/")


class JournaledNode(ABC):
    cluster_name: str  # the controller id or agent name, for status

    def __init__(self, node: NodeConfig) -> None:
        self.node = node
        self.active = False
        self.address = node.member.address  # the bound address once serving
        self._tasks: list[asyncio.Task[Any]] = []
        self._active_tasks: list[asyncio.Task[Any]] = []
        self._wake = asyncio.Event()
        self._role_known = asyncio.Event()
        self.metrics = metrics.NodeMetrics()
        self._under_way: dict[str, dict[str, str]] = {}  # order id -> what names it in log lines

    async def start(self, new_state: Callable[[], Any]) -> None:
        """Opens the journal; the node activates whenever it becomes the leader."""
        partners = self.node.cluster.partners(self.node.name)
        if partners and not self.node.cluster_password:
            # A password made up by each node would keep them apart; none would leave pickle open.
            raise InvalidArgument(
                "a cluster of several nodes needs their common password", field="cluster_password"
            )
        self.journal = Journal(
            data_dir=self.node.data_dir / "journal",
            self_address=self.node.member.raft,
            partners=partners,
            password=cluster_password(self.node.data_dir, self.node.cluster_password),
            new_state=new_state,
            witness=self.node.member.witness,
            timing=self.node.timing,
        )
        self._tasks.append(asyncio.create_task(self._life(), name="life"))
        self._tasks.append(asyncio.create_task(self._watch_role(), name="role"))

    async def _life(self) -> None:
        while True:
            state = await self.journal.wait_active()
            failed = asyncio.Event()
            self.shell = JournalShell(self.journal, state, on_failure=failed.set)
            self.shell.on_commit(self._committed)
            self.activate(state)
            self.active = True
            self.metrics.activated(state)
            self.metrics.role("active", self.journal.term)
            self._role_known.set()
            log.info(
                "node %s active in term %d at event %d",
                self.node.name,
                self.journal.term,
                state.last_event_id,
            )
            deposed = asyncio.create_task(self.journal.wait_deposed())
            failing = asyncio.create_task(failed.wait())
            await asyncio.wait({deposed, failing}, return_when=asyncio.FIRST_COMPLETED)
            deposed.cancel()
            failing.cancel()
            self.active = False
            self.metrics.deactivated()
            self._under_way = {}
            self.metrics.role("passive", self.journal.term)
            log.warning("node %s deposed in term %d; passive again", self.node.name, self.journal.term)
            for task in self._active_tasks:
                task.cancel()
            await asyncio.gather(*self._active_tasks, return_exceptions=True)
            self._active_tasks = []
            self.deactivate()
            # Receivers of this node's events are sent away, to the new active node once it is
            # known (an election takes about a second; after that, to whichever node they try).
            await self._leader_known(timeout=self.node.timing.leader_fallback)
            self.shell.close(self.not_active)

    async def _leader_known(self, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.active_address() and (left := deadline - asyncio.get_running_loop().time()) > 0:
            await self.journal.changed(timeout=min(left, 0.05))

    async def _watch_role(self) -> None:
        leader = ""
        while True:
            if self.journal.leader() != leader:
                leader = self.journal.leader()
                if leader:
                    metrics.LEADER_CHANGES.inc()
                if not self.active:
                    self.metrics.role("witness" if self.node.member.witness else "passive", self.journal.term)
                if leader and not self.journal.is_leader():
                    log.info("node %s passive; active node is %s", self.node.name, self._active_member_name())
                    self._role_known.set()
            await self.journal.changed(timeout=0.1)

    async def role_known(self) -> None:
        """Waits until this node is active, or knows which node is."""
        await self._role_known.wait()

    def _active_member_name(self) -> str:
        member = self.node.cluster.by_raft(self.journal.leader())
        return member.name if member else ""

    def active_address(self) -> str:
        """gRPC address of the active node as this node knows it, or ""."""
        if self.active:
            return self.address
        member = self.node.cluster.by_raft(self.journal.leader())
        return member.address if member and member.name != self.node.name else ""

    def guard(self, method: str) -> None:
        """Refuses calls to a node that is not active, naming the one that is."""
        if not (self.active or method.startswith(OPEN_SERVICES)):
            raise self.not_active()

    def not_active(self) -> NotActive:
        active = self.active_address()
        return NotActive(
            f"node {self.node.name} of {self.cluster_name} is not active"
            + (f"; the active node is at {active}" if active else "; no node is active yet"),
            active_address=active,
        )

    @property
    def term(self) -> int:
        return self.journal.term

    def spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> None:
        """Starts a task of the active role: cancelled when the node is deposed."""
        self._active_tasks.append(asyncio.create_task(coroutine, name=name))

    def wake(self) -> None:
        self._wake.set()

    def _committed(self, events: list[events_pb2.Event]) -> None:
        self.metrics.committed(events, self.shell.state)
        self._log_orders(events)
        self.on_commit(events)
        self._wake.set()

    def _log_orders(self, events: list[events_pb2.Event]) -> None:
        """A line per committed order event worth one (the CLI's wording), with the order's id,
        workflow, job and trace id as fields (`--log-format json` shows them).

        The working state may be a batch ahead of the commit: an order that ended may have left
        it, one that was processed may have moved on. So what names an order is remembered from
        when it gets under way (not while held for later) until it leaves this node, and the job
        of each execution from its start."""
        if not order_log.isEnabledFor(logging.INFO):
            return
        state: Any = self.shell.state  # an OrderHolder: controller and director states hold orders
        under_way = self._under_way
        for event in events:
            order_id = event.order_id
            if not order_id:
                continue
            kind = event.WhichOneof("kind")
            if order_id not in under_way and (order_id in state.orders.live or kind == "order_attachable"):
                if (order := state.orders.get(order_id)) is not None:
                    under_way[order_id] = {"workflow": order.workflow_path, "traceparent": order.trace_parent}
            says = kind_of(event).says
            if says is not None:
                self._log_order_line(event, kind, says, state, under_way.get(order_id))
            if kind in state.leaving_kinds:
                under_way.pop(order_id, None)

    def _log_order_line(
        self, event: events_pb2.Event, kind: str | None, says: Any, state: Any, known: dict[str, str] | None
    ) -> None:
        known = known if known is not None else {}
        order = state.orders.get(event.order_id)
        if order is not None:
            _, job = metrics.job_labels(state, order)
            fields = logs.about_order(
                event.order_id, order.workflow_path, job, order.trace_parent, agent=order.agent
            )
        else:
            order = order_pb2.Order(id=event.order_id)
            fields = logs.about_order(
                event.order_id, known.get("workflow", ""), traceparent=known.get("traceparent", "")
            )
        if kind == "order_processing_started" and "job" in fields:
            known["job"] = fields["job"]
        elif kind == "order_processed" and "job" in known:
            fields["job"] = known["job"]
        order_log.info("order %s: %s", event.order_id, says(event, order), extra=fields)

    @abstractmethod
    def activate(self, state: Any) -> None:
        """The node became active with this working state: build the core, spawn the drivers."""

    @abstractmethod
    def deactivate(self) -> None:
        """The node was deposed; its active tasks are cancelled already."""

    @abstractmethod
    def on_commit(self, events: list[events_pb2.Event]) -> None:
        """Runs after each commit: wake whatever acts on committed events."""

    async def wake_loop(
        self, next_wake_ms: Callable[[], int | None], on_wake: Callable[[int | None], Awaitable[None]]
    ) -> None:
        """Calls on_wake(due) after each commit or `wake()`, and when the core's next due time
        (e.g. an order scheduled for later) comes."""
        while True:
            due = next_wake_ms()
            delay = 60.0 if due is None else max(0.0, (due - now_ms()) / 1000)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), min(delay, 60.0))
            except TimeoutError:
                pass
            await on_wake(due)

    async def stop(self) -> None:
        for task in [*self._active_tasks, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._active_tasks, *self._tasks, return_exceptions=True)
        self.journal.close()

    # --- the cluster service ---

    def local_status(self) -> cluster_pb2.ClusterNode:
        member = self.node.member
        role = (
            cluster_pb2.NODE_ROLE_ACTIVE
            if self.active
            else cluster_pb2.NODE_ROLE_WITNESS
            if member.witness
            else cluster_pb2.NODE_ROLE_PASSIVE
        )
        return cluster_pb2.ClusterNode(
            name=member.name,
            address=self.address,
            raft_address=member.raft,
            role=role,
            term=self.journal.term,
            last_event_id=self.journal.committed_id(),
        )
