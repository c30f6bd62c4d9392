"""A director fail-over while many orders wait for a start time tomorrow: kill -9 of the active
director node of a three-node cluster (the controller is one too) while HELD orders are held at the
agent and normal orders run. After the fail-over every held order is still there once, at the
controller, at the new active director and at JOC, none of them started, and every normal order
finished with each of its jobs run exactly once (tests/integration/test_cluster.py's checks)."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from gen.ostinato.common.v1 import order_pb2
from gen.ostinato.controller.v1 import controller_pb2, controller_pb2_grpc
from gen.ostinato.director.v1 import director_pb2, director_pb2_grpc
from ostinato import rpc
from ostinato.topology import Topology, TopologyConfig
from tests.integration.support import Joc, eventually, running
from tests.integration.test_cluster import (
    ORDERS,
    active_node,
    add_orders,
    all_done_exactly_once,
    deploy,
    starts,
)

pytestmark = pytest.mark.integration

# Orders held for tomorrow: the figure.
HELD = 10_000
BATCH = 1_000  # held orders per AddOrders call
# How long the controller and the director may take to hold all of them, before and after the
# fail-over: generous for what they should manage (thousands a second), bounded for what they do.
HOLD_TIMEOUT_S = 30 + HELD / 100
AFTER = 50  # normal orders added once the new director is active


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator[Topology]:
    config = TopologyConfig.ephemeral()
    config.controller_cluster = "three"
    config.director_cluster = "three"
    with running(tmp_path / "topology", config) as topo:
        yield topo


@pytest.fixture
async def joc(clusters: Topology) -> AsyncIterator[Joc]:
    channel = clusters.channel(clusters.joc_address)
    yield Joc.connect(channel)
    await channel.close()


@pytest.fixture
async def controller(clusters: Topology) -> AsyncIterator[rpc.ClusterTarget]:
    target = rpc.ClusterTarget(
        clusters.node_addresses("controller").split(","), name="controller", security=clusters.security("joc")
    )
    yield target
    await target.close()


async def add_held(controller: rpc.ClusterTarget, ids: list[str], at: Timestamp) -> None:
    """Straight to the controller, BATCH orders a call: through JOC it takes one call an order."""
    for start in range(0, len(ids), BATCH):
        orders = [
            controller_pb2.NewOrder(id=i, workflow_path="/three-jobs", scheduled_for=at)
            for i in ids[start : start + BATCH]
        ]
        response = await controller.call(
            controller_pb2_grpc.ControllerServiceStub,
            "AddOrders",
            controller_pb2.AddOrdersRequest(orders=orders),
            timeout=60,
        )
        assert not any(o.existed for o in response.orders), "a held order existed already"


async def director_holds(topo: Topology) -> int:
    """Orders the active director node holds."""
    name = await active_node(topo, "director")
    async with topo.channel(topo.addresses[name], as_name=topo.nodes["controller"][0]) as channel:
        overview = await director_pb2_grpc.DirectorServiceStub(channel).GetOverview(
            director_pb2.GetOverviewRequest(), timeout=10
        )
    return overview.order_count


async def controller_orders(controller: rpc.ClusterTarget) -> list[order_pb2.Order]:
    snapshot = await controller.call(
        controller_pb2_grpc.ControllerServiceStub,
        "GetSnapshot",
        controller_pb2.GetSnapshotRequest(),
        timeout=30,
    )
    return list(snapshot.orders)


def held_at_joc(topo: Topology) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(topo.data_dir / "joc" / "joc.db") as db:
        return db.execute(
            "SELECT order_id, state, deleted_at FROM orders WHERE order_id LIKE 'held-%'"
        ).fetchall()


@pytest.mark.timeout(180 + 2 * HOLD_TIMEOUT_S)
async def test_held_orders_survive_a_director_fail_over_once_and_unstarted(
    clusters: Topology, joc: Joc, controller: rpc.ClusterTarget
) -> None:
    await deploy(joc, clusters)
    tomorrow = Timestamp()
    tomorrow.FromMilliseconds(int((time.time() + 24 * 3600) * 1000))
    held = [f"held-{i:06d}" for i in range(HELD)]
    began = time.monotonic()
    await add_held(controller, held, tomorrow)
    await eventually(
        lambda: _holds(clusters, HELD), timeout=HOLD_TIMEOUT_S, what=f"the director holding {HELD} orders"
    )
    print(f"{HELD} held orders added and held by the director in {time.monotonic() - began:.1f} s")

    ids = await add_orders(joc, "normal")
    await eventually(lambda: len(starts(clusters)) >= ORDERS, timeout=60, what="a third of the jobs started")
    assert len(starts(clusters)) < 3 * ORDERS, "all jobs ran before the fault: make them slower"
    victim = await active_node(clusters, "director")
    killed = time.monotonic()
    clusters.kill(victim)
    successor = await active_node(clusters, "director")
    print(f"director: {victim} killed, {successor} active after {time.monotonic() - killed:.2f} s")
    assert successor != victim
    ids += await add_orders(joc, "after", n=AFTER)
    await all_done_exactly_once(clusters, ids)
    print(f"every normal order finished {time.monotonic() - killed:.1f} s after the kill")

    # Only the held orders are left, each once, unstarted, as they were added.
    await eventually(
        lambda: _holds(clusters, HELD), timeout=HOLD_TIMEOUT_S, what=f"the new director holding {HELD} orders"
    )
    orders: list[order_pb2.Order] = []

    async def only_held_at_controller() -> bool:
        orders[:] = await controller_orders(controller)
        return {o.id for o in orders} == set(held)

    await eventually(only_held_at_controller, what="the controller holding the held orders only")
    assert Counter(o.id for o in orders) == Counter(held)
    for order in orders:
        assert order.state == order_pb2.ORDER_STATE_FRESH, order
        assert order.agent == "agent-1" and order.attached_state == order_pb2.ATTACHED_STATE_ATTACHED, order
        assert order.scheduled_for == tomorrow, order
    assert not [line for line in starts(clusters) if line.startswith("held-")], "a held order started"
    await eventually(lambda: len(held_at_joc(clusters)) == HELD, what="JOC showing every held order")
    rows = held_at_joc(clusters)
    assert sorted(order_id for order_id, _, _ in rows) == held
    assert {(state, deleted) for _, state, deleted in rows} == {("FRESH", None)}, Counter(r[1:] for r in rows)


async def _holds(topo: Topology, n: int) -> bool:
    return await director_holds(topo) == n
