"""Traces into a real OTLP receiver: one order added by the Node.js client is one trace, with spans
from the client, JOC, controller, director, subagent and the job process, parent links intact.

The receiver is opentelemetry-proto's TraceServiceServicer on a gRPC server with mutual TLS; the
services export to it through the standard OTEL_EXPORTER_OTLP_* variables."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from bench import otlp
from gen.ostinato.common.v1 import items_pb2
from ostinato.topology import ROOT, Topology, TopologyConfig
from tests.integration.support import Joc, eventually

NODE_CLIENT = ROOT / "clients" / "node" / "examples" / "add-order.js"
TRACED_JOB = Path(__file__).with_name("traced_job.py")


async def test_an_order_added_by_the_node_client_is_one_trace_across_services(tmp_path: Path) -> None:
    config = TopologyConfig.ephemeral(subagents=1)
    config.log_format = "json"
    topology = Topology(tmp_path / "t", config)
    # The CA and a certificate per service and for the CLI, before the receiver takes one too.
    running = otlp.start(topology.tls_dir, topology.certificates()["cli"])
    receiver = running.receiver
    exporting = {**running.env, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    topology.env = exporting
    topology.start()
    try:
        channel = topology.channel(topology.joc_address)
        joc = Joc.connect(channel)
        # The job's env hands it the exporter's variables (values are expressions: quoted).
        job_env = {k: f"'{v}'" for k, v in running.env.items()}
        script = f"'{sys.executable}' '{TRACED_JOB}'"
        workflow = {
            "instructions": [{"execute": {"jobName": "j"}}],
            "jobs": {
                "j": {"agent": "agent-1", "executable": {"shellScript": {"script": script, "env": job_env}}}
            },
        }
        await joc.deploy("/traced", items_pb2.ITEM_TYPE_WORKFLOW, workflow)
        await channel.close()
        added = await asyncio.to_thread(
            subprocess.run,
            ["node", str(NODE_CLIENT), "/traced"],
            env={
                **os.environ,
                **exporting,
                "OSTINATO_JOC": topology.joc_address,
                "OSTINATO_TLS_DIR": str(topology.tls_dir),
                "OTEL_SERVICE_NAME": "node-client",
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert added.returncode == 0, added.stdout + added.stderr
        assert "traced work" in added.stdout
        order_id = added.stdout.split()[1]
    finally:
        codes = topology.stop()  # a graceful stop flushes the services' exporters
    try:
        assert set(codes.values()) == {0}, codes
        roots = [s for s in receiver.all() if s.service == "node-client"]
        assert [s.attributes.get("ostinato.order_id") for s in roots] == [order_id]
        trace_id = roots[0].trace_id
        wanted = {"node-client", "joc", "controller", "director", "subagent", "job"}
        await eventually(
            lambda: wanted <= {s.service for s in receiver.trace(trace_id)},
            what="spans of every service in the order's trace",
        )
        spans = receiver.trace(trace_id)
        ids = {s.span_id for s in spans}
        orphans = [s for s in spans if s.parent_id and s.parent_id not in ids]
        assert not orphans, f"spans whose parent is not in the trace: {orphans}"
        assert [s for s in spans if not s.parent_id] == roots, "the Node client's span is the only root"
        by_name = {(s.service, s.name): s for s in spans}
        process = by_name[("subagent", "job process")]
        assert by_name[("job", "job work")].parent_id == process.span_id, "the job's parent is its process"
        assert by_name[("director", "job start")].span_id == process.parent_id
        order = {"ostinato.order_id": order_id, "ostinato.workflow": "/traced", "ostinato.job": "j"}
        where = {"ostinato.agent": "agent-1", "ostinato.subagent": "subagent-1"}
        assert by_name[("director", "job start")].attributes.items() >= (order | where).items()
        assert process.attributes.items() >= (order | {"ostinato.subagent": "subagent-1"}).items()
        joc_span = by_name[("joc", "/ostinato.joc.v1.OrderService/AddOrder")]
        assert joc_span.parent_id == roots[0].span_id
        assert joc_span.attributes["ostinato.workflow"] == "/traced"
        controller = by_name[("controller", "/ostinato.controller.v1.ControllerService/AddOrders")]
        assert controller.attributes["ostinato.order_id"] == [order_id]
        # The log lines about the order name it, its workflow, job and trace (--log-format json).
        lines = [
            json.loads(line)
            for name in ("controller", "director", "subagent-1")
            for line in topology.services[name].log_text().splitlines()
            if line.startswith("{") and f'"{order_id}"' in line
        ]
        assert {line["service"] for line in lines} == {"controller", "director", "subagent"}
        assert all(
            (line["order_id"], line["workflow"], line["trace_id"]) == (order_id, "/traced", trace_id)
            for line in lines
        ), lines
        job_lines = [
            line for line in lines if line["service"] != "controller" and "process" in line["message"]
        ]
        assert len(job_lines) >= 3 and all(line["job"] == "j" for line in job_lines), job_lines
        # Health and reflection calls are not traced at all.
        assert not [s for s in receiver.all() if "grpc.health" in s.name or "reflection" in s.name]
    finally:
        running.stop()
