"""The ClusterService every controller and director node serves, passive ones too."""

from __future__ import annotations

import asyncio
from typing import Any

from gen.ostinato.common.v1 import cluster_pb2
from ostinato import rpc
from ostinato.cluster.members import Member
from ostinato.cluster.node import JournaledNode
from ostinato.errors import FailedPrecondition, InvalidArgument, Unavailable


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
