"""OpenTelemetry: with the standard variables set, one order's spans form one trace across services."""

from __future__ import annotations

import re
from pathlib import Path

from gen.ostinato.common.v1 import order_pb2
from gen.ostinato.joc.v1 import joc_pb2
from ostinato.topology import Topology, TopologyConfig
from tests.integration.support import Joc, shell_job

TRACE_ID = re.compile(r'"trace_id": "0x([0-9a-f]{32})"')


def trace_ids(log: str, span_name: str) -> set[str]:
    """Trace ids of the console exporter's spans with this name in a service's log."""
    ids = set()
    for block in log.split('{\n    "name": ')[1:]:
        if block.startswith(f'"{span_name}"'):
            m = TRACE_ID.search(block)
            if m:
                ids.add(m.group(1))
    return ids


async def test_one_order_is_one_trace_across_services(tmp_path: Path) -> None:
    topology = Topology(
        tmp_path / "t", TopologyConfig.ephemeral(subagents=1), env={"OTEL_TRACES_EXPORTER": "console"}
    )
    topology.start()
    try:
        channel = topology.channel(topology.joc_address)
        joc = Joc.connect(channel)
        await joc.deploy_workflow(
            "/traced",
            {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job("echo traced")}},
        )
        added = await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/traced"))
        assert (await joc.wait_until_ended(added.order_id)).state == order_pb2.ORDER_STATE_FINISHED
        await channel.close()
    finally:
        topology.stop()  # a graceful stop flushes the exporters
    logs = {name: s.log_text() for name, s in topology.services.items()}
    joc_traces = trace_ids(logs["joc"], "/ostinato.joc.v1.OrderService/AddOrder")
    controller_traces = trace_ids(logs["controller"], "/ostinato.controller.v1.ControllerService/AddOrders")
    director_traces = trace_ids(logs["director"], "job start")
    subagent_traces = trace_ids(logs["subagent-1"], "job process")
    assert len(joc_traces) == 1, logs["joc"][-2000:]
    assert joc_traces == controller_traces, "the controller's span is not in JOC's trace"
    assert joc_traces == director_traces, "the job start is not in the order's trace"
    assert joc_traces == subagent_traces, "the job's process is not in the order's trace"
    # Health and reflection calls are not traced.
    assert "grpc.health" not in logs["joc"] + logs["controller"]
