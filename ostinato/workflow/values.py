"""Conversions between Python values and the Value message, in one place."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any

from gen.ostinato.common.v1 import values_pb2


def to_value(v: Any) -> values_pb2.Value:
    if isinstance(v, values_pb2.Value):
        return v
    if isinstance(v, bool):
        return values_pb2.Value(boolean=v)
    if isinstance(v, (int, float, Decimal)):
        return values_pb2.Value(number=_number_text(v))
    if isinstance(v, str):
        return values_pb2.Value(string=v)
    if isinstance(v, (list, tuple)):
        return values_pb2.Value(list=values_pb2.ListValue(values=[to_value(x) for x in v]))
    if isinstance(v, dict):
        return values_pb2.Value(object=values_pb2.ObjectValue(fields={k: to_value(x) for k, x in v.items()}))
    raise TypeError(f"no Value for {type(v).__name__}")


def from_value(v: values_pb2.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "string":
        return v.string
    if kind == "number":
        d = Decimal(v.number)
        return int(d) if d == d.to_integral_value() else d
    if kind == "boolean":
        return v.boolean
    if kind == "list":
        return [from_value(x) for x in v.list.values]
    if kind == "object":
        return {k: from_value(x) for k, x in v.object.fields.items()}
    return None


def value_text(v: values_pb2.Value) -> str:
    """How a value reads in an environment variable or a log line."""
    kind = v.WhichOneof("kind")
    if kind == "string":
        return v.string
    if kind == "number":
        return v.number
    if kind == "boolean":
        return "true" if v.boolean else "false"
    if kind is None:
        return ""
    return json_text(v)


def json_text(v: values_pb2.Value) -> str:
    """Plain JSON of a value, numbers as they are: [1, "a"], {"k": true}."""
    kind = v.WhichOneof("kind")
    if kind == "string":
        return json.dumps(v.string, ensure_ascii=False)
    if kind == "number":
        return v.number
    if kind == "boolean":
        return "true" if v.boolean else "false"
    if kind == "list":
        return "[" + ", ".join(json_text(x) for x in v.list.values) + "]"
    if kind == "object":
        fields = sorted(v.object.fields.items())
        return (
            "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {json_text(x)}" for k, x in fields) + "}"
        )
    return "null"


def parse_cli_value(text: str) -> values_pb2.Value:
    """A k=v argument's value: numbers become numbers, true/false booleans, the rest strings."""
    if text in ("true", "false"):
        return values_pb2.Value(boolean=text == "true")
    try:
        d = Decimal(text)
    except InvalidOperation:
        return values_pb2.Value(string=text)
    if d.is_finite() and text.strip() == text and not text.startswith("+"):
        return values_pb2.Value(number=_number_text(d))
    return values_pb2.Value(string=text)


def _number_text(v: int | float | Decimal) -> str:
    if isinstance(v, float):
        v = Decimal(repr(v))
    d = Decimal(v)
    if d == d.to_integral_value():
        return str(d.quantize(Decimal(1)))
    return format(d.normalize(), "f")
