"""How big and how deep client input may be, in one place, and the checks that enforce it where the
input enters (the servicers, the shared workflow parser). Pure.

Why each bound exists: every item, argument and variable ends up inside journal events, which are
replicated, streamed to JOC and to agents, and stored; an event must always fit into one gRPC
message, and a protobuf message nested deeper than 100 levels cannot be parsed at all (the
upb runtime's recursion limit), so whatever can be journaled must stay well below both. Job
arguments reach jobs as environment variables, where Linux refuses a single string longer than
128 KiB (`Argument list too long`).

A refusal is InvalidArgument naming the field as the user wrote it, the size and the limit, before
anything is stored; error texts quote at most an excerpt of the input (`excerpt`).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from google.protobuf.message import Message

from gen.ostinato.common.v1 import commands_pb2, values_pb2
from ostinato.errors import InvalidArgument

M = TypeVar("M", bound=Message)

KIB = 1024
MIB = 1024 * KIB

# One inventory object's JSON (a workflow, a job resource, ...) as sent, and as deployed.
ITEM_JSON_BYTES = 1 * MIB
# Deployed items carry the path and version id JOC adds, and their signature beside the JSON.
SIGNED_ITEM_BYTES = ITEM_JSON_BYTES + 16 * KIB
# Objects and arrays inside one another in an item's JSON.
JSON_NESTING = 128
# Blocks inside blocks of a workflow (a fork in a try in an if ...): 16 levels are at most 64
# protobuf levels, which leaves room for the event and response around a deployed workflow.
INSTRUCTION_NESTING = 16
# One expression's text (an `env` value, an If condition, an argument of Execute or AddOrder).
EXPRESSION_CHARS = 16 * KIB
# One value (an order argument, a variable, a value a job returns, a string an expression makes),
# as its JSON text is long; below Linux's 128 KiB for one environment string.
VALUE_BYTES = 64 * KIB
# Lists and objects inside one another in one value.
VALUE_NESTING = 16
# All arguments of one order together (also the variables a resume command sets), and all values
# one job returns together.
ARGUMENTS_BYTES = 256 * KIB
# The file a job writes its return values to (lines key=value; other lines are ignored).
RETURN_VALUES_FILE_BYTES = 2 * ARGUMENTS_BYTES
# An order id, an argument's or variable's name.
NAME_CHARS = 256
# An inventory path, a workflow path.
PATH_CHARS = 1024
# A signature with its signer's certificate chain.
SIGNATURE_BYTES = 64 * KIB
# Texts longer than this are quoted shortened in error messages.
EXCERPT_CHARS = 60
# A whole error message: gRPC refuses trailing metadata beyond 16 KiB, which a message counts into.
MESSAGE_CHARS = 2000

# The largest request message each method takes; others take DEFAULT_REQUEST_BYTES. Calls that
# carry items or orders are larger, and their senders here (JOC's deployer and order batcher,
# the controller's agent drivers) split their batches below BATCH_BYTES.
DEFAULT_REQUEST_BYTES = 1 * MIB
BATCH_BYTES = 4 * MIB
REQUEST_BYTES: dict[str, int] = {
    "ostinato.joc.v1.InventoryService/PutObject": 2 * ITEM_JSON_BYTES,
    "ostinato.joc.v1.DeploymentService/ImportSigned": 64 * MIB,
    "ostinato.joc.v1.OrderService/AddOrder": 2 * ARGUMENTS_BYTES,
    "ostinato.joc.v1.OrderService/CommandOrders": 16 * MIB,
    "ostinato.controller.v1.ControllerService/DeployItems": 16 * MIB,
    "ostinato.controller.v1.ControllerService/AddOrders": 16 * MIB,
    "ostinato.controller.v1.ControllerService/CommandOrders": 16 * MIB,
    "ostinato.director.v1.DirectorService/AttachItems": 16 * MIB,
    "ostinato.director.v1.DirectorService/AttachOrders": 16 * MIB,
    "ostinato.director.v1.DirectorService/CommandOrders": 16 * MIB,
    "ostinato.director.v1.DirectorService/Batch": 16 * MIB,
    # Each message of the session: signed items and several starts (split below BATCH_BYTES).
    "ostinato.subagent.v1.SubagentService/Session": 16 * MIB,
}
# GetOrder's events: the newest that fit (WatchOrder streams them all, one at a time).
RESPONSE_EVENTS_BYTES = 16 * MIB
# What gRPC itself lets through, either way: the largest request above, and any response (event
# batches stay near 1 MiB, a single event of the largest item near 2.1 MiB).
MESSAGE_BYTES = 64 * MIB


def batches(messages: Sequence[M], max_count: int, max_bytes: int = BATCH_BYTES) -> Iterator[list[M]]:
    """`messages` in order, in lists of at most `max_count` and `max_bytes` (serialized); a message
    larger than `max_bytes` goes alone."""
    batch: list[M] = []
    size = 0
    for message in messages:
        n = message.ByteSize()
        if batch and (len(batch) >= max_count or size + n > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(message)
        size += n
    if batch:
        yield batch


def request_bytes(method: str) -> int:
    """The largest request `method` (package.Service/Method) takes."""
    return REQUEST_BYTES.get(method, DEFAULT_REQUEST_BYTES)


def size_text(n: int) -> str:
    return f"{n:,} bytes"


def too_large(field: str, size: int, limit: int, what: str = "") -> InvalidArgument:
    return InvalidArgument(
        f"{what + ' of ' if what else ''}{size_text(size)}, more than the limit of {size_text(limit)}",
        field=field,
    )


def excerpt(text: str, around: int = 0) -> str:
    """`text` quoted (repr), shortened to about EXCERPT_CHARS around position `around` when longer,
    with its length: for error messages, which must stay small whatever the input."""
    if len(text) <= EXCERPT_CHARS:
        return repr(text)
    half = EXCERPT_CHARS // 2
    start = max(0, min(around - half, len(text) - EXCERPT_CHARS))
    end = start + EXCERPT_CHARS
    return (
        ("..." if start else "")
        + repr(text[start:end])
        + ("..." if end < len(text) else "")
        + f" ({len(text):,} characters)"
    )


def shortened(message: str) -> str:
    """An error message cut to MESSAGE_CHARS: the last guard before it goes on the wire."""
    if len(message) <= MESSAGE_CHARS:
        return message
    return message[: MESSAGE_CHARS - 40] + f"... ({len(message):,} characters)"


# ---- names


def check_name(name: str, field: str, what: str = "name") -> None:
    if len(name) > NAME_CHARS:
        raise InvalidArgument(
            f"{what} of {len(name):,} characters, more than the limit of {NAME_CHARS}: {excerpt(name)}",
            field=field,
        )


def check_path_length(path: str, field: str) -> None:
    if len(path) > PATH_CHARS:
        raise InvalidArgument(
            f"path of {len(path):,} characters, more than the limit of {PATH_CHARS}: {excerpt(path)}",
            field=field,
        )


# google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
_TIMESTAMP_SECONDS = range(-62_135_596_800, 253_402_300_800)


def check_timestamp(timestamp: Any, field: str) -> None:
    """A google.protobuf.Timestamp within its documented range (others cannot become a datetime)."""
    if timestamp.seconds not in _TIMESTAMP_SECONDS or not 0 <= timestamp.nanos < 1_000_000_000:
        raise InvalidArgument("not a time between the years 1 and 9999", field=field)


# ---- enums


def check_enums(message: Message, field: str = "") -> None:
    """Every enum field of `message` (nested ones too) holds a value its enum defines: proto3 keeps
    unknown numbers, which code that names them would trip over."""
    for fd, value in message.ListFields():
        where = f"{field}.{fd.name}" if field else fd.name
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            for key, item in value.items():
                _check_enum_or_message(value_fd, item, f"{where}.{key}")
        elif fd.is_repeated:
            for i, item in enumerate(value):
                _check_enum_or_message(fd, item, f"{where}[{i}]")
        else:
            _check_enum_or_message(fd, value, where)


def _check_enum_or_message(fd: Any, value: Any, where: str) -> None:
    if fd.enum_type is not None:
        if fd.enum_type.values_by_number.get(value) is None:
            raise InvalidArgument(f"unknown value {value} of {fd.enum_type.name}", field=where)
    elif fd.message_type is not None and _has_enums(fd.message_type):
        check_enums(value, where)


@functools.cache
def _has_enums(descriptor: Any) -> bool:
    """Whether messages of this type can hold an enum value anywhere (skipping others is cheap)."""
    seen: set[str] = set()
    todo = [descriptor]
    while todo:
        d = todo.pop()
        if d.full_name in seen:
            continue
        seen.add(d.full_name)
        for fd in d.fields:
            if fd.enum_type is not None:
                return True
            if fd.message_type is not None:
                todo.append(fd.message_type)
    return False


# ---- JSON of inventory objects


def load_item_json(text: str, field: str = "json", limit: int = ITEM_JSON_BYTES) -> Any:
    """`text` parsed as JSON, within ITEM_JSON_BYTES and JSON_NESTING."""
    size = len(text.encode())
    if size > limit:
        raise too_large(field, size, limit, "JSON")
    try:
        value = json.loads(text, object_pairs_hook=_without_duplicates)
    except RecursionError:
        raise InvalidArgument(f"JSON nested more than {JSON_NESTING} deep", field=field) from None
    except ValueError as e:
        raise InvalidArgument(f"not JSON: {e}", field=field) from None
    check_json_nesting(value, field)
    return value


def _without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {excerpt(key)}")
        result[key] = value
    return result


def check_json_nesting(value: Any, field: str = "json") -> None:
    """Objects and arrays at most JSON_NESTING deep; the error names where the limit is passed."""
    parents: list[tuple[int, str]] = []  # per object or array seen: (its parent's index, its key)
    stack: list[tuple[Any, int, int, str]] = [(value, 1, -1, "")]
    while stack:
        node, depth, parent, key = stack.pop()
        if isinstance(node, dict):
            children: Iterable[tuple[str, Any]] = ((f".{k}", v) for k, v in node.items())
        elif isinstance(node, list):
            children = ((f"[{i}]", v) for i, v in enumerate(node))
        else:
            continue
        parents.append((parent, key))
        if depth > JSON_NESTING:
            steps = []
            at = len(parents) - 1
            while at >= 0:
                at, step = parents[at]
                steps.append(step)
            where = "".join(reversed(steps)).lstrip(".")
            raise InvalidArgument(
                f"JSON nested more than {JSON_NESTING} deep (at {excerpt(where, len(where))})", field=field
            )
        me = len(parents) - 1
        stack.extend((child, depth + 1, me, k) for k, child in children)


def check_instruction_nesting(workflow_json: Mapping[str, Any]) -> None:
    """Blocks of a workflow's JSON (as the user wrote it) at most INSTRUCTION_NESTING deep; the
    error names the first instruction beyond."""

    def visit(instructions: Any, field: str, depth: int) -> None:
        if not isinstance(instructions, list):
            return
        for i, instruction in enumerate(instructions):
            where = f"{field}[{i}]"
            if not isinstance(instruction, dict):
                continue
            for sub_field, block in _blocks(instruction):
                if depth >= INSTRUCTION_NESTING:
                    raise InvalidArgument(
                        f"blocks nested more than {INSTRUCTION_NESTING} deep", field=f"{where}.{sub_field}"
                    )
                visit(block, f"{where}.{sub_field}", depth + 1)

    visit(workflow_json.get("instructions"), "instructions", 0)


def _blocks(instruction: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    """(JSON field, instruction list) of each block in an instruction's JSON, whatever its kind:
    looked for by shape, so that the bound holds before the JSON is known to be a valid workflow
    (JSON names and protobuf's field names both)."""
    for kind, body in instruction.items():
        if not isinstance(body, dict):
            continue
        for name, value in body.items():
            if isinstance(value, dict) and isinstance(value.get("instructions"), list):
                yield f"{kind}.{name}.instructions", value["instructions"]
            elif isinstance(value, list):  # fork branches
                for n, branch in enumerate(value):
                    if isinstance(branch, dict):
                        for block_name, block in branch.items():
                            if isinstance(block, dict) and isinstance(block.get("instructions"), list):
                                yield f"{kind}.{name}[{n}].{block_name}.instructions", block["instructions"]


def check_signed_item(item: Any, field: str) -> None:
    """A SignedItem's path, version id, JSON and signature within the limits (its JSON's nesting
    is checked where it is parsed)."""
    check_path_length(item.path, f"{field}.path")
    check_name(item.version_id, f"{field}.version_id", "a version id")
    size = len(item.json.encode())
    if size > SIGNED_ITEM_BYTES:
        raise too_large(f"{field}.json", size, SIGNED_ITEM_BYTES, "JSON")
    if (size := item.signature.ByteSize()) > SIGNATURE_BYTES:
        raise too_large(f"{field}.signature", size, SIGNATURE_BYTES, "a signature")


# ---- values: order arguments, variables


_NUMBER_TEXT = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def check_arguments(arguments: Mapping[str, values_pb2.Value], field: str) -> None:
    """Order arguments (or variables set by a command): names, each value and all of them within
    the limits, numbers as decimal text. `field` names the map as the user wrote it."""
    total = 0
    for name, value in arguments.items():
        where = f"{field}.{name}" if len(name) <= NAME_CHARS else field
        if not name:
            raise InvalidArgument("a name must not be empty", field=field)
        check_name(name, where, "a name")
        total += len(name) + check_value(value, where)
    if total > ARGUMENTS_BYTES:
        raise too_large(field, total, ARGUMENTS_BYTES, "arguments")


def check_value(value: values_pb2.Value, field: str) -> int:
    """A value within VALUE_BYTES and VALUE_NESTING, its numbers decimal text; returns its size."""
    size = _value_size(value, field, 1)
    if size > VALUE_BYTES:
        raise too_large(field, size, VALUE_BYTES, "a value")
    return size


def _value_size(value: values_pb2.Value, field: str, depth: int) -> int:
    if depth > VALUE_NESTING:
        raise InvalidArgument(f"lists and objects nested more than {VALUE_NESTING} deep", field=field)
    kind = value.WhichOneof("kind")
    if kind == "string":
        return len(value.string.encode())
    if kind == "number":
        if len(value.number) > 100 or not _NUMBER_TEXT.fullmatch(value.number):
            raise InvalidArgument(f"not a number: {excerpt(value.number)}", field=field)
        return len(value.number)
    if kind == "list":
        return 2 + sum(
            _value_size(v, f"{field}[{i}]", depth + 1) + 1 for i, v in enumerate(value.list.values)
        )
    if kind == "object":
        size = 2
        for k, v in value.object.fields.items():
            size += len(k.encode()) + 4 + _value_size(v, f"{field}.{k}", depth + 1)
        return size
    return 5  # a boolean, or nothing


def check_order_command(command: commands_pb2.OrderCommand, field: str) -> None:
    check_name(command.order_id, f"{field}.order_id", "an order id")
    if command.WhichOneof("kind") == "resume":
        resume = command.resume
        check_arguments(resume.variables, f"{field}.resume.variables")
        if len(resume.position.branch_path) > INSTRUCTION_NESTING:
            raise InvalidArgument(
                f"{len(resume.position.branch_path):,} branch steps; blocks nest at most"
                f" {INSTRUCTION_NESTING} deep",
                field=f"{field}.resume.position",
            )
        for i, step in enumerate(resume.position.branch_path):
            check_name(step.branch, f"{field}.resume.position.branch_path[{i}].branch", "a branch")


def check_returned_values(values: Iterable[tuple[str, str]]) -> str:
    """What is wrong with the values a job returned, or "": each within VALUE_BYTES, names within
    NAME_CHARS, all within ARGUMENTS_BYTES."""
    total = 0
    for name, value in values:
        if len(name) > NAME_CHARS:
            return f"returned value name of {len(name):,} characters, more than the limit of {NAME_CHARS}"
        size = len(value.encode())
        if size > VALUE_BYTES:
            return (
                f"returned value {name!r}: {size_text(size)}, more than the limit of {size_text(VALUE_BYTES)}"
            )
        total += len(name) + size
    if total > ARGUMENTS_BYTES:
        return f"returned values: {size_text(total)}, more than the limit of {size_text(ARGUMENTS_BYTES)}"
    return ""
