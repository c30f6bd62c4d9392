"""A job that traces its own work: a span whose parent is the $TRACEPARENT the subagent gave it,
exported over OTLP (the OTEL_EXPORTER_OTLP_* variables come from the job's env)."""

import os

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

provider = TracerProvider(resource=Resource.create({"service.name": "job"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
parent = extract({"traceparent": os.environ["TRACEPARENT"]})
with provider.get_tracer("job").start_as_current_span("job work", context=parent):
    print("traced work")
provider.shutdown()
