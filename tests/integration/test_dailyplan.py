"""The daily plan through the real topology: JOC plans a released schedule and submits its orders
with scheduledFor; the director starts them on time, also while the controller is away; a JOC
that was down catches up once per schedule; a date is cancelled and submitted again; a
redeployed workflow moves orders that have not started only when asked."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from gen.ostinato.common.v1 import items_pb2, order_pb2
from gen.ostinato.joc.v1 import joc_pb2, joc_pb2_grpc
from joc_svc.schema import plan_orders
from ostinato.topology import ROOT, Topology, TopologyConfig
from tests.integration.support import Joc, eventually, running, shell_job

P = joc_pb2
CAL = items_pb2.ITEM_TYPE_CALENDAR
SCHED = items_pb2.ITEM_TYPE_SCHEDULE
EVERY_DAY = {"type": "WORKINGDAYSCALENDAR", "includes": {"weekdays": [{"days": [1, 2, 3, 4, 5, 6, 7]}]}}


def starts_in(*seconds: int) -> list[datetime]:
    """Whole seconds from now (schedules name wall times to the second)."""
    base = math.ceil(time.time())
    return [datetime.fromtimestamp(base + s, UTC) for s in seconds]


def schedule(workflow: str, *at: datetime) -> dict:
    return {
        "workflowPaths": [workflow],
        "calendars": [
            {
                "calendarPath": "/cal/every-day",
                "timeZone": "UTC",
                "periods": [{"singleStart": f"{t:%H:%M:%S}"} for t in at],
            }
        ],
    }


class Plan:
    """The JOC client of these tests: inventory, deployment, orders and the daily plan."""

    def __init__(self, channel: object) -> None:
        self.joc = Joc.connect(channel)  # type: ignore[arg-type]
        self.plan = joc_pb2_grpc.DailyPlanServiceStub(channel)  # type: ignore[arg-type]

    async def put(self, path: str, item_type: int, value: dict) -> None:
        await self.joc.inventory.PutObject(
            P.PutObjectRequest(path=path, type=item_type, json=json.dumps(value))  # type: ignore[arg-type]
        )

    async def release(self, *paths: str) -> P.ReleaseResponse:
        return await self.joc.deployment.Release(P.ReleaseRequest(paths=list(paths)))

    async def workflow(self, path: str, text: str) -> str:
        """Deploys a one-job workflow that prints `text`; its version id."""
        workflow = {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job(f"echo {text}")}}
        return (await self.joc.deploy_workflow(path, workflow)).version_id

    async def rows(self, schedule_path: str) -> list[P.PlannedOrder]:
        response = await self.plan.ListPlannedOrders(P.ListPlannedOrdersRequest(schedule_path=schedule_path))
        return list(response.orders)

    async def rows_in(
        self, schedule_path: str, state: int, count: int, timeout: float = 20
    ) -> list[P.PlannedOrder]:
        async def reached() -> bool:
            return sum(r.state == state for r in await self.rows(schedule_path)) >= count

        await eventually(reached, timeout, f"{count} planned orders of {schedule_path} in state {state}")
        return [r for r in await self.rows(schedule_path) if r.state == state]

    async def orders_of(self, workflow_path: str) -> list[P.OrderSummary]:
        response = await self.joc.orders.ListOrders(P.ListOrdersRequest(workflow_path=workflow_path))
        return list(response.orders)

    async def started_at(self, order_id: str) -> datetime:
        detail = await self.joc.orders.GetOrder(P.GetOrderRequest(order_id=order_id))
        [started] = [e for e in detail.events if e.WhichOneof("kind") == "order_started"]
        return started.timestamp.ToDatetime(tzinfo=UTC)

    async def cancelled(self, order_id: str) -> None:
        """Until the order is cancelled (one at an agent comes back from there first)."""

        async def done() -> bool:
            summary = (await self.joc.orders.GetOrder(P.GetOrderRequest(order_id=order_id))).summary
            return summary.order.state == order_pb2.ORDER_STATE_CANCELLED

        await eventually(done, 15, f"order {order_id} cancelled")

    async def log_text(self, order_id: str) -> str:
        chunks = self.joc.orders.GetOrderLog(P.GetOrderLogRequest(order_id=order_id))
        return "".join([r.chunk async for r in chunks])


def cli(topology: Topology, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with this topology's JOC address and certificate (options before the command)."""
    command = [
        sys.executable,
        "-m",
        "ostinato.cli",
        "--joc",
        topology.joc_address,
        *topology.cli_args(),
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.fixture
async def plan(topology: Topology) -> AsyncIterator[Plan]:
    channel = topology.channel(topology.joc_address)
    client = Plan(channel)
    await client.put("/cal/every-day", CAL, EVERY_DAY)
    yield client
    await channel.close()


async def test_a_released_schedule_runs_its_order_on_time(topology: Topology, plan: Plan) -> None:
    await plan.workflow("/app/eod", "end of day")
    [at] = starts_in(5)
    await plan.put("/app/eod", SCHED, schedule("/app/eod", at))

    # The draft previews as it will plan: the next start is today's.
    preview = cli(topology, "plan", "preview", "/app/eod", "--next", "2", "--output", "json")
    assert preview.returncode == 0, preview.stderr
    starts = json.loads(preview.stdout)
    assert [s["scheduledFor"] for s in starts] == [
        f"{at:%Y-%m-%dT%H:%M:%S}Z",
        f"{at + timedelta(days=1):%Y-%m-%dT%H:%M:%S}Z",
    ]
    assert starts[0]["orderId"].startswith(f"{starts[0]['planDate']}#P")

    await plan.release("/cal/every-day", "/app/eod")
    [row] = [
        r
        for r in await plan.rows_in("/app/eod", P.PLANNED_ORDER_STATE_SUBMITTED, 1)
        if r.scheduled_for.ToDatetime(tzinfo=UTC) == at
    ]
    assert row.order_id == starts[0]["orderId"]  # the preview's id is the order's
    assert row.tz_version and row.workflow_version_id
    [finished] = await plan.rows_in("/app/eod", P.PLANNED_ORDER_STATE_FINISHED, 1, timeout=30)
    assert finished.order_id == row.order_id
    delay = (await plan.started_at(row.order_id) - at).total_seconds()
    assert 0 <= delay < 1.0, f"started {delay:.3f} s after its time"
    assert "end of day" in await plan.log_text(row.order_id)

    # Planned a week ahead (today included), submitted three days ahead.
    rows = await plan.rows("/app/eod")
    assert len(rows) == 7 and len({r.plan_date for r in rows}) == 7
    assert sum(r.state == P.PLANNED_ORDER_STATE_PLANNED for r in rows) == 4
    shown = cli(
        topology,
        "plan",
        "show",
        "--schedule",
        "/app/eod",
        "--state",
        "finished",
        "--output",
        "json",
    )
    assert shown.returncode == 0, shown.stderr
    assert [(o["orderId"], o["state"], o["late"]) for o in json.loads(shown.stdout)] == [
        (row.order_id, "finished", False)
    ]


async def test_the_director_starts_a_planned_order_while_the_controller_is_away(
    topology: Topology, plan: Plan
) -> None:
    await plan.workflow("/app/away", "ran alone")
    [at] = starts_in(6)
    await plan.put("/app/away", SCHED, schedule("/app/away", at))
    await plan.release("/cal/every-day", "/app/away")
    submitted = await plan.rows_in("/app/away", P.PLANNED_ORDER_STATE_SUBMITTED, 1)
    [row] = [r for r in submitted if r.scheduled_for.ToDatetime(tzinfo=UTC) == at]

    async def at_agent() -> bool:
        summary = (await plan.joc.orders.GetOrder(P.GetOrderRequest(order_id=row.order_id))).summary
        return summary.order.attached_state == order_pb2.ATTACHED_STATE_ATTACHED

    await eventually(at_agent, 15, "the planned order attached to the agent")
    topology.services["controller"].stop()
    try:
        await asyncio.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()) + 1.5)
    finally:
        topology.start_service("controller")
    await plan.rows_in("/app/away", P.PLANNED_ORDER_STATE_FINISHED, 1, timeout=30)
    delay = (await plan.started_at(row.order_id) - at).total_seconds()
    assert 0 <= delay < 1.0, f"the director started it {delay:.3f} s after its time"


@pytest.fixture
def held_topology(tmp_path: Path) -> Iterator[Topology]:
    """Plans, submits nothing (days ahead to submit 0)."""
    config = TopologyConfig.ephemeral(subagents=1)
    config.dailyplan = {"days_ahead_submit": 0}
    with running(tmp_path / "topology", config) as topo:
        yield topo


async def test_joc_down_before_submission_catches_up_once_per_schedule(held_topology: Topology) -> None:
    """Three starts pass while JOC is down: the newest is submitted late, the others are missed;
    no flood. Then JOC loses the record of an order it did submit (a crash between the
    controller's answer and its commit): submitting it again adds nothing."""
    topology = held_topology

    async def connect() -> tuple[Plan, object]:
        channel = topology.channel(topology.joc_address)
        return Plan(channel), channel

    plan, channel = await connect()
    await plan.put("/cal/every-day", CAL, EVERY_DAY)
    await plan.workflow("/app/often", "caught up")
    await plan.workflow("/app/later", "later")
    passed = starts_in(3, 4, 5)
    [later] = starts_in(40)
    await plan.put("/app/often", SCHED, schedule("/app/often", *passed))
    await plan.put("/app/later", SCHED, schedule("/app/later", later))
    await plan.release("/cal/every-day", "/app/often", "/app/later")
    today = [
        r
        for r in await plan.rows_in("/app/often", P.PLANNED_ORDER_STATE_PLANNED, 21)
        if r.scheduled_for.ToDatetime(tzinfo=UTC) in passed
    ]
    assert len(today) == 3
    await channel.close()  # type: ignore[attr-defined]

    topology.kill("joc")
    await asyncio.sleep(max(0.0, (passed[-1] - datetime.now(UTC)).total_seconds()) + 0.5)
    topology.config.dailyplan = {"days_ahead_submit": 1}
    topology.start_service("joc")
    plan, channel = await connect()
    [caught] = await plan.rows_in("/app/often", P.PLANNED_ORDER_STATE_FINISHED, 1, timeout=30)
    assert caught.scheduled_for.ToDatetime(tzinfo=UTC) == passed[-1]
    rows = {r.order_id: r for r in await plan.rows("/app/often")}
    assert sorted(r.scheduled_for.ToDatetime(tzinfo=UTC) for r in rows.values() if r.missed) == passed[:2]
    assert [o.order.id for o in await plan.orders_of("/app/often")] == [caught.order_id]

    [submitted] = await plan.rows_in("/app/later", P.PLANNED_ORDER_STATE_SUBMITTED, 1)
    await channel.close()  # type: ignore[attr-defined]
    topology.services["joc"].stop()
    engine = sa.create_engine(f"sqlite:///{topology.data_dir / 'joc' / 'joc.db'}")
    with engine.begin() as conn:
        conn.execute(
            plan_orders.update()
            .where(plan_orders.c.order_id == submitted.order_id)
            .values(state="PLANNED", submitted_at=None, workflow_version_id="")
        )
    engine.dispose()
    topology.start_service("joc")
    plan, channel = await connect()
    await plan.rows_in("/app/later", P.PLANNED_ORDER_STATE_SUBMITTED, 1)
    assert [o.order.id for o in await plan.orders_of("/app/later")] == [submitted.order_id]
    assert [o.order.id for o in await plan.orders_of("/app/often")] == [caught.order_id]  # still one
    await channel.close()  # type: ignore[attr-defined]


async def test_a_date_is_cancelled_and_submitted_again(topology: Topology, plan: Plan) -> None:
    await plan.workflow("/app/again", "again")
    [at] = starts_in(12)
    await plan.put("/app/again", SCHED, schedule("/app/again", at))
    await plan.release("/cal/every-day", "/app/again")
    [first] = [
        r
        for r in await plan.rows_in("/app/again", P.PLANNED_ORDER_STATE_SUBMITTED, 1)
        if r.scheduled_for.ToDatetime(tzinfo=UTC) == at
    ]
    day = first.plan_date

    cancelled = cli(topology, "plan", "cancel", "--from", day, "--schedule", "/app/again", "--output", "json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout) == [{"planDate": day, "count": 1}]
    [again] = [r for r in await plan.rows("/app/again") if r.plan_date == day]
    assert again.state == P.PLANNED_ORDER_STATE_PLANNED and again.submission == 1
    assert again.order_id != first.order_id and again.scheduled_for == first.scheduled_for
    await plan.cancelled(first.order_id)
    await asyncio.sleep(1.5)  # a pass of the plan: the held date is not submitted by itself
    assert [r.state for r in await plan.rows("/app/again") if r.plan_date == day] == [
        P.PLANNED_ORDER_STATE_PLANNED
    ]

    submitted = cli(topology, "plan", "submit", "--from", day, "--to", day, "--output", "json")
    assert submitted.returncode == 0, submitted.stderr
    assert {"planDate": day, "count": 1} in json.loads(submitted.stdout)
    [done] = await plan.rows_in("/app/again", P.PLANNED_ORDER_STATE_FINISHED, 1, timeout=30)
    assert done.order_id == again.order_id
    assert 0 <= (await plan.started_at(done.order_id) - at).total_seconds() < 1.0


async def test_a_redeployed_workflow_moves_orders_only_with_update_plan_from(
    topology: Topology, plan: Plan
) -> None:
    v1 = {p: await plan.workflow(p, "v1") for p in ("/app/keep", "/app/move")}
    [at] = starts_in(9)
    for path in v1:
        await plan.put(f"/plans{path}", SCHED, schedule(path, at))
    await plan.release("/cal/every-day", "/plans/app")
    rows = {}
    for path in v1:
        [rows[path]] = [
            r
            for r in await plan.rows_in(f"/plans{path}", P.PLANNED_ORDER_STATE_SUBMITTED, 1)
            if r.scheduled_for.ToDatetime(tzinfo=UTC) == at
        ]
        assert rows[path].workflow_version_id == v1[path]

    async def attached(order_id: str) -> bool:
        summary = (await plan.joc.orders.GetOrder(P.GetOrderRequest(order_id=order_id))).summary
        return summary.order.attached_state == order_pb2.ATTACHED_STATE_ATTACHED

    for row in rows.values():  # at the agent: the transfer goes there
        await eventually(lambda row=row: attached(row.order_id), 15, "attached")
    keep_v2 = await plan.workflow("/app/keep", "v2")
    workflow = {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job("echo v2")}}
    await plan.put("/app/move", items_pb2.ITEM_TYPE_WORKFLOW, workflow)
    deployed = await plan.joc.deployment.Deploy(P.DeployRequest(paths=["/app/move"], update_plan_from="now"))
    [transfer] = deployed.transfers
    move_v2 = deployed.deployments[0].version_id
    # Every submitted order of the workflow moved (three dates are submitted ahead).
    submitted = {
        r.order_id for r in await plan.rows("/plans/app/move") if r.state == P.PLANNED_ORDER_STATE_SUBMITTED
    }
    assert rows["/app/move"].order_id in submitted and len(submitted) == 3
    assert (transfer.workflow_path, transfer.workflow_version_id, transfer.error) == (
        "/app/move",
        move_v2,
        "",
    )
    assert set(transfer.order_ids) == submitted
    for path in v1:
        await plan.rows_in(f"/plans{path}", P.PLANNED_ORDER_STATE_FINISHED, 1, timeout=30)
    keep = (await plan.joc.orders.GetOrder(P.GetOrderRequest(order_id=rows["/app/keep"].order_id))).summary
    move = (await plan.joc.orders.GetOrder(P.GetOrderRequest(order_id=rows["/app/move"].order_id))).summary
    assert keep.order.workflow_version_id == v1["/app/keep"] != keep_v2
    assert move.order.workflow_version_id == move_v2
    assert "v1" in await plan.log_text(keep.order.id)
    assert "v2" in await plan.log_text(move.order.id)
    [moved_row] = [r for r in await plan.rows("/plans/app/move") if r.order_id == move.order.id]
    assert moved_row.workflow_version_id == move_v2


async def test_a_changed_schedule_updates_the_plan_by_order_id(topology: Topology, plan: Plan) -> None:
    """Released again with other times: vanished orders are cancelled at the controller, new ones
    added; an order that ran already is left as it is; --dry-run only shows the diff."""
    await plan.workflow("/app/change", "changed")
    ran, stays, goes, comes = starts_in(3, 40, 50, 60)
    await plan.put("/app/change", SCHED, schedule("/app/change", ran, stays, goes))
    await plan.release("/cal/every-day", "/app/change")
    await plan.rows_in("/app/change", P.PLANNED_ORDER_STATE_FINISHED, 1, timeout=30)
    today = {r.scheduled_for.ToDatetime(tzinfo=UTC): r for r in await plan.rows("/app/change")}
    assert today[stays].state == today[goes].state == P.PLANNED_ORDER_STATE_SUBMITTED

    before = {(r.order_id, r.state) for r in await plan.rows("/app/change")}
    await plan.put("/app/change", SCHED, schedule("/app/change", stays, comes))
    dry = await plan.joc.deployment.Release(P.ReleaseRequest(paths=["/app/change"], dry_run=True))
    changes = {(c.kind, c.start.scheduled_for.ToDatetime(tzinfo=UTC)) for c in dry.plan_changes}
    # Today: one order goes, one comes; the dates ahead also lose the start that ran today.
    assert {c for c in changes if c[1].date() == ran.date()} == {
        (P.PLAN_CHANGE_KIND_REMOVED, goes),
        (P.PLAN_CHANGE_KIND_ADDED, comes),
    }
    assert {t.time() for _, t in changes} == {ran.time(), goes.time(), comes.time()}
    assert {(r.order_id, r.state) for r in await plan.rows("/app/change")} == before  # a dry run

    released = await plan.release("/app/change")
    assert len(released.plan_changes) == len(dry.plan_changes)
    after = {r.order_id: r for r in await plan.rows("/app/change")}
    assert after[today[ran].order_id].state == P.PLANNED_ORDER_STATE_FINISHED  # ran: untouched
    assert after[today[stays].order_id].state == P.PLANNED_ORDER_STATE_SUBMITTED  # same id: kept
    assert after[today[goes].order_id].state == P.PLANNED_ORDER_STATE_CANCELLED
    await plan.cancelled(today[goes].order_id)
    new = [r for r in after.values() if r.scheduled_for.ToDatetime(tzinfo=UTC) == comes]
    assert len(new) == 1 and new[0].order_id not in {r.order_id for r in today.values()}
    await plan.rows_in("/app/change", P.PLANNED_ORDER_STATE_SUBMITTED, 2)  # submitted by the next pass


def test_cli_over_the_sample_plan(topology: Topology) -> None:
    """The README's walk through examples/plan/ with --output json: calendar dates, an
    explanation, projections, and delete then generate of a date planned ahead."""
    deployed = cli(topology, "deploy", str(ROOT / "examples"))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "put schedule /plan/hello-daily" in deployed.stdout

    def ok(*args: str) -> object:
        done = cli(topology, *args, "--output", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert ok("calendar", "dates", "/plan/workdays", "--from", "2026-12-24", "--to", "2026-12-28") == [
        "2026-12-24",
        "2026-12-25",
        "2026-12-28",
    ]
    explained = ok("plan", "explain", "/plan/hello-daily", "2026-12-25")
    assert isinstance(explained, dict) and explained["starts"] == []
    assert [r["code"] for r in explained["reasons"]] == [
        "PLANNED",
        "HOLIDAY_SUPPRESSED",
        "HOLIDAY_SUPPRESSED",
    ]

    released = cli(topology, "release", "-i", "/plan")
    assert released.returncode == 0, released.stderr
    projected = ok("plan", "projections", "--month", "2026-12")
    assert isinstance(projected, dict)
    [december] = projected["schedules"]
    assert december["schedulePath"] == "/plan/hello-daily"
    assert "2026-12-25" not in december["dates"] and december["dates"]["2026-12-28"] == 4  # a Monday

    # A working day planned ahead (7 days) but not submitted (3 days).
    holidays = json.loads((ROOT / "examples" / "plan" / "holidays-de.calendar.json").read_text())
    off = {d for h in holidays["includes"]["holidays"] for d in h["dates"]}
    today = datetime.now(UTC).date()
    ahead = [today + timedelta(days=n) for n in range(3, 7)]
    day = next(d.isoformat() for d in ahead if d.weekday() < 5 and d.isoformat() not in off)

    async def planned() -> bool:
        channel = topology.channel(topology.joc_address)
        rows = await joc_pb2_grpc.DailyPlanServiceStub(channel).ListPlannedOrders(
            P.ListPlannedOrdersRequest(from_date=day, to_date=day)
        )
        await channel.close()
        return len(rows.orders) > 0

    asyncio.run(eventually(planned, 15, f"{day} planned"))
    deleted = ok("plan", "delete", "--from", day)
    assert isinstance(deleted, list) and [d["planDate"] for d in deleted] == [day] and deleted[0]["count"] > 0
    assert ok("plan", "show", "--date", day) == []
    assert ok("plan", "generate", "--from", day) == deleted  # the same orders, back
    shown = ok("plan", "show", "--date", day, "--state", "planned")
    assert isinstance(shown, list) and len(shown) == deleted[0]["count"]
