"""Order commands through JOC to the agent holding the order: cancel with kill, suspend, resume."""

from __future__ import annotations

import os
from pathlib import Path

from gen.ostinato.common.v1 import commands_pb2, order_pb2
from gen.ostinato.joc.v1 import joc_pb2
from ostinato.topology import Topology
from tests.integration.support import Joc, eventually, shell_job

S = order_pb2.OrderState


async def command(joc: Joc, **kind: object) -> None:
    response = await joc.orders.CommandOrders(
        joc_pb2.CommandOrdersRequest(commands=[commands_pb2.OrderCommand(**kind)])
    )  # type: ignore[arg-type]
    assert [r.error for r in response.results] == [""], response


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_cancel_with_kill_stops_the_running_job(topology: Topology, joc: Joc, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    await joc.deploy_workflow("/long", {
        "instructions": [{"execute": {"jobName": "long"}}, {"execute": {"jobName": "never"}}],
        "jobs": {"long": shell_job(f"echo $$ > {pid_file}; echo started; exec sleep 60"),
                 "never": shell_job("echo never")},
    })  # fmt: skip
    added = await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/long"))
    await joc.wait_for(added.order_id, "order_std_written")
    pid = int(pid_file.read_text())
    assert alive(pid)
    await command(joc, order_id=added.order_id, cancel=commands_pb2.CancelOrder(kill=True))
    order = await joc.wait_for(added.order_id, "order_cancelled")
    assert order.state == S.ORDER_STATE_CANCELLED
    await eventually(lambda: not alive(pid))
    detail = await joc.orders.GetOrder(joc_pb2.GetOrderRequest(order_id=added.order_id))
    kinds = [e.WhichOneof("kind") for e in detail.events]
    assert "order_kill_requested" in kinds and kinds.count("order_processing_started") == 1


async def test_suspend_after_the_job_then_resume(topology: Topology, joc: Joc, tmp_path: Path) -> None:
    gate, second = tmp_path / "gate", tmp_path / "second-ran"
    await joc.deploy_workflow("/two", {
        "instructions": [{"execute": {"jobName": "first"}}, {"execute": {"jobName": "second"}}],
        "jobs": {"first": shell_job(f"echo waiting; while [ ! -e {gate} ]; do sleep 0.05; done"),
                 "second": shell_job(f"touch {second}")},
    })  # fmt: skip
    added = await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/two"))
    await joc.wait_for(added.order_id, "order_std_written")
    await command(joc, order_id=added.order_id, suspend=commands_pb2.SuspendOrder())
    # The controller marks the order and forwards the command to the agent, whose own mark comes
    # back as a second OrderMarked: only from then on does the agent know not to go on.
    marks: list[int] = []

    async def marked_at_agent() -> bool:
        detail = await joc.orders.GetOrder(joc_pb2.GetOrderRequest(order_id=added.order_id))
        marks[:] = [e.id for e in detail.events if e.WhichOneof("kind") == "order_marked"]
        return len(marks) >= 2

    await eventually(marked_at_agent, what="the agent's suspension mark")
    gate.touch()  # the first job ends; the order stops before the second
    order = await joc.wait_for(added.order_id, "order_suspended")
    assert order.state == S.ORDER_STATE_SUSPENDED and order.position.nr == 1
    assert not second.exists()
    await command(joc, order_id=added.order_id, resume=commands_pb2.ResumeOrder())
    order = await joc.wait_until_ended(added.order_id)
    assert order.state == S.ORDER_STATE_FINISHED and second.exists()
