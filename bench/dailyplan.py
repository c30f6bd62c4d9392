"""The daily plan at scale through the real topology: plan and submit one date of `schedules` cyclic
schedules with `starts` starts each (1,000 x 100 = 100,000 orders by default), against a bare
SQLAlchemy bulk insert of the same rows measured in the same run; the controller's and the
director's memory per order waiting for its time; and whether the orders held ahead slow the
orders that run.

Topology: JOC (SQLite), a single-node controller and director, one subagent; the daily plan's
automatic passes off (`[dailyplan] enabled = false`), so the figures time the requests alone.
Schedules: one workflow (a trivial job at agent-1), an every-day calendar, schedule i starts at
00:00:00 + (i mod 864) s and repeats every 14 min 24 s (100 starts a day, UTC). The date planned
is tomorrow, so no start passes during the run.

planned orders/s: GeneratePlan for the date (the planner, then starts and the date's submission
records written in one transaction) / its wall time. baseline: the same rows (read back from
JOC's database) inserted with one `conn.execute(plan_orders.insert(), rows)` into a fresh SQLite
database of the same schema: what the database alone costs.
submitted orders/s: SubmitPlan for the date (AddOrders batches of 1,000 with scheduledFor, each
batch recorded submitted) / its wall time; the director has the orders once the controller has
attached them all (`attached_s`, from the start of SubmitPlan, until every event is released too).
RSS per waiting order: the controller's and the director's resident set (VmRSS) once every order is
attached, minus before submission, divided by the orders.
order latency: AddOrder to OrderFinished of one trivial job, one at a time, before the date is
submitted and with the date's orders held.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from gen.ostinato.common.v1 import items_pb2
from gen.ostinato.controller.v1 import controller_pb2, controller_pb2_grpc
from gen.ostinato.director.v1 import director_pb2, director_pb2_grpc
from gen.ostinato.joc.v1 import joc_pb2, joc_pb2_grpc
from joc_svc.schema import metadata, plan_orders
from ostinato import rpc
from ostinato.topology import Topology, TopologyConfig

WORKFLOW = "/bench/plan/true"
REPEAT_S = 864  # 14 min 24 s: 100 starts a day
LATENCY_ORDERS = 10
SETTLE_TIMEOUT_S = 600.0
SETTLED_S = 2.0


def run(schedules: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ostinato-bench-plan-") as tmp:
        config = TopologyConfig.ephemeral(subagents=1)
        config.dailyplan = {"enabled": False}
        topology = Topology(Path(tmp) / "topology", config)
        topology.start()
        try:
            return asyncio.run(_measure(topology, schedules, Path(tmp), log))
        finally:
            topology.stop()


def schedule(i: int) -> dict[str, Any]:
    begin = i % REPEAT_S
    return {
        "workflowPaths": [WORKFLOW],
        "calendars": [
            {
                "calendarPath": "/bench/plan/every-day",
                "timeZone": "Etc/UTC",
                "periods": [
                    {
                        "begin": f"00:{begin // 60:02d}:{begin % 60:02d}",
                        "end": "24:00:00",
                        "repeat": "00:14:24",
                    }
                ],
            }
        ],
    }


async def _measure(topology: Topology, n: int, tmp: Path, log: Callable[[str], None]) -> dict[str, Any]:
    channel = rpc.channel(topology.joc_address)
    inventory = joc_pb2_grpc.InventoryServiceStub(channel)
    deployment = joc_pb2_grpc.DeploymentServiceStub(channel)
    plan = joc_pb2_grpc.DailyPlanServiceStub(channel)
    job = {"agent": "agent-1", "executable": {"shellScript": {"script": "true"}}}
    objects = [
        (
            WORKFLOW,
            items_pb2.ITEM_TYPE_WORKFLOW,
            {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": job}},
        ),
        (
            "/bench/plan/every-day",
            items_pb2.ITEM_TYPE_CALENDAR,
            {"type": "WORKINGDAYSCALENDAR", "includes": {"weekdays": [{"days": [1, 2, 3, 4, 5, 6, 7]}]}},
        ),
        *((f"/bench/plan/s/{i:04d}", items_pb2.ITEM_TYPE_SCHEDULE, schedule(i)) for i in range(n)),
    ]
    log(f"dailyplan: putting {len(objects)} objects, releasing {n} schedules ...")
    for path, item_type, value in objects:
        await inventory.PutObject(joc_pb2.PutObjectRequest(path=path, type=item_type, json=json.dumps(value)))
    await deployment.Deploy(joc_pb2.DeployRequest(paths=[WORKFLOW]))
    await deployment.Release(joc_pb2.ReleaseRequest(paths=["/bench/plan"]))
    day = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    latency_idle = await _latencies(channel, LATENCY_ORDERS)
    rss_before = {name: _rss_kb(topology, name) for name in ("controller", "director")}

    log(f"dailyplan: planning {day} ...")
    started = time.perf_counter()
    generated = await plan.GeneratePlan(joc_pb2.GeneratePlanRequest(from_date=day, to_date=day), timeout=600)
    planned_s = time.perf_counter() - started
    planned = sum(d.count for d in generated.dates)
    bulk_s = _bulk_insert(topology, tmp, day)

    log(f"dailyplan: {planned} orders planned in {planned_s:.1f} s; submitting ...")
    started = time.perf_counter()
    submitted_response = await plan.SubmitPlan(
        joc_pb2.SubmitPlanRequest(from_date=day, to_date=day), timeout=1800
    )
    submitted_s = time.perf_counter() - started
    submitted = sum(d.count for d in submitted_response.dates)
    errors = [d.error for d in submitted_response.dates if d.error]
    attached_s = await _attached(topology, planned) - started
    log(f"dailyplan: {submitted} submitted in {submitted_s:.1f} s, at the director after {attached_s:.1f} s")
    rss_after = {name: _rss_kb(topology, name) for name in ("controller", "director")}
    latency_held = await _latencies(channel, LATENCY_ORDERS)
    await channel.close()
    return {
        "schedules": n,
        "orders": planned,
        "planned_s": round(planned_s, 2),
        "planned_orders_per_s": round(planned / planned_s),
        "baseline_bulk_insert_s": round(bulk_s, 2),
        "baseline_bulk_insert_rows_per_s": round(planned / bulk_s),
        "ratio_planned_to_bulk_insert": round(planned / planned_s / (planned / bulk_s), 3),
        "submitted": submitted,
        "submit_errors": errors[:3],
        "submitted_s": round(submitted_s, 2),
        "submitted_orders_per_s": round(submitted / submitted_s),
        "ratio_submitted_to_bulk_insert": round(submitted / submitted_s / (planned / bulk_s), 3),
        "attached_at_director_s": round(attached_s, 2),
        "rss_bytes_per_waiting_order": {
            name: round((rss_after[name] - rss_before[name]) * 1024 / planned) for name in rss_before
        },
        "rss_mb": {
            name: {"before": rss_before[name] // 1024, "after": rss_after[name] // 1024}
            for name in rss_before
        },
        "order_latency_median_ms": {
            "idle": round(statistics.median(latency_idle) * 1000, 1),
            "with_date_held": round(statistics.median(latency_held) * 1000, 1),
        },
    }


def _bulk_insert(topology: Topology, tmp: Path, day: str) -> float:
    """The same rows, one executemany into a fresh database of JOC's schema."""
    source = sa.create_engine(f"sqlite:///{topology.data_dir / 'joc' / 'joc.db'}")
    with source.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(plan_orders))]
    source.dispose()
    target = sa.create_engine(f"sqlite:///{tmp / 'baseline.db'}")
    metadata.create_all(target)
    started = time.perf_counter()
    with target.begin() as conn:
        conn.execute(plan_orders.insert(), rows)
    elapsed = time.perf_counter() - started
    target.dispose()
    return elapsed


async def _attached(topology: Topology, orders: int) -> float:
    """Until the controller holds every order, the director has them attached, and each has
    released the events its receiver stored; returns when (time.perf_counter) that came about."""
    controller = rpc.channel(topology.services["controller"].address)
    director = rpc.channel(topology.services["director"].address)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    # Settled: every order there, and nothing journaled or released for a while (a release is a
    # journal event of its own, and bookkeeping events are never served to be released).
    seen: tuple[int, ...] = ()
    since = time.perf_counter()
    try:
        while time.monotonic() < deadline:
            c = await controller_pb2_grpc.ControllerServiceStub(controller).GetOverview(
                controller_pb2.GetOverviewRequest()
            )
            d = await director_pb2_grpc.DirectorServiceStub(director).GetOverview(
                director_pb2.GetOverviewRequest()
            )
            now = (c.order_count, d.order_count, c.last_event_id, c.released_until_id, d.last_event_id)
            if now != seen:
                seen, since = now, time.perf_counter()
            elif (
                c.order_count >= orders
                and d.order_count >= orders
                and time.perf_counter() - since > SETTLED_S
            ):
                return since
            await asyncio.sleep(0.2)
        raise TimeoutError(
            f"within {SETTLE_TIMEOUT_S} s: controller {c.order_count} orders, released"
            f" {c.released_until_id}/{c.last_event_id}; director {d.order_count} orders, released"
            f" {d.released_until_id}/{d.last_event_id}"
        )
    finally:
        await controller.close()
        await director.close()


async def _latencies(channel: Any, n: int) -> list[float]:
    orders = joc_pb2_grpc.OrderServiceStub(channel)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        added = await orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path=WORKFLOW))
        async for r in orders.WatchOrder(joc_pb2.WatchOrderRequest(order_id=added.order_id)):
            if r.event.WhichOneof("kind") in ("order_finished", "order_failed"):
                break
        times.append(time.perf_counter() - started)
    return times


def _rss_kb(topology: Topology, name: str) -> int:
    status = Path(f"/proc/{topology.services[name].process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
