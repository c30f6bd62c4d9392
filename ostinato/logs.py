"""Structured log lines (`--log-format json`): one JSON object a line, and the fields that tie a
line to an order. A line about an order passes `extra=about_order(...)`; the text format shows
the message only, the JSON format adds the fields."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

# Fields a log record may carry (through `extra=`), in the order the JSON shows them.
ORDER_FIELDS = ("order_id", "workflow", "job", "agent", "subagent", "trace_id", "span_id")


def trace_id_of(traceparent: str) -> str:
    """The trace id of a W3C traceparent ("00-TRACEID-SPANID-FLAGS"), or ""."""
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


def about_order(
    order_id: str, workflow: str = "", job: str = "", traceparent: str = "", **more: str
) -> dict[str, str]:
    """The `extra=` of a line about an order: its id, workflow, job and the trace it belongs to."""
    fields = {"order_id": order_id, "workflow": workflow, "job": job, "trace_id": trace_id_of(traceparent)}
    fields.update(more)
    return {k: v for k, v in fields.items() if v}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ORDER_FIELDS:
            value = getattr(record, name, None)
            if value:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)
