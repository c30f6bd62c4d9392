"""`ostinato cluster status|switchover` against the local topology (single-node controller and
director), through JOC, with real processes."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from gen.ostinato.common.v1 import order_pb2
from gen.ostinato.controller.v1 import controller_pb2, controller_pb2_grpc
from gen.ostinato.joc.v1 import joc_pb2
from ostinato import rpc
from ostinato.topology import Topology, TopologyConfig
from tests.integration.support import Joc, shell_job

pytestmark = pytest.mark.integration


async def ostinato(*args: str, timeout: float = 30) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ostinato.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode or 0, out.decode(), err.decode()


def tables(out: str) -> dict[str, list[dict[str, str]]]:
    """The output's tables: title line -> rows as {column: value}, each value where its column's
    header starts (headers are apart by two spaces or more)."""
    found: dict[str, list[dict[str, str]]] = {}
    for block in out.strip().split("\n\n"):
        title, header, *rows = block.splitlines()
        columns = list(re.finditer(r"\S+(?: \S+)*", header))
        names, starts = [m.group() for m in columns], [m.start() for m in columns]
        found[title] = [
            {
                name: row[start : starts[i + 1] if i + 1 < len(starts) else None].strip()
                for i, (name, start) in enumerate(zip(names, starts, strict=True))
            }
            for row in rows
        ]
    return found


async def test_cluster_status_and_switchover_of_single_nodes(topology: Topology, joc: Joc) -> None:
    cli = ["--joc", topology.joc_address, *topology.cli_args()]
    await joc.deploy_workflow(
        "/hello", {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job("true")}}
    )
    await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/hello", order_id="o"))
    await joc.wait_until_ended("o")

    code, out, err = await ostinato("cluster", "status", *cli)
    assert code == 0, err
    found = tables(out)
    [controller_title, agent_title, subagents_title] = found
    assert controller_title.startswith("controller controller: active node ")
    assert agent_title.startswith("agent agent-1: active node ")
    [node] = found[controller_title]
    assert controller_title.endswith(f" {node['NODE']}")
    assert node["ROLE"] == "active" and node["ADDRESS"] == topology.addresses["controller"]
    assert int(node["TERM"]) > 0 and int(node["LAST EVENT"]) > 0 and node["LAG"] == "0"
    [director] = found[agent_title]
    assert director["ROLE"] == "active" and director["ADDRESS"] == topology.addresses["director"]
    assert int(director["TERM"]) > 0 and int(director["LAST EVENT"]) > 0
    assert subagents_title == "subagents of agent agent-1: 2"
    assert [(s["SUBAGENT"], s["STATE"], s["PROCESSES"]) for s in found[subagents_title]] == [
        ("subagent-1", "connected", "0"),
        ("subagent-2", "connected", "0"),
    ]
    assert found[subagents_title][0]["ADDRESS"] == topology.addresses["subagent-1"]

    code, out, err = await ostinato("cluster", "switchover", *cli)
    assert (code, out) == (1, ""), err
    assert err.startswith("ostinato: error: ") and "no other full node" in err, err
    code, out, err = await ostinato(
        "cluster",
        "switchover",
        "--controller",
        "controller",
        "--to",
        "nobody",
        *cli,
    )
    assert code == 1 and "nobody" in err, err
    code, out, err = await ostinato("cluster", "status", "--controller", "nope", *cli)
    assert code == 1 and "unknown controller 'nope'" in err, err

    code, out, err = await ostinato("audit", "--action", "switchover", *cli)
    assert code == 0, err
    assert "controller controller: refused: " in out and "controller controller to nobody: refused" in out


@pytest.fixture
def witness_cluster(tmp_path: Path) -> Iterator[Topology]:
    config = TopologyConfig.ephemeral(subagents=1)
    config.controller_cluster = "witness"
    topology = Topology(tmp_path / "topology", config)
    topology.password = (
        "-" + topology.password
    )  # passed as --cluster-password=VALUE, so it may look like a flag
    topology.start()
    try:
        yield topology
    finally:
        topology.stop()


async def test_switchover_of_a_controller_cluster_through_joc(witness_cluster: Topology) -> None:
    joc = ["--joc", witness_cluster.joc_address, *witness_cluster.cli_args()]
    async with witness_cluster.channel(witness_cluster.joc_address) as channel:
        client = Joc.connect(channel)
        await client.deploy_workflow(
            "/hello", {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job("true")}}
        )
        # Starts after the switch-over, when JOC makes no call of its own to the controller: its
        # events reach JOC only if JOC's event stream followed the active node.
        later = joc_pb2.AddOrderRequest(workflow_path="/hello", order_id="later")
        later.scheduled_for.FromDatetime(datetime.now(UTC) + timedelta(seconds=3))
        await client.orders.AddOrder(later)

        code, out, err = await ostinato("cluster", "status", *joc)
        assert code == 0, err
        [title, _, _] = tables(out)  # the controller, its agent, the subagents
        nodes = {row["NODE"]: row for row in tables(out)[title]}
        assert sorted(nodes) == ["a", "b", "w"] and nodes["w"]["ROLE"] == "witness"
        active = title.rsplit(" ", 1)[1]
        assert nodes[active]["ROLE"] == "active"
        other = "b" if active == "a" else "a"
        # A receiver of the active node's events (as JOC is) is told to go once the node is deposed.
        old = witness_cluster.channel(witness_cluster.addresses[f"controller-{active}"], as_name="joc")
        stub = controller_pb2_grpc.ControllerServiceStub(old)
        overview = await stub.GetOverview(controller_pb2.GetOverviewRequest())
        watching = stub.WatchEvents(
            controller_pb2.WatchEventsRequest(after=overview.last_event_id, heartbeat_seconds=0.2)
        )
        await watching.read()

        code, out, err = await ostinato("cluster", "switchover", "--to", other, *joc)
        assert code == 0, err
        assert out.startswith(f"controller controller: active node now {other} (was {active}; term ")
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async with asyncio.timeout(5):  # heartbeats every 0.2 s would keep it open for ever
                while True:
                    await watching.read()
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value
        assert rpc.active_address_of(ended.value) == witness_cluster.addresses[f"controller-{other}"]
        await old.close()
        order = await client.wait_until_ended("later", timeout=15)
        assert order.state == order_pb2.ORDER_STATE_FINISHED

    code, out, err = await ostinato("cluster", "status", *joc)
    assert code == 0, err
    [title, _, _] = tables(out)
    assert title.endswith(f"active node {other}")
    code, out, err = await ostinato("audit", "--action", "switchover", *joc)
    assert f"controller controller: {active} -> {other} (term " in out, out
