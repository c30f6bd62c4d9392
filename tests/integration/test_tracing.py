"""Traces into a real OTLP receiver: one order added by the Node.js client is one trace, with spans
from the client, JOC, controller, director, subagent and the job process, parent links intact.

The receiver is opentelemetry-proto's TraceServiceServicer on a gRPC server with mutual TLS; the
services export to it through the standard OTEL_EXPORTER_OTLP_* variables."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from gen.ostinato.common.v1 import items_pb2
from ostinato import pki
from ostinato.topology import ROOT, Topology, TopologyConfig
from tests.integration.support import Joc, eventually

NODE_CLIENT = ROOT / "clients" / "node" / "examples" / "add-order.js"
TRACED_JOB = Path(__file__).with_name("traced_job.py")


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()

    def Export(  # noqa: N802 (gRPC method name)
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    attributes = {a.key: _value(a.value) for a in s.attributes}
                    received.append(
                        Span(
                            resource.get("service.name", ""),
                            s.name,
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            attributes,
                        )
                    )
        with self.lock:
            self.spans += received
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


async def test_an_order_added_by_the_node_client_is_one_trace_across_services(tmp_path: Path) -> None:
    topology = Topology(tmp_path / "t", TopologyConfig.ephemeral(subagents=1))
    tls_dir = topology.tls_dir
    topology.certificates()  # the CA, and a certificate for each service and the CLI
    receiver_cert = pki.ensure(tls_dir, ["otlp-receiver"], ["127.0.0.1", "localhost"])["otlp-receiver"]
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    credentials = grpc.ssl_server_credentials(
        [(receiver_cert.key.read_bytes(), receiver_cert.cert.read_bytes())],
        root_certificates=(tls_dir / pki.CA_CERT).read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    cli = topology.certificates()["cli"]
    otlp = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"https://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(tls_dir / pki.CA_CERT),
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(cli.cert),
        "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(cli.key),
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    topology.env = otlp
    topology.start()
    try:
        channel = topology.channel(topology.joc_address)
        joc = Joc.connect(channel)
        # The job's env hands it the exporter's variables (values are expressions: quoted).
        job_env = {k: f"'{v}'" for k, v in otlp.items() if k != "OTEL_BSP_SCHEDULE_DELAY"}
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
                **otlp,
                "OSTINATO_JOC": topology.joc_address,
                "OSTINATO_TLS_DIR": str(tls_dir),
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
        roots = [s for s in receiver.spans if s.service == "node-client"]
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
        # Health and reflection calls are not traced at all.
        assert not [s for s in receiver.spans if "grpc.health" in s.name or "reflection" in s.name]
    finally:
        server.stop(1)
