"""Explicit serialisation of a journaled state for snapshots: JSON with typed leaves. Pure.

pysyncobj's default would pickle the live object (and loading a pickle runs code). Here a state is
its attributes, and each value is plain data: numbers, strings, bytes, lists, tuples, dicts (keys may be
tuples), protobuf messages (by full name, as bytes) and instances of the few classes the state
declares (`JournaledState.snapshot_classes`). Anything else is refused at once, when the snapshot
is made, so a state that grows an unserialisable attribute fails its tests, not a fail-over.
"""

from __future__ import annotations

import base64
import json
from collections import deque
from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

FORMAT = 1


class SnapshotError(ValueError):
    pass


def encode(state: Any) -> dict[str, Any]:
    classes = {cls.__name__: cls for cls in state.snapshot_classes}
    return {"format": FORMAT, "type": type(state).__name__, "attributes": _encode(vars(state), classes)}


def decode(data: dict[str, Any], new_state: Callable[[], Any]) -> Any:
    """A fresh state with the snapshot's attributes; refuses a snapshot of another type or shape."""
    state = new_state()
    if data.get("format") != FORMAT or data.get("type") != type(state).__name__:
        raise SnapshotError(
            f"snapshot of {data.get('type')!r} format {data.get('format')!r},"
            f" expected {type(state).__name__!r} format {FORMAT}"
        )
    classes = {cls.__name__: cls for cls in state.snapshot_classes}
    attributes = _decode(data["attributes"], classes)
    unknown = set(attributes) - set(vars(state))
    if unknown:
        raise SnapshotError(f"snapshot has attributes this version does not know: {sorted(unknown)}")
    vars(state).update(attributes)
    state.restored()
    return state


def dumps(state: Any) -> bytes:
    return json.dumps(encode(state), separators=(",", ":")).encode()


def loads(data: bytes, new_state: Callable[[], Any]) -> Any:
    return decode(json.loads(data), new_state)


def _encode(value: Any, classes: dict[str, type]) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return {"$y": base64.b64encode(value).decode()}
    if isinstance(value, Message):
        return {
            "$pb": value.DESCRIPTOR.full_name,
            "b": base64.b64encode(value.SerializeToString(deterministic=True)).decode(),
        }
    if isinstance(value, list):
        return [_encode(v, classes) for v in value]
    if isinstance(value, tuple):
        return {"$t": [_encode(v, classes) for v in value]}
    if isinstance(value, deque):
        return {"$q": [_encode(v, classes) for v in value]}
    if isinstance(value, dict):
        return {"$d": [[_encode(k, classes), _encode(v, classes)] for k, v in value.items()]}
    name = type(value).__name__
    if classes.get(name) is type(value):
        return {"$o": name, "a": _encode(vars(value), classes)}
    raise SnapshotError(f"cannot snapshot a {type(value).__qualname__}: declare it in snapshot_classes")


def _decode(value: Any, classes: dict[str, type]) -> Any:
    if isinstance(value, list):
        return [_decode(v, classes) for v in value]
    if not isinstance(value, dict):
        return value
    if "$pb" in value:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(value["$pb"])
        return message_factory.GetMessageClass(descriptor).FromString(base64.b64decode(value["b"]))
    if "$y" in value:
        return base64.b64decode(value["$y"])
    if "$t" in value:
        return tuple(_decode(v, classes) for v in value["$t"])
    if "$q" in value:
        return deque(_decode(v, classes) for v in value["$q"])
    if "$d" in value:
        return {_decode(k, classes): _decode(v, classes) for k, v in value["$d"]}
    if "$o" in value:
        cls = classes.get(value["$o"])
        if cls is None:
            raise SnapshotError(f"snapshot names class {value['$o']!r}, which this state does not declare")
        obj: Any = object.__new__(cls)
        attributes = _decode(value["a"], classes)
        # Frozen dataclasses refuse setattr; their __dict__ takes the fields all the same.
        vars(obj).update(attributes)
        return obj
    raise SnapshotError(f"unknown snapshot value {sorted(value)}")
