"""Fault tests of controller and director clusters, with real processes: kill -9 or SIGSTOP a node
while 200 orders of three jobs each run, and check that every order finished once, no job started
twice (from the jobs' own records, written by the processes the subagents ran) and JOC holds each
order's events once.

Clusters: the controller is two full nodes and a witness, the director three full nodes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from gen.ostinato.common.v1 import cluster_pb2, cluster_pb2_grpc, events_pb2
from gen.ostinato.joc.v1 import joc_pb2
from ostinato.topology import Topology, TopologyConfig
from tests.integration.support import Joc, eventually, running

ORDERS = 200
JOBS = ("one", "two", "three")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Topology]:
    config = TopologyConfig.ephemeral()
    config.controller_cluster = "witness"
    config.director_cluster = "three"
    with running(tmp_path / "topology", config) as topo:
        yield topo


@pytest.fixture
async def joc(cluster: Topology) -> AsyncIterator[Joc]:
    channel = cluster.channel(cluster.joc_address)
    yield Joc.connect(channel)
    await channel.close()


def record_file(topo: Topology) -> Path:
    return topo.data_dir / "job-starts.txt"


async def deploy(joc: Joc, topo: Topology) -> None:
    # Each job process appends one line when it starts: the subagent-side record of executions.
    script = 'echo "$OSTINATO_ORDER_ID $OSTINATO_POSITION" >> "$RECORD"; sleep 0.05'
    job = {
        "agent": "agent-1",
        "processLimit": 40,
        "executable": {"shellScript": {"script": script, "env": {"RECORD": f"'{record_file(topo)}'"}}},
    }
    await joc.deploy_workflow(
        "/three-jobs",
        {"instructions": [{"execute": {"jobName": j}} for j in JOBS], "jobs": dict.fromkeys(JOBS, job)},
    )


async def add_orders(joc: Joc, prefix: str, n: int = ORDERS, at: Timestamp | None = None) -> list[str]:
    ids = [f"{prefix}-{i:03d}" for i in range(n)]
    for start in range(0, n, 20):
        await asyncio.gather(
            *(
                joc.orders.AddOrder(
                    joc_pb2.AddOrderRequest(workflow_path="/three-jobs", order_id=i, scheduled_for=at),
                    timeout=30,
                )
                for i in ids[start : start + 20]
            )
        )
    return ids


def starts(topo: Topology) -> list[str]:
    path = record_file(topo)
    return path.read_text().splitlines() if path.exists() else []


async def node_status(topo: Topology, name: str) -> cluster_pb2.ClusterNode | None:
    # As a peer of the node's cluster: nodes accept their cluster's nodes (and their callers) only.
    async with topo.channel(topo.addresses[name], as_name=name) as channel:
        try:
            response = await cluster_pb2_grpc.ClusterServiceStub(channel).GetClusterStatus(
                cluster_pb2.GetClusterStatusRequest(local_only=True), timeout=1
            )
        except grpc.aio.AioRpcError:
            return None
        return response.status.nodes[0]


async def active_node(topo: Topology, kind: str) -> str:
    """The name of the node that reports itself active (waiting while there is none)."""
    found: list[str] = []

    async def one_active() -> bool:
        found.clear()
        for name in topo.nodes[kind]:
            launched = topo.services.get(name)
            if launched is None or not launched.alive():
                continue
            status = await node_status(topo, name)
            if status is not None and status.role == cluster_pb2.NODE_ROLE_ACTIVE:
                found.append(name)
        return len(found) == 1

    await eventually(one_active, timeout=20, what=f"one active {kind} node")
    return found[0]


async def cluster_in_sync(topo: Topology, kind: str) -> None:
    """Every node runs, one is active, and all hold the same last event id."""

    async def in_sync() -> bool:
        statuses = [await node_status(topo, n) for n in topo.nodes[kind]]
        if any(s is None for s in statuses):
            return False
        roles = Counter(s.role for s in statuses if s is not None)
        ids = {s.last_event_id for s in statuses if s is not None}
        return roles[cluster_pb2.NODE_ROLE_ACTIVE] == 1 and len(ids) == 1

    await eventually(in_sync, timeout=30, what=f"{kind} cluster in sync")


def joc_events(topo: Topology) -> dict[str, list[events_pb2.Event]]:
    with sqlite3.connect(topo.data_dir / "joc" / "joc.db") as db:
        rows = db.execute("SELECT order_id, event FROM order_events ORDER BY event_id").fetchall()
    events: dict[str, list[events_pb2.Event]] = {}
    for order_id, data in rows:
        events.setdefault(order_id, []).append(events_pb2.Event.FromString(data))
    return events


def finished_at_joc(topo: Topology, ids: list[str]) -> int:
    with sqlite3.connect(topo.data_dir / "joc" / "joc.db") as db:
        rows = db.execute("SELECT order_id, state FROM orders").fetchall()
    return sum(1 for order_id, state in rows if order_id in set(ids) and state == "FINISHED")


async def all_done_exactly_once(topo: Topology, ids: list[str]) -> None:
    await eventually(lambda: finished_at_joc(topo, ids) == len(ids), timeout=120, what="every order finished")
    lines = Counter(starts(topo))
    twice = [line for line, n in lines.items() if n > 1]
    assert not twice, f"jobs started twice: {twice[:5]}"
    for order_id in ids:
        for position in ("0", "1", "2"):
            assert lines[f"{order_id} {position}"] == 1, f"{order_id} job at {position} did not run"
    events = joc_events(topo)
    for order_id in ids:
        kinds = Counter(e.WhichOneof("kind") for e in events[order_id])
        assert kinds["order_added"] == 1 and kinds["order_finished"] == 1, (order_id, kinds)
        assert kinds["order_processing_started"] == 3 and kinds["order_processed"] == 3, (order_id, kinds)


async def while_orders_run(joc: Joc, topo: Topology, prefix: str) -> list[str]:
    """Deploys, adds the orders, and returns once a third of their jobs ran (the rest are running
    or waiting)."""
    await deploy(joc, topo)
    ids = await add_orders(joc, prefix)
    await eventually(lambda: len(starts(topo)) >= ORDERS, timeout=60, what="a third of the jobs started")
    assert len(starts(topo)) < 3 * ORDERS, "all jobs ran before the fault: make them slower"
    return ids


@pytest.mark.parametrize("kind", ["controller", "director"])
async def test_kill_9_of_the_active_node_loses_nothing_and_runs_nothing_twice(
    cluster: Topology, joc: Joc, kind: str
) -> None:
    victim = await active_node(cluster, kind)
    ids = await while_orders_run(joc, cluster, kind)
    killed = time.monotonic()
    cluster.kill(victim)
    successor = await active_node(cluster, kind)
    print(f"{kind}: {victim} killed, {successor} active after {time.monotonic() - killed:.2f} s")
    assert successor != victim
    await all_done_exactly_once(cluster, ids)
    # The killed node comes back as passive and catches up.
    cluster.start_service(victim)
    await cluster_in_sync(cluster, kind)
    assert await active_node(cluster, kind) == successor


async def test_a_passive_node_killed_and_brought_back_catches_up(cluster: Topology, joc: Joc) -> None:
    active = await active_node(cluster, "director")
    passive = next(n for n in cluster.nodes["director"] if n != active)
    ids = await while_orders_run(joc, cluster, "passive")
    cluster.kill(passive)
    await all_done_exactly_once(cluster, ids)
    cluster.start_service(passive)
    await cluster_in_sync(cluster, "director")
    assert await active_node(cluster, "director") == active, "a returning passive node must not take over"


@pytest.mark.timeout(90)
async def test_a_paused_active_node_is_deposed_and_does_not_act_on_its_old_term(
    cluster: Topology, joc: Joc
) -> None:
    ids = await while_orders_run(joc, cluster, "paused")
    frozen = {kind: await active_node(cluster, kind) for kind in ("controller", "director")}
    for name in frozen.values():
        cluster.services[name].pause()
    try:
        successors = {kind: await active_node(cluster, kind) for kind in frozen}
    finally:
        for name in frozen.values():
            cluster.services[name].resume()
    assert all(successors[k] != frozen[k] for k in frozen), successors
    await all_done_exactly_once(cluster, ids)
    for kind in frozen:
        await cluster_in_sync(cluster, kind)
        assert await active_node(cluster, kind) == successors[kind]
        log = cluster.services[frozen[kind]].log_text()
        assert "deposed" in log, f"{frozen[kind]} did not step down:\n{log[-3000:]}"


@pytest.mark.timeout(90)
async def test_a_whole_controller_cluster_restart_while_the_director_runs_on(
    cluster: Topology, joc: Joc
) -> None:
    """Director autonomy: with every controller node down, the agent keeps running its orders,
    including one scheduled for a time when no controller runs, and reports everything once the
    controllers are back."""
    await deploy(joc, cluster)
    later = Timestamp()
    later.FromMilliseconds(int(time.time() * 1000) + 12_000)
    [scheduled] = await add_orders(joc, "later", n=1, at=later)

    def attached(ids: list[str]) -> bool:
        events = joc_events(cluster)
        return all(any(e.HasField("order_attached") for e in events.get(i, [])) for i in ids)

    await eventually(lambda: attached([scheduled]), what="the scheduled order attached to the agent")
    ids = await add_orders(joc, "restart")
    await eventually(lambda: len(starts(cluster)) >= ORDERS, timeout=60, what="a third of the jobs started")
    # Only orders at the agent can run without a controller.
    await eventually(lambda: attached(ids), timeout=30, what="every order attached to the agent")
    for name in cluster.nodes["controller"]:
        cluster.kill(name)
    assert not any(line.startswith(scheduled) for line in starts(cluster)), "scheduled order ran too early"
    # The director runs everything to its end without a controller, the scheduled order too.
    await eventually(
        lambda: f"{scheduled} 2" in starts(cluster) and len(starts(cluster)) == 3 * ORDERS + 3,
        timeout=60,
        what="every job run while the controllers are down",
    )
    cluster.start_services(cluster.nodes["controller"])
    await all_done_exactly_once(cluster, [*ids, scheduled])
    await cluster_in_sync(cluster, "controller")
