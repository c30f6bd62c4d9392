"""What controller and director nodes share around their core: command-line flags, the journal,
the life between passive and active, the wake-up loop for timed work, serving and stopping.

A node serves from the start. While passive (or a witness) it answers every call but the cluster
service's with UNAVAILABLE naming the active node. When its journal makes it the Raft leader, it
takes a working copy of the committed state and activates: the subclass builds its core and
starts its drivers. When deposed (another node leads, no majority heard, or a batch of its was
fenced off) it cancels them, drops the working state and is passive again: nothing it decided
but did not commit acts anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gen.ostinato.common.v1 import cluster_pb2, events_pb2
from ostinato import rpc, service, signing
from ostinato.errors import FailedPrecondition, InvalidArgument, NotActive, Unavailable
from ostinato.journal.cluster import Cluster, Member
from ostinato.journal.replicated import Journal, Timing, cluster_password
from ostinato.journal.shell import JournalShell, now_ms
from ostinato.launch import free_port

log = logging.getLogger(__name__)

# Served by passive nodes too.
OPEN_SERVICES = ("grpc.health.", "grpc.reflection.", "ostinato.common.v1.ClusterService/")


@dataclass
class NodeConfig:
    data_dir: Path
    cluster: Cluster = field(
        default_factory=lambda: Cluster.single("127.0.0.1:0", f"127.0.0.1:{free_port()}")
    )
    name: str = "primary"
    cluster_password: str | None = None
    # Whose signatures deployed items may carry; None only from code (tests of other parts).
    trust: signing.Verifier | None = None
    timing: Timing = field(default_factory=Timing)

    @property
    def member(self) -> Member:
        return self.cluster.member(self.name)


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="127.0.0.1:0", help="gRPC address of a single node (port 0: any)")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument(
        "--raft-address", help="HOST:PORT of a single node's journal replication (default: a free port)"
    )
    parser.add_argument(
        "--cluster",
        type=Path,
        help="JSON file naming the cluster's nodes (see ostinato/journal/cluster.py); needs --node",
    )
    parser.add_argument("--node", help="this node's name in --cluster")
    parser.add_argument(
        "--cluster-password",
        help="journal replication password; the same on every node of a cluster"
        " (default: made and kept in the data dir, which suits a single node only)",
    )
    parser.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="FILE",
        help="PEM certificates (signers' or CAs') whose signatures deployed items may carry (repeatable);"
        " without any, every signed item is rejected",
    )


def node_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> NodeConfig:
    try:
        trust = signing.Verifier.from_files(getattr(args, "trust", []))
    except InvalidArgument as e:
        parser.error(f"--trust: {e}")
    if args.cluster is None:
        if args.node:
            parser.error("--node needs --cluster")
        cluster = Cluster.single(args.listen, args.raft_address or f"127.0.0.1:{free_port()}")
        name = cluster.members[0].name
    else:
        if not args.node:
            parser.error("--cluster needs --node NAME")
        if len(cluster_members := _load(args.cluster, parser).members) > 1 and not args.cluster_password:
            parser.error("--cluster-password is required for a cluster of several nodes (the same on each)")
        cluster = Cluster(cluster_members)
        name = args.node
        try:
            cluster.member(name)
        except InvalidArgument as e:
            parser.error(f"--node: {e}")
    return NodeConfig(
        data_dir=args.data_dir,
        cluster=cluster,
        name=name,
        cluster_password=args.cluster_password,
        trust=trust,
    )


def _load(path: Path, parser: argparse.ArgumentParser) -> Cluster:
    try:
        return Cluster.load(path)
    except InvalidArgument as e:
        parser.error(f"--cluster: {e}")


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

    async def start(self, new_state: Callable[[], Any]) -> None:
        """Opens the journal; the node activates whenever it becomes the leader."""
        self.journal = Journal(
            data_dir=self.node.data_dir / "journal",
            self_address=self.node.member.raft,
            partners=self.node.cluster.partners(self.node.name),
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
        self.on_commit(events)
        self._wake.set()

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


class ClusterServicer:
    """ClusterService of a node: status of every node (asking each for its own), switch-over."""

    PEER_TIMEOUT = 1.0

    def __init__(self, node: JournaledNode) -> None:
        self.n = node

    async def GetClusterStatus(
        self, request: cluster_pb2.GetClusterStatusRequest, context: Any
    ) -> cluster_pb2.GetClusterStatusResponse:
        me = self.n.local_status()
        nodes = [me]
        if not request.local_only:
            others = [m for m in self.n.node.cluster.members if m.name != me.name]
            nodes += await asyncio.gather(*(self._peer(m) for m in others))
        active = next((n for n in nodes if n.role == cluster_pb2.NODE_ROLE_ACTIVE), None)
        for n in nodes:
            if active is not None and n.role != cluster_pb2.NODE_ROLE_UNREACHABLE:
                n.lag_events = max(0, active.last_event_id - n.last_event_id)
        return cluster_pb2.GetClusterStatusResponse(
            status=cluster_pb2.ClusterStatus(
                cluster=self.n.cluster_name, active_node=active.name if active else "", nodes=nodes
            )
        )

    async def _peer(self, member: Member) -> cluster_pb2.ClusterNode:
        from gen.ostinato.common.v1 import cluster_pb2_grpc

        channel = rpc.channel(member.address)
        try:
            stub = cluster_pb2_grpc.ClusterServiceStub(channel)
            response = await stub.GetClusterStatus(
                cluster_pb2.GetClusterStatusRequest(local_only=True), timeout=self.PEER_TIMEOUT
            )
            return response.status.nodes[0]
        except Exception as e:
            details = e.details() if hasattr(e, "details") else str(e)
            return cluster_pb2.ClusterNode(
                name=member.name,
                address=member.address,
                raft_address=member.raft,
                role=cluster_pb2.NODE_ROLE_UNREACHABLE,
                error=str(details).splitlines()[0] if details else type(e).__name__,
            )
        finally:
            await channel.close()

    async def Switchover(
        self, request: cluster_pb2.SwitchoverRequest, context: Any
    ) -> cluster_pb2.SwitchoverResponse:
        n = self.n
        if not n.active:  # only the active node can hand its role on
            raise n.not_active()
        cluster = n.node.cluster
        if request.to_node:
            target = cluster.member(request.to_node)
            if target.witness:
                raise InvalidArgument(f"{target.name} is a witness; it never becomes active", field="to_node")
            if target.name == n.node.name:
                raise InvalidArgument(f"{target.name} is active already", field="to_node")
            targets = [target]
        else:
            targets = [m for m in cluster.members if not m.witness and m.name != n.node.name]
            if not targets:
                raise FailedPrecondition(
                    f"{n.cluster_name} has no other full node to switch over to", field="to_node"
                )
        deadline = asyncio.get_running_loop().time() + 10.0
        # Raft hands over only to a node that holds the whole log; under load that takes tries.
        while n.journal.is_leader():
            for target in targets:
                try:
                    await n.journal.transfer_leadership(target.raft)
                except Exception:
                    continue
                try:
                    await asyncio.wait_for(n.journal.wait_deposed(), 1.0)
                except TimeoutError:
                    continue
                break
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable("switch-over did not complete within 10 s; the node stays active")
            await asyncio.sleep(0.02)
        while not n.journal.leader() and asyncio.get_running_loop().time() < deadline:
            await n.journal.changed(timeout=0.05)
        new = cluster.by_raft(n.journal.leader())
        return cluster_pb2.SwitchoverResponse(
            from_node=n.node.name, to_node=new.name if new else "", term=n.journal.term
        )


async def serve_node(
    name: str,
    node: JournaledNode,
    new_state: Callable[[], Any],
    registration: tuple[Callable[..., None], Any, str] | None,
    stop: asyncio.Event,
) -> None:
    """Serves the node, passive or active, until `stop`; announces its address once it knows its
    role (a single node: once active)."""
    from gen.ostinato.common.v1 import cluster_pb2_grpc

    await node.start(new_state)
    registrations = [
        (
            cluster_pb2_grpc.add_ClusterServiceServicer_to_server,
            ClusterServicer(node),
            rpc.service_name(cluster_pb2, "ClusterService"),
        )
    ]
    if registration is not None:
        registrations.append(registration)
    server = await rpc.start_server(node.node.member.address, registrations, guard=node.guard)
    node.address = server.address
    await node.role_known()
    service.announce(name, server.address, node.node.data_dir)
    await stop.wait()
    await server.stop(1.0)
    await node.stop()
