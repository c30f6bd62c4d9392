"""Steady-state cost of replication: order throughput with single nodes against three-node clusters.

Per topology (single-node controller and director, then three-node controller and director
clusters, in the same run): a one-job workflow (trivial shell job, processLimit 50), `orders`
orders submitted through JOC with at most `concurrency` in flight, each followed at JOC
(WatchOrder) until it finished. orders/s = orders / (first submit .. last finish).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from gen.ostinato.common.v1 import items_pb2
from gen.ostinato.joc.v1 import joc_pb2, joc_pb2_grpc
from ostinato.topology import Topology, TopologyConfig

WORKFLOW_PATH = "/bench/throughput"
WORKFLOW = {
    "instructions": [{"execute": {"jobName": "true"}}],
    "jobs": {
        "true": {
            "agent": "agent-1",
            "processLimit": 50,
            "executable": {"shellScript": {"script": "true"}},
        }
    },
}
WARM_UP = 5
ORDER_TIMEOUT_S = 60.0


async def throughput(topology: Topology, orders: int, concurrency: int) -> dict[str, Any]:
    channel = topology.channel(topology.joc_address)
    inventory = joc_pb2_grpc.InventoryServiceStub(channel)
    deployment = joc_pb2_grpc.DeploymentServiceStub(channel)
    stub = joc_pb2_grpc.OrderServiceStub(channel)
    await inventory.PutObject(
        joc_pb2.PutObjectRequest(
            path=WORKFLOW_PATH, type=items_pb2.ITEM_TYPE_WORKFLOW, json=json.dumps(WORKFLOW)
        )
    )
    deployed = await deployment.Deploy(joc_pb2.DeployRequest(paths=[WORKFLOW_PATH]))
    assert [d.status for d in deployed.deployments] == [joc_pb2.DEPLOYMENT_STATUS_DEPLOYED], deployed
    room = asyncio.Semaphore(concurrency)
    failed: list[str] = []

    async def one() -> None:
        async with room:
            added = await stub.AddOrder(joc_pb2.AddOrderRequest(workflow_path=WORKFLOW_PATH), timeout=30)
            async for r in stub.WatchOrder(
                joc_pb2.WatchOrderRequest(order_id=added.order_id), timeout=ORDER_TIMEOUT_S
            ):
                kind = r.event.WhichOneof("kind")
                if kind in ("order_finished", "order_failed"):
                    if kind != "order_finished":
                        failed.append(added.order_id)
                    return
            failed.append(added.order_id)

    try:
        await asyncio.gather(*(one() for _ in range(WARM_UP)))  # connections, caches, processes
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(orders)))
        elapsed = time.perf_counter() - started
    finally:
        await channel.close()
    return {
        "orders": orders,
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "orders_per_s": round(orders / elapsed, 1),
        "not_finished": len(failed),
    }


def config(shape: str, subagents: int = 2) -> TopologyConfig:
    """Ephemeral ports, the controller and the director both of this cluster shape."""
    config = TopologyConfig.ephemeral(subagents=subagents)
    config.controller_cluster = shape
    config.director_cluster = shape
    return config


def measure(shape: str, orders: int, concurrency: int, data_dir: Path) -> dict[str, Any]:
    topology = Topology(data_dir, config(shape))
    topology.start()
    try:
        return asyncio.run(throughput(topology, orders, concurrency))
    finally:
        topology.stop()


def run(orders: int, concurrency: int = 20, log: Any = print) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for label, shape in (("single", "single"), ("three", "three")):
        with tempfile.TemporaryDirectory(prefix=f"ostinato-bench-replication-{shape}-") as tmp:
            results[label] = measure(shape, orders, concurrency, Path(tmp))
        figures = results[label]
        log(f"  {label}: {figures['orders_per_s']} orders/s ({orders} orders in {figures['seconds']} s)")
    results["ratio_three_to_single"] = round(
        results["three"]["orders_per_s"] / results["single"]["orders_per_s"], 2
    )
    return results
