"""Benchmarks of the whole local topology:
`python -m bench [--only latency|failover|replication|jobs|held|dailyplan|joc-failover]`.

latency: submit (JOC AddOrder) to the order's OrderFinished event at JOC, one trivial shell job,
orders one after another, the topology idle otherwise (latency.order_submit_to_finished_p50_ms);
the same in plain text, and with every service exporting its spans to an OTLP receiver
(latency.ratio_p50_traced_to_untraced).
Baseline: spawning `/bin/sh -c true` with subprocess on this machine, the floor any job execution
pays.
failover: fail-over time of three-node controller and director clusters under a flow of orders
(bench/failover.py).
replication: order throughput with single nodes against three-node clusters (bench/replication.py).
jobs: trivial jobs/s through JOC, controller, director and three subagents against the bare spawn
rate, CPU ms per order of each process, the same with three-node controller and director clusters,
and the director's scheduling latency from order ready to process started (bench/jobs.py).
held: jobs/s with 1,000, 10,000 and 100,000 orders held for tomorrow against none held, memory per
held order, and the time for 10,000 orders due at the same second to start (bench/held.py).
dailyplan: plan and submit one date of 100,000 orders against a bare bulk insert of the same rows,
and the controller's and director's memory per waiting order (bench/dailyplan.py).
joc-failover: take-over time of a two-instance JOC cluster on PostgreSQL (kill -9 of the active
instance until the other accepts a write) while CLI orders and deployments keep coming, with the
CLI's errors and lost orders (bench/jocfailover.py).

Figures are printed and written to bench/results/latest.json; a run of some parts only keeps the
other parts' figures from the file's previous run (see "measured_at").
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import dailyplan, failover, held, jobs, jocfailover, otlp, replication
from gen.ostinato.common.v1 import items_pb2
from gen.ostinato.joc.v1 import joc_pb2, joc_pb2_grpc
from ostinato.topology import ROOT, Topology, TopologyConfig

PARTS = ("latency", "failover", "replication", "jobs", "held", "dailyplan", "joc-failover")

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


async def order_latencies(topology: Topology, n: int) -> list[float]:
    channel = topology.channel(topology.joc_address)
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
        "p50_ms": round(statistics.median(times) * 1000, 2),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 2),
        "max_ms": round(max(times) * 1000, 2),
    }


def latency(n: int) -> dict[str, Any]:
    baseline = summary(spawn_baseline(n))
    order, startup_s, _ = topology_latency(n, insecure=False)
    plain, _, _ = topology_latency(n, insecure=True)
    traced, _, spans = topology_latency(n, insecure=False, traced=True)
    return {
        "order_submit_to_finished_p50_ms": order["p50_ms"],
        "order_submit_to_finished_plain_text_p50_ms": plain["p50_ms"],
        "order_submit_to_finished_traced_p50_ms": traced["p50_ms"],
        "baseline_spawn_sh_true": baseline,
        "order_submit_to_finished_one_trivial_job": order,
        "order_submit_to_finished_plain_text": plain,
        # Every service exporting its spans over OTLP (mutual TLS) to a real receiver.
        "order_submit_to_finished_traced": traced,
        "spans_exported_traced": spans,
        "ratio_p50_order_to_spawn": round(order["p50_ms"] / baseline["p50_ms"], 1),
        "ratio_p50_tls_to_plain_text": round(order["p50_ms"] / plain["p50_ms"], 2),
        "ratio_p50_traced_to_untraced": round(traced["p50_ms"] / order["p50_ms"], 2),
        "topology_startup_s": round(startup_s, 2),
    }


def topology_latency(n: int, insecure: bool, traced: bool = False) -> tuple[dict[str, float], float, int]:
    """Order latencies, how long the topology took to start (making its certificates), and how
    many spans reached the OTLP receiver when `traced`."""
    with tempfile.TemporaryDirectory(prefix="ostinato-bench-") as tmp:
        config = TopologyConfig.ephemeral()
        config.insecure = insecure
        topology = Topology(Path(tmp), config)
        receiver = otlp.start(topology.tls_dir, topology.certificates()["cli"]) if traced else None
        if receiver is not None:
            topology.env = receiver.env
        t = time.perf_counter()
        topology.start()
        startup_s = time.perf_counter() - t
        try:
            latencies = summary(asyncio.run(order_latencies(topology, n)))
        finally:
            topology.stop()  # flushes the exporters
            if receiver is not None:
                receiver.stop()
        return latencies, startup_s, len(receiver.receiver.all()) if receiver is not None else 0


def sizes(text: str) -> list[int]:
    """--held 1000,10000,100000"""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, got {text!r}")
    return values


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument(
        "--only",
        action="append",
        choices=PARTS,
        help="run only this part (repeatable; default: all of them)",
    )
    p.add_argument("-n", type=int, default=20, help="latency: orders (and baseline spawns) to time")
    p.add_argument("--kills", type=int, default=20, help="failover: kills per cluster kind")
    p.add_argument(
        "--order-interval-ms",
        type=int,
        default=round(failover.ORDER_INTERVAL_S * 1000),
        help="failover: one order every this many ms",
    )
    p.add_argument("--orders", type=int, default=200, help="replication: orders per topology")
    p.add_argument("--concurrency", type=int, default=20, help="replication: orders in flight")
    p.add_argument(
        "--jobs-orders",
        type=int,
        default=1000,
        help="jobs, held: orders per measurement (fewer: a noisier figure)",
    )
    p.add_argument("--jobs-concurrency", type=int, default=20, help="jobs, held: orders in flight")
    p.add_argument("--spawns", type=int, default=300, help="jobs: bare spawns of sh -c true to time")
    p.add_argument("--spawn-parallel", type=int, default=4, help="jobs, held: bare spawns at a time")
    p.add_argument(
        "--no-clusters",
        action="store_true",
        help="jobs: single nodes only, without the three-node clusters",
    )
    p.add_argument(
        "--held",
        type=sizes,
        default=list(held.SIZES),
        help="held: numbers of orders held, in turn (default: " + ",".join(map(str, held.SIZES)) + ")",
    )
    p.add_argument("--due", type=int, default=held.DUE, help="held: orders due at the same second (0: none)")
    p.add_argument(
        "--held-timeout",
        type=float,
        default=held.TIMEOUT_S,
        help="held: seconds each wait may take (adding, holding, starting the due orders)",
    )
    p.add_argument(
        "--held-jobs-budget",
        type=float,
        default=held.JOBS_BUDGET_S,
        help="held: seconds each jobs/s measurement may take (--jobs-orders orders)",
    )
    p.add_argument("--plan-schedules", type=int, default=1000, help="dailyplan: schedules of 100 starts")
    p.add_argument(
        "--failover-data-dir",
        type=Path,
        help="failover: keep the topology's data (node logs, journals, job starts) here",
    )
    p.add_argument("--joc-kills", type=int, default=10, help="joc-failover: kills of the active JOC instance")
    args = p.parse_args()
    parts = args.only or list(PARTS)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    latest = out / "latest.json"
    try:
        result: dict[str, Any] = json.loads(latest.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        result = {}
    measured_at = result.setdefault("measured_at", {})
    started = time.perf_counter()
    if "latency" in parts:
        print("latency ...", flush=True)
        for legacy in LEGACY_LATENCY_KEYS:
            result.pop(legacy, None)
        result["latency"] = latency(args.n)
        measured_at["latency"] = _now()
    if "failover" in parts:
        print(f"failover: {args.kills} kills of the active controller node, then of the active director node")
        if args.failover_data_dir:
            args.failover_data_dir.mkdir(parents=True, exist_ok=True)
        result["failover"] = failover.run(
            args.kills,
            data_dir=args.failover_data_dir,
            interval=args.order_interval_ms / 1000,
            log=lambda line: print(line, flush=True),
        )
        measured_at["failover"] = _now()
    if "replication" in parts:
        print(f"replication: {args.orders} orders, {args.concurrency} in flight, single nodes then clusters")
        result["replication"] = replication.run(
            args.orders, args.concurrency, log=lambda line: print(line, flush=True)
        )
        measured_at["replication"] = _now()
    if "jobs" in parts:
        print(
            f"jobs: {args.jobs_orders} orders, {args.jobs_concurrency} in flight, {jobs.SUBAGENTS} subagents;"
            f" {args.spawns} bare spawns"
        )
        result["jobs"] = jobs.run(
            args.jobs_orders,
            args.jobs_concurrency,
            spawns=args.spawns,
            parallel=args.spawn_parallel,
            clusters=not args.no_clusters,
            log=lambda line: print(line, flush=True),
        )
        # The same single nodes in plain text (--insecure), for what mutual TLS costs.
        plain = jobs.run(
            args.jobs_orders,
            args.jobs_concurrency,
            spawns=args.spawns,
            parallel=args.spawn_parallel,
            clusters=False,
            log=lambda line: print(f"plain text: {line.strip()}", flush=True),
            insecure=True,
        )
        result["jobs"]["plain_text"] = {k: plain[k] for k in ("throughput", "cpu_ms_per_order")}
        result["jobs"]["ratio_jobs_tls_to_plain_text"] = round(
            result["jobs"]["throughput"]["jobs_per_s"] / plain["throughput"]["jobs_per_s"], 3
        )
        measured_at["jobs"] = _now()
    if "held" in parts:
        print(
            f"held: {', '.join(map(str, args.held))} orders held, {args.due} due at once;"
            f" jobs/s with {args.jobs_orders} orders, {args.jobs_concurrency} in flight"
        )
        result["held"] = held.run(
            args.held,
            args.due,
            args.jobs_orders,
            args.jobs_concurrency,
            parallel=args.spawn_parallel,
            timeout_s=args.held_timeout,
            jobs_budget_s=args.held_jobs_budget,
            log=lambda line: print(line, flush=True),
        )
        measured_at["held"] = _now()
    if "dailyplan" in parts:
        print(f"dailyplan: {args.plan_schedules} schedules of 100 starts, one date")
        result["dailyplan"] = dailyplan.run(args.plan_schedules, log=lambda line: print(line, flush=True))
        measured_at["dailyplan"] = _now()
    if "joc-failover" in parts:
        print(f"joc-failover: {args.joc_kills} kills of the active JOC instance (2 instances, PostgreSQL)")
        result["joc_failover"] = jocfailover.run(args.joc_kills, log=lambda line: print(line, flush=True))
        measured_at["joc_failover"] = _now()
    result["bench_runtime_s"] = round(time.perf_counter() - started, 1)
    result["bench_parts"] = parts
    latest.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(_without_each(result), indent=2))
    print(f"written to {latest.relative_to(ROOT)} (every kill under failover.<kind>.each, joc_failover.each)")
    return 0


# Where the latency part wrote its figures before they moved under "latency".
LEGACY_LATENCY_KEYS = (
    "baseline_spawn_sh_true",
    "order_submit_to_finished_one_trivial_job",
    "ratio_median_order_to_spawn",
    "topology_startup_s",
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _without_each(result: dict[str, Any]) -> dict[str, Any]:
    """The figures without the per-kill rows, for the terminal."""
    shown = dict(result)
    if isinstance(shown.get("failover"), dict):
        shown["failover"] = {
            key: {k: v for k, v in value.items() if k != "each"} if isinstance(value, dict) else value
            for key, value in shown["failover"].items()
        }
    if isinstance(shown.get("joc_failover"), dict):
        shown["joc_failover"] = {
            k: v for k, v in shown["joc_failover"].items() if k not in ("each", "joc_role_log")
        }
    return shown


if __name__ == "__main__":
    sys.exit(main())
