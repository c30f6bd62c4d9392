"""Serving a controller or director node: its own service beside the cluster service."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from gen.ostinato.common.v1 import cluster_pb2
from ostinato import rpc, service
from ostinato.cluster.node import JournaledNode
from ostinato.cluster.servicer import ClusterServicer


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
    server = await rpc.start_server(
        node.node.member.address, registrations, guard=node.guard, service=f"{name} {node.cluster_name}"
    )
    node.address = server.address
    await node.role_known()
    service.announce(name, server.address, node.node.data_dir)
    await stop.wait()
    await server.stop(1.0)
    await node.stop()
