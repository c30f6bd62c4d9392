"""Orders held for a start time tomorrow at one controller and director: what they cost the flow of
jobs, memory per held order, and how fast many orders start that become due at the same second.

Topology: JOC, a single-node controller and director, SUBAGENTS subagents (as bench/jobs.py).

Held orders go straight to the controller's AddOrders, BATCH orders a call, not through JOC: JOC's
AddOrder takes one order a call (a round trip, a JOC transaction and a controller journal commit
each), so adding 100,000 through JOC would measure JOC's adding for the better part of an hour, not
what holding them costs. JOC still follows the controller's events and so projects every held
order, as it will the daily plan's. The flow of jobs goes through JOC exactly as in bench/jobs.py.

In one run, in this order:
1. `due` bare spawns of `sh -c true`, one after another and `parallel` at a time.
2. A topology: none held: jobs/s (bench/jobs.py's throughput: `orders` trivial orders through JOC,
   at most `concurrency` in flight) and CPU ms per order per process.
3. The same topology, for each N of `sizes`, ascending: held orders (scheduledFor now + 24 h)
   added until N are held (each size adds the difference to the one before); the controller's and
   the director's VmRSS just before and after, divided by the orders added; then jobs/s and CPU
   per order with N held, and the ratio of jobs/s to step 2's (ratio_N_to_0).
4. A fresh topology, due at once: `due` orders of a job that records its first line
   (bench/jobs.py's mark_script), all scheduled for the same whole second T, far enough ahead
   (`lead_s`) to add them and have the director hold them all first. all_started_s: T until the
   last of their jobs recorded its first line; against step 1's spawns.

The controller and the director count the orders they hold (GetOverview.order_count): before
each size the part waits until they hold nothing but the held orders, so that memory and the next
figures see no leftovers; after adding, until both hold all N. Each wait is limited to
`timeout_s`, and each jobs/s measurement to `jobs_budget_s` (orders not finished then count as
not finished). A size whose adding or holding overruns its limit is reported as such and ends the
held steps: larger ones would overrun it too.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from bench import jobs, procstat
from gen.ostinato.controller.v1 import controller_pb2, controller_pb2_grpc
from gen.ostinato.director.v1 import director_pb2, director_pb2_grpc
from gen.ostinato.joc.v1 import joc_pb2_grpc
from ostinato import rpc
from ostinato.topology import Topology

SIZES = (1_000, 10_000, 100_000)
DUE = 10_000
BATCH = 1_000
ADD_TIMEOUT_S = 120.0  # one AddOrders call
TOMORROW_S = 24 * 3600
TIMEOUT_S = 600.0
JOBS_BUDGET_S = 120.0
POLL_S = 0.1


def due_lead_s(due: int) -> float:
    """How far ahead the due orders are scheduled: time to add them and for the director to hold
    them all, at 200 orders/s and at least 10 s."""
    return max(10.0, due / 200)


@dataclass
class Services:
    topology: Topology
    orders: joc_pb2_grpc.OrderServiceStub
    controller: controller_pb2_grpc.ControllerServiceStub
    director: director_pb2_grpc.DirectorServiceStub
    starts: Path

    async def held_counts(self) -> tuple[int, int]:
        """Orders the controller and the director hold."""
        c = await self.controller.GetOverview(controller_pb2.GetOverviewRequest(), timeout=30)
        d = await self.director.GetOverview(director_pb2.GetOverviewRequest(), timeout=30)
        return c.order_count, d.order_count

    async def add(self, ids: Sequence[str], path: str, at_ms: int) -> None:
        """Adds the orders at the controller, BATCH a call, each scheduled for `at_ms`."""
        scheduled = Timestamp()
        scheduled.FromMilliseconds(at_ms)
        for start in range(0, len(ids), BATCH):
            request = controller_pb2.AddOrdersRequest(
                orders=[
                    controller_pb2.NewOrder(id=i, workflow_path=path, scheduled_for=scheduled)
                    for i in ids[start : start + BATCH]
                ]
            )
            response = await self.controller.AddOrders(request, timeout=ADD_TIMEOUT_S)
            existed = [o.id for o in response.orders if o.existed]
            assert not existed, f"orders existed already: {existed[:3]}"

    async def holding(self, n: int, timeout_s: float) -> float | None:
        """Seconds until the controller and the director each hold exactly n orders; None when
        that did not happen within timeout_s."""
        return await until(lambda: self._holding(n), timeout_s)

    async def _holding(self, n: int) -> bool:
        return await self.held_counts() == (n, n)

    def rss(self) -> dict[str, int]:
        return {
            name: procstat.rss_bytes(self.topology.services[name].process.pid)
            for name in ("controller", "director")
        }

    async def settle(self, budget_s: float) -> None:
        """A few orders through JOC to their end: connections and caches warm, and the events of
        what went before read by the controller and JOC (they come first in the same streams)."""
        await jobs.drive(self.orders, jobs.TRUE_PATH, jobs.WARM_UP, jobs.WARM_UP, budget_s)

    async def jobs_per_s(self, orders: int, concurrency: int, budget_s: float) -> dict[str, Any]:
        window = procstat.CpuWindow.start(procstat.pids(self.topology))
        done = await jobs.drive(self.orders, jobs.TRUE_PATH, orders, concurrency, budget_s)
        return {"throughput": jobs.throughput(done, orders, concurrency), **window.stop(done.finished)}


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float) -> float | None:
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout_s:
            return None
        await asyncio.sleep(POLL_S)
    return time.monotonic() - started


@asynccontextmanager
async def connected(topology: Topology, work: Path) -> AsyncIterator[Services]:
    """Clients of JOC, the controller and the director; the trivial and the recording workflow
    deployed."""
    joc = topology.channel(topology.joc_address)
    controller = topology.channel(topology.addresses["controller"], as_name="joc")
    director = topology.channel(topology.addresses["director"], as_name="controller")
    services = Services(
        topology,
        joc_pb2_grpc.OrderServiceStub(joc),
        controller_pb2_grpc.ControllerServiceStub(controller),
        director_pb2_grpc.DirectorServiceStub(director),
        work / "job-starts.txt",
    )
    services.starts.touch()
    try:
        await jobs.deploy(joc, jobs.TRUE_PATH, "true")
        await jobs.deploy(joc, jobs.MARK_PATH, jobs.mark_script(services.starts))
        yield services
    finally:
        for channel in (joc, controller, director):
            await channel.close()


async def measure_held(
    services: Services,
    sizes: Sequence[int],
    orders: int,
    concurrency: int,
    timeout_s: float,
    jobs_budget_s: float,
    log: Any,
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    await services.settle(jobs_budget_s)
    none_held = await services.jobs_per_s(orders, concurrency, jobs_budget_s)
    base = none_held["throughput"]["jobs_per_s"]
    result["none_held"] = none_held
    log(f"  none held: {base} jobs/s; CPU ms per order: {procstat.format_cpu(none_held['cpu_ms_per_order'])}")
    held = 0
    for n in sorted(sizes):
        step = await held_step(services, held, n, orders, concurrency, timeout_s, jobs_budget_s)
        if "throughput" in step:
            ratio = round(step["throughput"]["jobs_per_s"] / base, 3) if base else None
            step["ratio_to_none_held"] = result[f"ratio_{n}_to_0"] = ratio
        result[str(n)] = step
        log(f"  {n} held: {_brief(step)}")
        if step.get("over_limit"):
            break
        held = n
    started = {order_id for order_id in jobs.read_starts(services.starts) if order_id.startswith("held-")}
    result["held_orders_started"] = len(started)
    return result


async def held_step(
    services: Services,
    held: int,
    n: int,
    orders: int,
    concurrency: int,
    timeout_s: float,
    jobs_budget_s: float,
) -> dict[str, Any]:
    step: dict[str, Any] = {"held": n, "added": n - held}
    if await services.holding(held, timeout_s) is None:
        counts = await services.held_counts()
        step["over_limit"] = f"controller and director still held {counts} orders after {timeout_s} s"
        return step
    rss_before = services.rss()
    ids = [f"held-{i:07d}" for i in range(held, n)]
    started = time.monotonic()
    try:
        await asyncio.wait_for(
            services.add(ids, jobs.MARK_PATH, int((time.time() + TOMORROW_S) * 1000)), timeout_s
        )
    except (TimeoutError, grpc.aio.AioRpcError) as e:
        step["over_limit"] = f"adding: {rpc.short_error(e)} after {time.monotonic() - started:.0f} s"
        return step
    step["add_s"] = round(time.monotonic() - started, 2)
    if await services.holding(n, timeout_s) is None:
        counts = await services.held_counts()
        step["over_limit"] = f"controller and director held {counts} orders after {timeout_s} s"
        return step
    step["held_by_director_s"] = round(time.monotonic() - started, 2)
    await services.settle(jobs_budget_s)
    rss_after = services.rss()
    step["rss_bytes_per_held_order"] = {
        name: round((rss_after[name] - rss_before[name]) / (n - held)) for name in rss_after
    }
    step["rss_mb"] = {name: round(rss / 2**20, 1) for name, rss in rss_after.items()}
    step.update(await services.jobs_per_s(orders, concurrency, jobs_budget_s))
    return step


async def due_at_once(services: Services, due: int, lead_s: float, timeout_s: float) -> dict[str, Any]:
    ids = [f"due-{i:06d}" for i in range(due)]
    wanted = set(ids)
    due_ms = math.ceil(time.time() + lead_s) * 1000
    added_at = time.monotonic()
    await services.add(ids, jobs.MARK_PATH, due_ms)
    add_s = time.monotonic() - added_at
    held_s = await services.holding(due, max(due_ms / 1000 - time.time(), 0.0))
    figures: dict[str, Any] = {
        "orders": due,
        "lead_s": lead_s,
        "add_s": round(add_s, 2),
        # From the first AddOrders call until the director held them all (None: not before they
        # became due, so the starts below mix adding with starting).
        "held_by_director_s": None if held_s is None else round(add_s + held_s, 2),
    }

    def started() -> list[int]:
        return [ns for order_id, ns in jobs.read_starts(services.starts).items() if order_id in wanted]

    async def all_started() -> bool:
        return len(started()) == due

    await until(all_started, max(due_ms / 1000 - time.time(), 0.0) + timeout_s)
    times = sorted((ns / 1e6 - due_ms) / 1000 for ns in started())
    figures["started"] = len(times)
    if times:
        figures["first_started_s"] = round(times[0], 3)
        figures["p50_started_s"] = round(times[len(times) // 2], 3)
        figures["last_started_s"] = round(times[-1], 3)
    if len(times) == due:
        figures["all_started_s"] = round(times[-1], 3)
    else:
        figures["over_limit"] = f"{len(times)} of {due} started within {timeout_s} s after they were due"
    return figures


def in_topology(measure: Callable[[Services], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Runs `measure` against a fresh topology (bench/jobs.py's, single nodes)."""
    with tempfile.TemporaryDirectory(prefix="ostinato-bench-held-") as tmp:
        work = Path(tmp)
        topology, startup_s = jobs.start_topology("single", work / "topology")
        try:

            async def connected_measure() -> dict[str, Any]:
                async with connected(topology, work) as services:
                    return await measure(services)

            return {"topology_startup_s": round(startup_s, 2), **asyncio.run(connected_measure())}
        finally:
            topology.stop()


def _brief(figures: dict[str, Any]) -> str:
    shown = {k: v for k, v in figures.items() if k not in ("cpu_ms_per_order", "machine_busy_pct")}
    return ", ".join(f"{k} {v}" for k, v in shown.items())


def run(
    sizes: Sequence[int] = SIZES,
    due: int = DUE,
    orders: int = 300,
    concurrency: int = 20,
    parallel: int = 4,
    timeout_s: float = TIMEOUT_S,
    jobs_budget_s: float = JOBS_BUDGET_S,
    lead_s: float | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """lead_s: how far ahead the due orders are scheduled (default: due_lead_s(due))."""
    result: dict[str, Any] = {"sizes": sorted(sizes)}
    if due:
        sequential_s, parallel_s = jobs.spawn_seconds(due, parallel)
        result["bare_spawns"] = {
            "runs": due,
            "sequential_s": round(sequential_s, 2),
            "parallel": parallel,
            "parallel_s": round(parallel_s, 2),
        }
        log(
            f"  {due} bare spawns of sh -c true: {sequential_s:.1f} s one by one,"
            f" {parallel_s:.1f} s {parallel} at a time"
        )
    result.update(
        in_topology(
            lambda services: measure_held(services, sizes, orders, concurrency, timeout_s, jobs_budget_s, log)
        )
    )
    if due:
        lead = due_lead_s(due) if lead_s is None else lead_s
        figures = in_topology(lambda services: due_at_once(services, due, lead, timeout_s))
        if "all_started_s" in figures:
            figures["ratio_to_bare_spawns_sequential"] = round(
                figures["all_started_s"] / result["bare_spawns"]["sequential_s"], 2
            )
        result["due_at_once"] = figures
        log(f"  {due} due at once: {_brief(figures)}")
    return result
