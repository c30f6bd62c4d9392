"""Order latency through the whole local topology, against a baseline measured in the same run.

latency: submit (JOC AddOrder) to the order's OrderFinished event at JOC, one trivial shell job,
orders one after another. Baseline: spawning `/bin/sh -c true` with subprocess on this machine,
the floor any job execution pays. Figures are printed and written to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gen.ostinato.common.v1 import items_pb2
from gen.ostinato.joc.v1 import joc_pb2, joc_pb2_grpc
from ostinato import rpc
from ostinato.topology import ROOT, Topology, TopologyConfig

TRIVIAL = {
    "instructions": [{"execute": {"jobName": "true"}}],
    "jobs": {"true": {"agent": "agent-1", "executable": {"shellScript": {"script": "true"}}}},
}


def spawn_baseline(n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(["/bin/sh", "-c", "true"], check=True)
        times.append(time.perf_counter() - t)
    return times


async def order_latencies(joc_address: str, n: int) -> list[float]:
    channel = rpc.channel(joc_address)
    inventory = joc_pb2_grpc.InventoryServiceStub(channel)
    deployment = joc_pb2_grpc.DeploymentServiceStub(channel)
    orders = joc_pb2_grpc.OrderServiceStub(channel)
    await inventory.PutObject(
        joc_pb2.PutObjectRequest(
            path="/bench/true", type=items_pb2.ITEM_TYPE_WORKFLOW, json=json.dumps(TRIVIAL)
        )
    )
    await deployment.Deploy(joc_pb2.DeployRequest(paths=["/bench/true"]))
    times = []
    for i in range(n + 2):  # the first two warm up connections and caches
        t = time.perf_counter()
        added = await orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/bench/true"))
        async for r in orders.WatchOrder(joc_pb2.WatchOrderRequest(order_id=added.order_id)):
            if r.event.WhichOneof("kind") in ("order_finished", "order_failed"):
                assert r.event.WhichOneof("kind") == "order_finished", r
                break
        if i >= 2:
            times.append(time.perf_counter() - t)
    await channel.close()
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "n": len(times),
        "median_ms": round(statistics.median(times) * 1000, 2),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 2),
        "max_ms": round(max(times) * 1000, 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("-n", type=int, default=20, help="orders (and baseline spawns) to time")
    args = p.parse_args()
    baseline = summary(spawn_baseline(args.n))
    with tempfile.TemporaryDirectory(prefix="ostinato-bench-") as tmp:
        topology = Topology(Path(tmp), TopologyConfig.ephemeral())
        t = time.perf_counter()
        topology.start()
        startup_s = time.perf_counter() - t
        try:
            latency = summary(asyncio.run(order_latencies(topology.joc_address, args.n)))
        finally:
            topology.stop()
    result = {
        "baseline_spawn_sh_true": baseline,
        "order_submit_to_finished_one_trivial_job": latency,
        "ratio_median_order_to_spawn": round(latency["median_ms"] / baseline["median_ms"], 1),
        "topology_startup_s": round(startup_s, 2),
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
