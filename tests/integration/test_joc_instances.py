"""A JOC cluster: two JOC processes on one PostgreSQL database, one active, one passive, in front of
a real controller, director and subagent (all with mutual TLS). kill -9 of the active instance
while deployments are pending, orders run and the daily plan submits; SIGSTOP of the active beyond
its lease and SIGCONT; switch-over on request. Throughout, the passive instance answers reads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from gen.ostinato.common.v1 import items_pb2, order_pb2
from gen.ostinato.controller.v1 import controller_pb2, controller_pb2_grpc
from gen.ostinato.joc.v1 import joc_pb2, joc_pb2_grpc
from ostinato import rpc
from ostinato.topology import ROOT, Topology, TopologyConfig
from tests.integration.postgres import pg_server, pg_url  # noqa: F401  (fixtures)
from tests.integration.support import Joc, eventually, running, shell_job

pytestmark = pytest.mark.integration
P = joc_pb2
QUICK = {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job("true")}}
EVERY_DAY = {"type": "WORKINGDAYSCALENDAR", "includes": {"weekdays": [{"days": [1, 2, 3, 4, 5, 6, 7]}]}}


@pytest.fixture
def topology(tmp_path: Path, pg_url: str) -> Iterator[Topology]:  # noqa: F811
    config = TopologyConfig.ephemeral(subagents=1)
    config.joc_instances = 2
    config.db_url = pg_url
    with running(tmp_path, config) as topo:
        yield topo


class Instances:
    """A client per JOC instance, by name."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.channels = {n: topology.channel(topology.services[n].address) for n in topology.joc_names}
        self.jocs = {n: Joc.connect(c) for n, c in self.channels.items()}
        self.reads = 0
        self.read_errors: list[str] = []

    async def status(self, name: str) -> P.GetJocStatusResponse:
        stub = joc_pb2_grpc.ClusterServiceStub(self.channels[name])
        return await stub.GetJocStatus(P.GetJocStatusRequest(), timeout=5)

    async def active_is(self, name: str, asked: str) -> bool:
        with contextlib.suppress(grpc.aio.AioRpcError):
            status = await self.status(asked)
            roles = {i.id: i.role for i in status.instances}
            return status.active_instance == name and roles.get(name) == P.JOC_ROLE_ACTIVE
        return False

    async def read_passive(self, name: str, stop: asyncio.Event) -> None:
        """Reads at the passive instance until stopped: each must be answered."""
        joc = self.jocs[name]
        while not stop.is_set():
            try:
                await joc.orders.ListOrders(P.ListOrdersRequest(limit=5), timeout=5)
                await joc.inventory.ListObjects(P.ListObjectsRequest(), timeout=5)
                await joc.deployment.ListDeployments(P.ListDeploymentsRequest(limit=5), timeout=5)
                self.reads += 1
            except grpc.aio.AioRpcError as e:
                self.read_errors.append(f"{e.code().name}: {e.details()}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()


@pytest.fixture
async def instances(topology: Topology) -> AsyncIterator[Instances]:
    client = Instances(topology)
    await eventually(lambda: client.active_is("joc", "joc-2"), 15, "joc active, as joc-2 sees it")
    yield client
    await client.close()


@contextlib.asynccontextmanager
async def passive_reads(instances: Instances, name: str) -> AsyncIterator[None]:
    stop = asyncio.Event()
    reader = asyncio.create_task(instances.read_passive(name, stop))
    try:
        yield
    finally:
        stop.set()
        await reader
    assert instances.read_errors == [], instances.read_errors
    assert instances.reads > 10


def sql(topology: Topology, query: str) -> list[sa.Row]:
    engine = sa.create_engine(topology.config.db_url or "")
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(query)))
    finally:
        engine.dispose()


async def test_kill_9_of_the_active_joc_loses_nothing_and_does_nothing_twice(
    topology: Topology, instances: Instances
) -> None:
    active = instances.jocs["joc"]
    await active.deploy_workflow(
        "/app/sleepy",
        {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job("sleep 2; echo slept")}},
    )
    async with passive_reads(instances, "joc-2"):
        # Orders that run through the take-over.
        running_ids = [f"run-{i}" for i in range(4)]
        for order_id in running_ids:
            await active.orders.AddOrder(P.AddOrderRequest(workflow_path="/app/sleepy", order_id=order_id))
        # The daily plan: a schedule starting in a few seconds, released just before the kill.
        await active.inventory.PutObject(
            P.PutObjectRequest(
                path="/cal/every-day", type=items_pb2.ITEM_TYPE_CALENDAR, json=json.dumps(EVERY_DAY)
            )
        )
        base = math.ceil(time.time())
        starts = [datetime.fromtimestamp(base + s, UTC) for s in (6, 7, 8)]
        await active.inventory.PutObject(
            P.PutObjectRequest(
                path="/app/sleepy",
                type=items_pb2.ITEM_TYPE_SCHEDULE,
                json=json.dumps(
                    {
                        "workflowPaths": ["/app/sleepy"],
                        "calendars": [
                            {
                                "calendarPath": "/cal/every-day",
                                "timeZone": "UTC",
                                "periods": [{"singleStart": f"{t:%H:%M:%S}"} for t in starts],
                            }
                        ],
                    }
                ),
            )
        )
        await active.deployment.Release(P.ReleaseRequest(paths=["/cal/every-day", "/app/sleepy"]))
        # A deployment pending: the controller does not answer while it is made.
        controller = topology.services["controller"].process
        os.kill(controller.pid, signal.SIGSTOP)
        try:
            await active.inventory.PutObject(
                P.PutObjectRequest(
                    path="/app/later",
                    type=items_pb2.ITEM_TYPE_WORKFLOW,
                    json=json.dumps(
                        {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job("true")}}
                    ),
                )
            )
            deployed = await active.deployment.Deploy(P.DeployRequest(paths=["/app/later"], no_wait=True))
            assert [d.pending for d in deployed.deployments] == [True]
            topology.kill("joc")
            killed_at = time.monotonic()
        finally:
            os.kill(controller.pid, signal.SIGCONT)

        survivor = instances.jocs["joc-2"]
        took = await eventually(lambda: instances.active_is("joc-2", "joc-2"), 10, "joc-2 active")
        assert took < 6, f"joc-2 took over {took:.1f} s after the kill"
        # Writes go to the new active instance now.
        added = await survivor.orders.AddOrder(
            P.AddOrderRequest(workflow_path="/app/sleepy", order_id="after")
        )
        print(f"first write accepted {time.monotonic() - killed_at:.2f} s after kill -9")
        assert not added.existed

        async def confirmed() -> bool:
            pending = await survivor.deployment.ListDeployments(P.ListDeploymentsRequest(pending_only=True))
            return not pending.deployments

        await eventually(confirmed, 20, "every deployment confirmed")
        [later] = (
            await survivor.deployment.ListDeployments(P.ListDeploymentsRequest(path="/app/later"))
        ).deployments
        assert later.status == P.DEPLOYMENT_STATUS_DEPLOYED

        plan = joc_pb2_grpc.DailyPlanServiceStub(instances.channels["joc-2"])

        async def plan_finished() -> list[P.PlannedOrder]:
            rows = (
                await plan.ListPlannedOrders(P.ListPlannedOrdersRequest(schedule_path="/app/sleepy"))
            ).orders
            return [r for r in rows if r.scheduled_for.ToDatetime(tzinfo=UTC) in starts]

        await eventually(
            lambda: _all_in(plan_finished(), P.PLANNED_ORDER_STATE_FINISHED, len(starts)),
            40,
            "planned orders finished",
        )
        for order_id in [*running_ids, "after"]:
            await eventually(lambda o=order_id: _finished(survivor, o), 30, f"order {order_id} finished")

        # Restarted, the killed instance is passive.
        topology.start_service("joc")
        await eventually(lambda: instances.active_is("joc-2", "joc"), 10, "joc-2 active, as joc sees it")

    # Each event stored once, each order added once, every order's history complete.
    duplicates = sql(
        topology, "SELECT controller_id, event_id FROM order_events GROUP BY 1, 2 HAVING COUNT(*) > 1"
    )
    assert duplicates == []
    planned = {r.order_id for r in await plan_finished()}
    added_events = sql(topology, "SELECT event FROM order_events")
    kinds: dict[str, list[str]] = {}
    from gen.ostinato.common.v1 import events_pb2

    for (blob,) in added_events:
        event = events_pb2.Event.FromString(blob)
        kinds.setdefault(event.order_id, []).append(event.WhichOneof("kind") or "")
    for order_id in [*running_ids, "after", *planned]:
        history = kinds[order_id]
        assert history.count("order_added") == 1, (order_id, history)
        assert history.count("order_finished") == 1, (order_id, history)
        assert history[0] == "order_added" and "order_started" in history, (order_id, history)
    rows = sql(topology, "SELECT order_id, COUNT(*) FROM plan_orders GROUP BY 1 HAVING COUNT(*) > 1")
    assert rows == []


async def _all_in(rows: object, state: int, count: int) -> bool:
    found = await rows  # type: ignore[misc]
    return len(found) == count and all(r.state == state for r in found)


async def _finished(joc: Joc, order_id: str) -> bool:
    summary = (await joc.orders.GetOrder(P.GetOrderRequest(order_id=order_id))).summary
    return summary.order.state == order_pb2.ORDER_STATE_FINISHED


async def test_a_paused_active_joc_is_deposed_and_steps_down(
    topology: Topology, instances: Instances
) -> None:
    await instances.jocs["joc"].deploy_workflow(
        "/app/quick", {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job("true")}}
    )
    old = topology.services["joc"]
    async with passive_reads(instances, "joc-2"):
        os.kill(old.process.pid, signal.SIGSTOP)
        try:
            await eventually(lambda: instances.active_is("joc-2", "joc-2"), 10, "joc-2 active")
            # The new active's first command raises the controller's epoch.
            await instances.jocs["joc-2"].orders.AddOrder(
                P.AddOrderRequest(workflow_path="/app/quick", order_id="new")
            )
            async with topology.channel(topology.services["controller"].address, "joc") as channel:
                overview = await controller_pb2_grpc.ControllerServiceStub(channel).GetOverview(
                    controller_pb2.GetOverviewRequest()
                )
            status = await instances.status("joc-2")
            assert overview.joc_epoch == status.epoch == 2
        finally:
            os.kill(old.process.pid, signal.SIGCONT)

        # Awake again, the old instance finds its lease taken and steps down.
        await eventually(lambda: "is passive now (epoch 1 ended" in old.log_text(), 10, "joc steps down")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await instances.jocs["joc"].orders.AddOrder(
                P.AddOrderRequest(workflow_path="/app/quick", order_id="old")
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert rpc.active_address_of(refused.value) == topology.services["joc-2"].address
        assert await instances.active_is("joc-2", "joc")
        assert await _eventually_finished(instances.jocs["joc-2"], "new")
        # A log it has stored it serves; following one live is the active instance's.
        log = instances.jocs["joc"].orders.GetOrderLog(P.GetOrderLogRequest(order_id="new"))
        assert [r async for r in log] == []  # the job prints nothing
        with pytest.raises(grpc.aio.AioRpcError) as live:
            following = instances.jocs["joc"].orders.GetOrderLog(
                P.GetOrderLogRequest(order_id="new", follow=True)
            )
            await following.read()
        assert live.value.code() == grpc.StatusCode.UNAVAILABLE
        assert rpc.active_address_of(live.value) == topology.services["joc-2"].address
        unknown = await instances.jocs["joc-2"].orders.ListOrders(P.ListOrdersRequest())
        assert "old" not in {o.order.id for o in unknown.orders}


async def _eventually_finished(joc: Joc, order_id: str) -> bool:
    await eventually(lambda: _finished(joc, order_id), 20, f"order {order_id} finished")
    return True


async def test_switchover_on_request_through_the_cli(topology: Topology, instances: Instances) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [
            sys.executable,
            "-m",
            "ostinato.cli",
            *args,
            "--joc",
            topology.joc_addresses,
            *topology.cli_args(),
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)

    async with passive_reads(instances, "joc-2"):
        status = await asyncio.to_thread(cli, "joc", "status")
        assert status.returncode == 0, status.stderr
        lines = status.stdout.splitlines()
        assert lines[0] == "JOC: active instance joc, epoch 1", status.stdout
        assert [line.split()[:2] for line in lines[2:]] == [["joc", "active"], ["joc-2", "passive"]]

        unknown = await asyncio.to_thread(cli, "joc", "switchover", "--to", "joc-9")
        assert unknown.returncode == 1 and "no live JOC instance 'joc-9' (live: joc, joc-2)" in unknown.stderr

        switched = await asyncio.to_thread(cli, "joc", "switchover", "--to", "joc-2")
        assert switched.returncode == 0, switched.stderr
        assert switched.stdout.strip() == "JOC: active instance now joc-2 (was joc; epoch 2)"
    assert await instances.active_is("joc-2", "joc")
    # The CLI, given both addresses, follows the active instance for writes.
    added = await asyncio.to_thread(cli, "order", "add", "/nowhere")
    assert added.returncode == 1 and "/nowhere" in added.stderr  # refused by the active: no such workflow
    entries = await joc_pb2_grpc.AuditServiceStub(instances.channels["joc-2"]).ListAuditEntries(
        P.ListAuditEntriesRequest(action="joc switchover")
    )
    assert [e.object for e in entries.entries] == ["joc -> joc-2"]

    # A browser at the passive instance's web view is sent to the active one's, path and query kept.
    web = {n: (topology.data_dir / n / "web.address").read_text().strip() for n in topology.joc_names}
    assert redirect_of(topology, web["joc"], "/orders?state=failed") == (
        307,
        f"{web['joc-2']}orders?state=failed",
    )
    assert redirect_of(topology, web["joc-2"], "/login")[0] == 200  # the active one serves


def redirect_of(topology: Topology, base: str, path: str) -> tuple[int, str]:
    """The status and Location of a GET of `path` at the web view `base`, redirects not followed."""
    import http.client
    import ssl
    import urllib.parse

    from ostinato import pki

    url = urllib.parse.urlsplit(base)
    context = ssl.create_default_context(cafile=str(topology.tls_dir / pki.CA_CERT))
    connection = http.client.HTTPSConnection(url.hostname or "", url.port, context=context, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Location") or ""
    finally:
        connection.close()


async def test_a_joc_killed_and_started_again_takes_writes_once_it_listens(tmp_path: Path) -> None:
    """Its former process's lease runs on under its name for up to the lease time; the new process
    announces itself only once it took the lease over (single JOC, SQLite)."""
    with running(tmp_path, TopologyConfig.ephemeral(subagents=1)) as topology:
        topology.kill("joc")
        started = time.monotonic()
        topology.start_service("joc")
        async with topology.channel(topology.joc_address) as channel:
            joc = Joc.connect(channel)
            put = P.PutObjectRequest(
                path="/app/first", type=items_pb2.ITEM_TYPE_WORKFLOW, json=json.dumps(QUICK)
            )
            await joc.inventory.PutObject(put)  # no UNAVAILABLE: at once
        took = time.monotonic() - started
        assert "JOC instance joc (lease 2000 ms): active" in topology.services["joc"].log_text()
        assert took < 8, f"{took:.1f} s"
