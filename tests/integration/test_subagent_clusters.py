"""Subagent clusters with real subagent processes: round-robin spreads jobs evenly, fixed priority
uses the first subagent, moves on when it is killed and comes back when it returns. Each job
records the subagent it ran on (OSTINATO_SUBAGENT_ID), so the spread is checked from the
processes themselves."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gen.ostinato.common.v1 import items_pb2, order_pb2
from gen.ostinato.joc.v1 import joc_pb2
from ostinato.topology import Topology, TopologyConfig
from tests.integration.support import Joc, eventually

SUBAGENTS = ["subagent-1", "subagent-2", "subagent-3"]


@pytest.fixture
def three(tmp_path: Path) -> Iterator[Topology]:
    config = TopologyConfig.ephemeral(subagents=3)
    config.subagent_heartbeat_s = 0.25  # a killed subagent counts as lost within a second
    topology = Topology(tmp_path / "topology", config)
    topology.start()
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture
async def joc(three: Topology) -> AsyncIterator[Joc]:
    async with three.channel(three.joc_address) as channel:
        yield Joc.connect(channel)


def records(topology: Topology) -> list[str]:
    path = topology.data_dir / "ran-on.txt"
    return path.read_text().splitlines() if path.exists() else []


async def deploy(joc: Joc, topology: Topology, mode: str, priorities: dict[str, int]) -> None:
    cluster = {
        "agent": "agent-1",
        "schedulingMode": mode,
        "subagents": [{"subagentId": s, "priority": p} for s, p in priorities.items()],
    }
    await joc.deploy("/clusters/c", items_pb2.ITEM_TYPE_SUBAGENT_CLUSTER, cluster)
    job = {
        "agent": "agent-1",
        "subagentClusterId": "/clusters/c",
        "processLimit": 50,
        "executable": {
            "shellScript": {
                "script": 'echo "$OSTINATO_ORDER_ID $OSTINATO_SUBAGENT_ID" >> "$RECORD"',
                "env": {"RECORD": f"'{topology.data_dir / 'ran-on.txt'}'"},
            }
        },
    }
    await joc.deploy_workflow(
        "/spread", {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": job}}
    )


async def run_orders(joc: Joc, prefix: str, n: int) -> list[order_pb2.Order]:
    ids = [f"{prefix}-{i:03d}" for i in range(n)]
    for start in range(0, n, 25):
        await asyncio.gather(
            *(
                joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/spread", order_id=i))
                for i in ids[start : start + 25]
            )
        )
    return [await joc.wait_until_ended(i, timeout=60) for i in ids]


def ran_on(topology: Topology, prefix: str) -> Counter[str]:
    return Counter(line.split()[1] for line in records(topology) if line.startswith(prefix))


@pytest.mark.timeout(120)
async def test_round_robin_spreads_100_jobs_evenly_over_3_subagents(three: Topology, joc: Joc) -> None:
    await deploy(joc, three, "SCHEDULING_MODE_ROUND_ROBIN", dict.fromkeys(SUBAGENTS, 1))
    orders = await run_orders(joc, "rr", 100)
    assert all(o.state == order_pb2.ORDER_STATE_FINISHED for o in orders)
    spread = ran_on(three, "rr")
    assert sorted(spread) == SUBAGENTS and sum(spread.values()) == 100, spread
    assert max(spread.values()) - min(spread.values()) <= 1, spread


@pytest.mark.timeout(120)
async def test_fixed_priority_moves_on_when_the_first_is_killed_and_back_when_it_returns(
    three: Topology, joc: Joc
) -> None:
    await deploy(
        joc, three, "SCHEDULING_MODE_FIXED_PRIORITY", {"subagent-1": 1, "subagent-2": 3, "subagent-3": 2}
    )
    await run_orders(joc, "first", 10)
    assert ran_on(three, "first") == {"subagent-2": 10}

    three.kill("subagent-2")
    # Orders added now wait (ready) until the director notices, then go to the next in priority.
    await run_orders(joc, "second", 10)
    assert ran_on(three, "second") == {"subagent-3": 10}

    three.start_service("subagent-2")

    async def back() -> bool:
        # The director reconnects within its reconnect pace; until then jobs still go to subagent-3.
        await run_orders(joc, f"probe-{len(records(three))}", 1)
        return ran_on(three, "probe").get("subagent-2", 0) > 0

    await eventually(back, timeout=20, what="jobs back on subagent-2")
    await run_orders(joc, "third", 10)
    assert ran_on(three, "third") == {"subagent-2": 10}


@pytest.fixture
def quick_timeout(tmp_path: Path) -> Iterator[Topology]:
    config = TopologyConfig.ephemeral(subagents=2)
    config.subagent_heartbeat_s = 0.25
    config.director_timeout_s = 2.0  # the subagents kill their jobs 2 s after losing the director
    topology = Topology(tmp_path / "topology", config)
    topology.start()
    try:
        yield topology
    finally:
        topology.stop()


@pytest.mark.timeout(60)
async def test_a_job_on_a_subagent_killed_for_good_fails_and_is_not_run_again(
    quick_timeout: Topology,
) -> None:
    """The subagent never comes back: once it has certainly stopped the job (its director timeout
    plus the heartbeat silences), the job ends disrupted and the order fails; it does not run a
    second time elsewhere."""
    topology = quick_timeout
    record = topology.data_dir / "started.txt"
    async with topology.channel(topology.joc_address) as channel:
        joc = Joc.connect(channel)
        job = {
            "agent": "agent-1",
            "executable": {
                "shellScript": {
                    "script": 'echo "$OSTINATO_SUBAGENT_ID" >> "$RECORD"; sleep 30',
                    "env": {"RECORD": f"'{record}'"},
                }
            },
        }
        await joc.deploy_workflow(
            "/long", {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": job}}
        )
        await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/long", order_id="long"))
        await eventually(lambda: record.exists() and record.read_text().strip(), what="the job started")
        [victim] = record.read_text().split()
        topology.kill(victim)
        order = await joc.wait_until_ended("long", timeout=30)
        assert order.state == order_pb2.ORDER_STATE_FAILED
        [outcome] = order.historic_outcomes
        assert f"subagent {victim} unreachable" in outcome.outcome.message, outcome
        assert record.read_text().split() == [victim], "the job ran again"


@pytest.mark.timeout(60)
async def test_a_director_with_only_its_built_in_subagent_runs_jobs(tmp_path: Path) -> None:
    config = TopologyConfig.ephemeral(subagents=0)
    config.builtin_subagent = "inside"
    topology = Topology(tmp_path / "topology", config)
    topology.start()
    try:
        async with topology.channel(topology.joc_address) as channel:
            joc = Joc.connect(channel)
            job = {
                "agent": "agent-1",
                "executable": {"shellScript": {"script": 'echo "on $OSTINATO_SUBAGENT_ID"'}},
            }
            await joc.deploy_workflow(
                "/in", {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": job}}
            )
            await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/in", order_id="in"))
            assert (await joc.wait_until_ended("in")).state == order_pb2.ORDER_STATE_FINISHED
            chunks = [c async for c in joc.orders.GetOrderLog(joc_pb2.GetOrderLogRequest(order_id="in"))]
            assert "".join(c.chunk for c in chunks) == "on inside\n"
    finally:
        topology.stop()
