"""Jobs per second through the whole topology against the bare spawn rate of this machine, and the
director's scheduling latency, measured in one run.

spawn: `spawns` runs of `/bin/sh -c true` with subprocess.run, one after another and `parallel` at
a time (threads); processes/s = runs / elapsed. Also the floor of the latency below: from the
subprocess.run call to the time `sh -c 'date +%s%N'` records, the same first line the jobs run.

throughput: JOC, controller, director and three subagents on ephemeral ports; a one-job workflow
(trivial shell job `true`, processLimit 50); `orders` orders submitted through JOC with at most
`concurrency` in flight, each followed (WatchOrder) until it finished. jobs/s = orders / (first
submit .. last finish); the ratios divide it by the bare spawn rates.

scheduling latency: the same topology, a job whose first line appends `date +%s%N` and its order
id to a file. Ready is the timestamp of the order's event just before its OrderProcessingStarted:
the director's OrderStarted, OrderAttached or OrderMoved, after which the order waits for its job
at the agent. Started is the time the job recorded. Both are this machine's wall clock. Event
timestamps have millisecond resolution (floored), so each latency reads up to 1 ms high. Measured
under load (`orders` orders, `concurrency` in flight, below the process limit: no order waits for
a slot) and one order at a time (`idle` orders).
"""

from __future__ import annotations

import asyncio
import json
import shlex
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gen.ostinato.common.v1 import items_pb2
from gen.ostinato.joc.v1 import joc_pb2, joc_pb2_grpc
from ostinato.topology import Topology, TopologyConfig

SUBAGENTS = 3
PROCESS_LIMIT = 50
TRUE_PATH = "/bench/jobs-true"
MARK_PATH = "/bench/jobs-mark"
WARM_UP = 5
ORDER_TIMEOUT_S = 60.0
# The director's events after which an order waits for its job at the agent.
READY_KINDS = frozenset({"order_attached", "order_started", "order_moved"})
FIRST_LINE = "date +%s%N"


def workflow(script: str) -> dict[str, Any]:
    return {
        "instructions": [{"execute": {"jobName": "job"}}],
        "jobs": {
            "job": {
                "agent": "agent-1",
                "processLimit": PROCESS_LIMIT,
                "executable": {"shellScript": {"script": script}},
            }
        },
    }


def mark_script(starts: Path) -> str:
    # One short append per job: O_APPEND writes this small land whole, also from parallel jobs.
    return f'echo "$({FIRST_LINE}) $JS7_ORDER_ID" >> {shlex.quote(str(starts))}'


# --- the bare spawn rate ---------------------------------------------------------------------


def _spawn_true(_: int = 0) -> None:
    subprocess.run(["/bin/sh", "-c", "true"], check=True)


def spawn_rates(n: int, parallel: int) -> dict[str, Any]:
    _spawn_true()  # page cache, first fork
    started = time.perf_counter()
    for _ in range(n):
        _spawn_true()
    sequential = n / (time.perf_counter() - started)
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(_spawn_true, range(parallel)))  # threads up before the clock starts
        started = time.perf_counter()
        list(pool.map(_spawn_true, range(n)))
        in_parallel = n / (time.perf_counter() - started)
    to_first_line = []
    for _ in range(n):
        called = time.time_ns()
        out = subprocess.run(["/bin/sh", "-c", FIRST_LINE], check=True, capture_output=True, text=True)
        to_first_line.append((int(out.stdout) - called) / 1e6)
    return {
        "runs": n,
        "sequential_per_s": round(sequential, 1),
        "parallel": parallel,
        "parallel_per_s": round(in_parallel, 1),
        "call_to_first_line_ms": summary(to_first_line),
    }


# --- orders through the topology ------------------------------------------------------------


@dataclass
class Pass:
    seconds: float = 0.0
    not_finished: list[str] = field(default_factory=list)
    # order id -> (timestamp in ms of the event before OrderProcessingStarted, that event's kind)
    ready: dict[str, tuple[int, str]] = field(default_factory=dict)


async def deploy(channel: Any, path: str, script: str) -> None:
    inventory = joc_pb2_grpc.InventoryServiceStub(channel)
    deployment = joc_pb2_grpc.DeploymentServiceStub(channel)
    await inventory.PutObject(
        joc_pb2.PutObjectRequest(
            path=path, type=items_pb2.ITEM_TYPE_WORKFLOW, json=json.dumps(workflow(script))
        )
    )
    deployed = await deployment.Deploy(joc_pb2.DeployRequest(paths=[path]))
    assert [d.status for d in deployed.deployments] == [joc_pb2.DEPLOYMENT_STATUS_DEPLOYED], deployed


async def drive(stub: joc_pb2_grpc.OrderServiceStub, path: str, orders: int, concurrency: int) -> Pass:
    """Submits `orders` orders, at most `concurrency` in flight, and follows each to its end."""
    room = asyncio.Semaphore(concurrency)
    result = Pass()

    async def one() -> None:
        async with room:
            added = await stub.AddOrder(joc_pb2.AddOrderRequest(workflow_path=path), timeout=30)
            before: tuple[int, str] | None = None
            async for r in stub.WatchOrder(
                joc_pb2.WatchOrderRequest(order_id=added.order_id), timeout=ORDER_TIMEOUT_S
            ):
                kind = r.event.WhichOneof("kind")
                if kind == "order_processing_started" and before is not None:
                    result.ready[added.order_id] = before
                elif kind in ("order_finished", "order_failed"):
                    if kind != "order_finished":
                        result.not_finished.append(added.order_id)
                    return
                if kind != "order_std_written":  # output is no step of the order
                    before = (r.event.timestamp.ToMilliseconds(), kind or "")
            result.not_finished.append(added.order_id)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(orders)))
    result.seconds = time.perf_counter() - started
    return result


def read_starts(path: Path) -> dict[str, int]:
    """Order id -> wall-clock ns its job recorded at its first line."""
    starts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stamp, _, order_id = line.strip().partition(" ")
        if stamp and order_id:
            starts.setdefault(order_id, int(stamp))
    return starts


def latencies(done: Pass, starts: dict[str, int]) -> dict[str, Any]:
    values = []
    kinds: Counter[str] = Counter()
    unmatched = 0
    for order_id, (ready_ms, kind) in done.ready.items():
        kinds[kind] += 1
        if kind not in READY_KINDS or order_id not in starts:
            unmatched += 1
            continue
        values.append(starts[order_id] / 1e6 - ready_ms)
    return {
        **summary(values),
        "ready_after": dict(sorted(kinds.items())),
        "unmatched": unmatched,
        "not_finished": len(done.not_finished),
    }


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[round(q * (len(ordered) - 1))], 2)

    return {
        "n": len(values),
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
        "max_ms": round(ordered[-1], 2),
        "mean_ms": round(statistics.fmean(values), 2),
    }


async def measure(topology: Topology, work: Path, orders: int, concurrency: int, idle: int) -> dict[str, Any]:
    channel = topology.channel(topology.joc_address)
    stub = joc_pb2_grpc.OrderServiceStub(channel)
    starts = work / "job-starts.txt"
    starts.touch()
    try:
        await deploy(channel, TRUE_PATH, "true")
        await deploy(channel, MARK_PATH, mark_script(starts))
        await drive(stub, TRUE_PATH, WARM_UP, WARM_UP)  # connections, caches, first processes
        throughput = await drive(stub, TRUE_PATH, orders, concurrency)
        await drive(stub, MARK_PATH, WARM_UP, WARM_UP)
        loaded = await drive(stub, MARK_PATH, orders, concurrency)
        one_by_one = await drive(stub, MARK_PATH, idle, 1)
    finally:
        await channel.close()
    recorded = read_starts(starts)
    return {
        "throughput": {
            "orders": orders,
            "concurrency": concurrency,
            "subagents": SUBAGENTS,
            "process_limit": PROCESS_LIMIT,
            "seconds": round(throughput.seconds, 2),
            "jobs_per_s": round(orders / throughput.seconds, 1),
            "not_finished": len(throughput.not_finished),
        },
        "scheduling_latency": {
            "loaded": {"concurrency": concurrency, **latencies(loaded, recorded)},
            "idle": {"concurrency": 1, **latencies(one_by_one, recorded)},
        },
    }


def run(
    orders: int = 300,
    concurrency: int = 20,
    spawns: int = 300,
    parallel: int = 4,
    idle: int = 20,
    log: Any = print,
    insecure: bool = False,
) -> dict[str, Any]:
    """`insecure`: plain text between the services instead of mutual TLS."""
    spawn = spawn_rates(spawns, parallel)
    log(
        f"  bare spawn of sh -c true: {spawn['sequential_per_s']}/s one by one,"
        f" {spawn['parallel_per_s']}/s {parallel} at a time"
    )
    with tempfile.TemporaryDirectory(prefix="ostinato-bench-jobs-") as tmp:
        config = TopologyConfig.ephemeral(subagents=SUBAGENTS)
        config.insecure = insecure
        topology = Topology(Path(tmp) / "topology", config)
        started = time.perf_counter()
        topology.start()
        startup_s = time.perf_counter() - started
        try:
            figures = asyncio.run(measure(topology, Path(tmp), orders, concurrency, idle))
        finally:
            topology.stop()
    jobs_per_s = figures["throughput"]["jobs_per_s"]
    loaded = figures["scheduling_latency"]["loaded"]
    log(
        f"  {'plain text' if insecure else 'mutual TLS'}:"
        f" {jobs_per_s} jobs/s ({orders} orders, {concurrency} in flight, {SUBAGENTS} subagents);"
        f" scheduling latency p50 {loaded.get('p50_ms')} ms, p99 {loaded.get('p99_ms')} ms,"
        f" max {loaded.get('max_ms')} ms"
    )
    return {
        "spawn": spawn,
        **figures,
        "ratio_jobs_to_spawn_sequential": round(jobs_per_s / spawn["sequential_per_s"], 4),
        "ratio_jobs_to_spawn_parallel": round(jobs_per_s / spawn["parallel_per_s"], 4),
        "topology_startup_s": round(startup_s, 2),
    }
