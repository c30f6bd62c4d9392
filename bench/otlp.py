"""A real OTLP trace receiver (opentelemetry-proto's TraceServiceServicer on a gRPC server with
mutual TLS) that keeps what it receives; and the standard variables that make services export
to it. Used by the latency part (tracing on and off) and by tests/integration/test_tracing.py."""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from ostinato import pki


@dataclass(frozen=True)
class Span:
    service: str  # the resource's service.name
    name: str
    trace_id: str  # hex
    span_id: str
    parent_id: str  # "" for a root span
    attributes: dict[str, Any]


@dataclass
class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    spans: list[Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def Export(  # noqa: N802 (gRPC method name)
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    received.append(
                        Span(
                            resource.get("service.name", ""),
                            s.name,
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            {a.key: _value(a.value) for a in s.attributes},
                        )
                    )
        with self.lock:
            self.spans += received
        return trace_service_pb2.ExportTraceServiceResponse()

    def all(self) -> list[Span]:
        with self.lock:
            return list(self.spans)

    def trace(self, trace_id: str) -> list[Span]:
        return [s for s in self.all() if s.trace_id == trace_id]


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@dataclass
class Running:
    receiver: Receiver
    server: grpc.Server
    port: int
    env: dict[str, str]  # OTEL_EXPORTER_OTLP_* for the exporters, with a client certificate

    def stop(self) -> None:
        self.server.stop(1).wait()


def start(tls_dir: Path, client: pki.Issued) -> Running:
    """A receiver on a free loopback port with a certificate of the CA in `tls_dir` (made there),
    accepting exporters that show a certificate of that CA; `client` is the one they show."""
    issued = pki.ensure(tls_dir, ["otlp-receiver"], ["127.0.0.1", "localhost"])["otlp-receiver"]
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    credentials = grpc.ssl_server_credentials(
        [(issued.key.read_bytes(), issued.cert.read_bytes())],
        root_certificates=(tls_dir / pki.CA_CERT).read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"https://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(tls_dir / pki.CA_CERT),
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(client.cert),
        "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(client.key),
    }
    return Running(receiver, server, port, env)
