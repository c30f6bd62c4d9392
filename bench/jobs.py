"""Jobs per second through the whole topology against the bare spawn rate of this machine, what
each process spends per order, and the director's scheduling latency, measured in one run.

spawn: `spawns` runs of `/bin/sh -c true` with subprocess.run, one after another and `parallel` at
a time (threads); processes/s = runs / elapsed. Also the floor of the latency below: from the
subprocess.run call to the time `sh -c 'date +%s%N'` records, the same first line the jobs run.

throughput: JOC, controller, director and three subagents on ephemeral ports; a one-job workflow
(trivial shell job `true`, processLimit 50); `orders` orders submitted through JOC with at most
`concurrency` in flight, each followed (WatchOrder) until it finished. jobs/s = orders finished /
(first submit .. last finish); the ratios divide it by the bare spawn rates. The same again with
three-node controller and director clusters (`cluster`); cluster_ratio = their jobs/s / single
nodes' jobs/s.

CPU: per service process (JOC, each controller and director node, each subagent), utime + stime
over the throughput window (first submit .. last finish) divided by the orders (bench/procstat.py).

scheduling latency (single nodes): the same topology, a job whose first line appends
`date +%s%N` and its order id to a file. Ready is the timestamp of the order's event just before
its OrderProcessingStarted: the director's OrderStarted, OrderAttached or OrderMoved, after which
the order waits for its job at the agent. Started is the time the job recorded. Both are this
machine's wall clock. Event timestamps have millisecond resolution (floored), so each latency
reads up to 1 ms high. Measured under load (`orders` orders, `concurrency` in flight, below the
process limit: no order waits for a slot) and one order at a time (`idle` orders).
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

import grpc

from bench import procstat, replication
from gen.ostinato.common.v1 import items_pb2
from gen.ostinato.joc.v1 import joc_pb2, joc_pb2_grpc
from ostinato.topology import Topology

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


def spawn_seconds(n: int, parallel: int) -> tuple[float, float]:
    """Seconds for `n` runs of `sh -c true`: one after another, and `parallel` at a time."""
    _spawn_true()  # page cache, first fork
    started = time.perf_counter()
    for _ in range(n):
        _spawn_true()
    sequential = time.perf_counter() - started
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(_spawn_true, range(parallel)))  # threads up before the clock starts
        started = time.perf_counter()
        list(pool.map(_spawn_true, range(n)))
        in_parallel = time.perf_counter() - started
    return sequential, in_parallel


def spawn_rates(n: int, parallel: int) -> dict[str, Any]:
    sequential_s, parallel_s = spawn_seconds(n, parallel)
    to_first_line = []
    for _ in range(n):
        called = time.time_ns()
        out = subprocess.run(["/bin/sh", "-c", FIRST_LINE], check=True, capture_output=True, text=True)
        to_first_line.append((int(out.stdout) - called) / 1e6)
    return {
        "runs": n,
        "sequential_per_s": round(n / sequential_s, 1),
        "parallel": parallel,
        "parallel_per_s": round(n / parallel_s, 1),
        "call_to_first_line_ms": summary(to_first_line),
    }


# --- orders through the topology ------------------------------------------------------------


@dataclass
class Pass:
    seconds: float = 0.0
    finished: int = 0
    not_finished: list[str] = field(default_factory=list)
    not_submitted: int = 0  # the deadline came before their turn
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


async def drive(
    stub: joc_pb2_grpc.OrderServiceStub,
    path: str,
    orders: int,
    concurrency: int,
    budget_s: float | None = None,
) -> Pass:
    """Submits `orders` orders, at most `concurrency` in flight, and follows each to its end.
    With a budget, orders not finished when it is spent count as not finished (those not yet
    submitted as not submitted), and the pass ends then."""
    room = asyncio.Semaphore(concurrency)
    result = Pass()
    deadline = None if budget_s is None else time.monotonic() + budget_s

    def time_left() -> float:
        return ORDER_TIMEOUT_S if deadline is None else min(ORDER_TIMEOUT_S, deadline - time.monotonic())

    async def one() -> None:
        async with room:
            if time_left() <= 0:
                result.not_submitted += 1
                return
            order_id = ""
            try:
                added = await stub.AddOrder(joc_pb2.AddOrderRequest(workflow_path=path), timeout=30)
                order_id = added.order_id
                if await follow(order_id):
                    result.finished += 1
                    return
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
            result.not_finished.append(order_id)

    async def follow(order_id: str) -> bool:
        before: tuple[int, str] | None = None
        async for r in stub.WatchOrder(joc_pb2.WatchOrderRequest(order_id=order_id), timeout=time_left()):
            kind = r.event.WhichOneof("kind")
            if kind == "order_processing_started" and before is not None:
                result.ready[order_id] = before
            elif kind in ("order_finished", "order_failed"):
                return kind == "order_finished"
            if kind != "order_std_written":  # output is no step of the order
                before = (r.event.timestamp.ToMilliseconds(), kind or "")
        return False

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


def throughput(done: Pass, orders: int, concurrency: int) -> dict[str, Any]:
    return {
        "orders": orders,
        "concurrency": concurrency,
        "subagents": SUBAGENTS,
        "process_limit": PROCESS_LIMIT,
        "seconds": round(done.seconds, 2),
        "jobs_per_s": round(done.finished / done.seconds, 1),
        "not_finished": len(done.not_finished) + done.not_submitted,
    }


async def measure(
    topology: Topology, work: Path, orders: int, concurrency: int, idle: int | None
) -> dict[str, Any]:
    """Throughput and CPU per order; with `idle` (a number of orders), scheduling latency too."""
    channel = topology.channel(topology.joc_address)
    stub = joc_pb2_grpc.OrderServiceStub(channel)
    starts = work / "job-starts.txt"
    starts.touch()
    try:
        await deploy(channel, TRUE_PATH, "true")
        await drive(stub, TRUE_PATH, WARM_UP, WARM_UP)  # connections, caches, first processes
        window = procstat.CpuWindow.start(procstat.pids(topology))
        done = await drive(stub, TRUE_PATH, orders, concurrency)
        figures: dict[str, Any] = {"throughput": throughput(done, orders, concurrency)}
        figures.update(window.stop(done.finished))
        if idle is not None:
            await deploy(channel, MARK_PATH, mark_script(starts))
            await drive(stub, MARK_PATH, WARM_UP, WARM_UP)
            loaded = await drive(stub, MARK_PATH, orders, concurrency)
            one_by_one = await drive(stub, MARK_PATH, idle, 1)
            recorded = read_starts(starts)
            figures["scheduling_latency"] = {
                "loaded": {"concurrency": concurrency, **latencies(loaded, recorded)},
                "idle": {"concurrency": 1, **latencies(one_by_one, recorded)},
            }
    finally:
        await channel.close()
    return figures


def start_topology(shape: str, data_dir: Path, insecure: bool = False) -> tuple[Topology, float]:
    """JOC, the controller and the director of this cluster shape (bench/replication.py) and
    SUBAGENTS subagents, started (mutual TLS unless `insecure`); and how long starting took."""
    config = replication.config(shape, SUBAGENTS)
    config.insecure = insecure
    topology = Topology(data_dir, config)
    started = time.perf_counter()
    topology.start()
    return topology, time.perf_counter() - started


def measure_shape(
    shape: str, orders: int, concurrency: int, idle: int | None, insecure: bool = False
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"ostinato-bench-jobs-{shape}-") as tmp:
        topology, startup_s = start_topology(shape, Path(tmp) / "topology", insecure)
        try:
            figures = asyncio.run(measure(topology, Path(tmp), orders, concurrency, idle))
        finally:
            topology.stop()
    return {**figures, "topology_startup_s": round(startup_s, 2)}


def run(
    orders: int = 300,
    concurrency: int = 20,
    spawns: int = 300,
    parallel: int = 4,
    idle: int = 20,
    clusters: bool = True,
    log: Any = print,
    insecure: bool = False,
) -> dict[str, Any]:
    """`insecure`: plain text between the services instead of mutual TLS."""
    spawn = spawn_rates(spawns, parallel)
    log(
        f"  bare spawn of sh -c true: {spawn['sequential_per_s']}/s one by one,"
        f" {spawn['parallel_per_s']}/s {parallel} at a time"
    )
    single = measure_shape("single", orders, concurrency, idle, insecure)
    jobs_per_s = single["throughput"]["jobs_per_s"]
    result: dict[str, Any] = {
        "spawn": spawn,
        **single,
        "ratio_to_spawn_sequential": round(jobs_per_s / spawn["sequential_per_s"], 4),
        "ratio_to_spawn_parallel": round(jobs_per_s / spawn["parallel_per_s"], 4),
    }
    loaded = single["scheduling_latency"]["loaded"]
    log(
        f"  single nodes: {jobs_per_s} jobs/s ({orders} orders, {concurrency} in flight, {SUBAGENTS}"
        f" subagents), {result['ratio_to_spawn_sequential']}x the sequential spawn rate;"
        f" scheduling latency p50 {loaded.get('p50_ms')} ms, p99 {loaded.get('p99_ms')} ms,"
        f" max {loaded.get('max_ms')} ms"
    )
    log(f"    CPU ms per order: {procstat.format_cpu(single['cpu_ms_per_order'])}")
    if clusters:
        cluster = measure_shape("three", orders, concurrency, None)
        cluster_jobs_per_s = cluster["throughput"]["jobs_per_s"]
        cluster["ratio_to_spawn_sequential"] = round(cluster_jobs_per_s / spawn["sequential_per_s"], 4)
        result["cluster"] = cluster
        result["cluster_ratio"] = round(cluster_jobs_per_s / jobs_per_s, 2)
        log(
            f"  three-node controller and director clusters: {cluster_jobs_per_s} jobs/s,"
            f" {result['cluster_ratio']}x single nodes"
        )
        log(f"    CPU ms per order: {procstat.format_cpu(cluster['cpu_ms_per_order'])}")
    return result
