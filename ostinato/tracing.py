"""OpenTelemetry set-up shared by every service.

Off unless the standard OTEL_* variables ask for an exporter (OTEL_TRACES_EXPORTER, or an
OTEL_EXPORTER_OTLP_*ENDPOINT): then no interceptors are installed at all, so tracing costs nothing.
Trace context crosses gRPC hops by the interceptors; across the journal it travels in
Order.trace_parent, because nothing carries it through a Raft command.
"""

from __future__ import annotations

import os
from typing import Any

_configured: bool | None = None
_test_provider: Any = None


def enabled() -> bool:
    if _test_provider is not None:
        return True
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter and exporter != "none":
        return True
    return any(
        os.environ.get(k) for k in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def use_provider_for_tests(provider: Any) -> None:
    """Tests hand in a TracerProvider with an in-memory exporter."""
    global _test_provider, _configured
    _test_provider = provider
    _configured = None


def configure(service_name: str) -> bool:
    """Installs the global tracer provider once per process; returns whether tracing is on."""
    global _configured
    if _configured is not None:
        return _configured
    if not enabled():
        _configured = False
        return False
    from opentelemetry import trace

    if _test_provider is not None:
        trace.set_tracer_provider(_test_provider)
        _configured = True
        return True
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter_name == "console":
        exporter: Any = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _configured = True
    return True


def _not_health_or_reflection() -> Any:
    from opentelemetry.instrumentation.grpc import filters

    return filters.negate(
        filters.any_of(
            filters.service_prefix("grpc.health.v1"),
            filters.service_prefix("grpc.reflection.v1alpha"),
            filters.service_prefix("grpc.reflection.v1"),
        )
    )


def server_interceptors() -> list[Any]:
    if not _configured:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(filter_=_not_health_or_reflection())]


def client_interceptors() -> list[Any]:
    if not _configured:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())


def current_traceparent() -> str:
    """The W3C traceparent of the current span, or '' when tracing is off."""
    if not _configured:
        return ""
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent", "")


# Span attributes of an order's spans: ostinato.order_id, ostinato.workflow, ostinato.job,
# ostinato.agent, ostinato.subagent (keyword arguments below name them without the prefix).
ATTRIBUTE_PREFIX = "ostinato."


def _attributes(values: dict[str, Any]) -> dict[str, Any]:
    return {ATTRIBUTE_PREFIX + k: v for k, v in values.items() if v not in ("", None, [], ())}


def annotate(**attributes: Any) -> None:
    """Adds attributes (order_id=..., workflow=...) to the current span, if any."""
    if not _configured:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(_attributes(attributes))


def span_from_traceparent(name: str, traceparent: str, **attributes: Any) -> Any:
    """A span that continues the trace an order carries (a job process, an order step)."""
    from contextlib import nullcontext

    if not _configured or not traceparent:
        return nullcontext()
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    ctx = extract({"traceparent": traceparent})
    tracer = trace.get_tracer("ostinato")
    return tracer.start_as_current_span(name, context=ctx, attributes=_attributes(attributes))
