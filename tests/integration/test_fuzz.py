"""Hypothesis posts random and mutated input to every public RPC of a live JOC and controller:
workflow JSON, expressions, order arguments and raw protobuf bytes. Whatever arrives, no service
crashes, none answers INTERNAL or UNKNOWN (an error that was not foreseen), none logs a traceback,
and a normal order still finishes afterwards.

The inputs tried per test are about OSTINATO_FUZZ_EXAMPLES (default 100, which keeps CI short);
`-s` prints how many went to each target and what status codes came back. Derandomized, so CI
tries the same inputs each time; OSTINATO_FUZZ_SEED=random explores.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gen.ostinato.common.v1 import cluster_pb2, items_pb2, order_pb2, values_pb2
from gen.ostinato.controller.v1 import controller_pb2
from gen.ostinato.joc.v1 import joc_pb2
from ostinato import rpc, tls
from ostinato.topology import Topology, TopologyConfig
from ostinato.workflow.orders import END_STATES
from tests.integration.support import running, wait_until

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("OSTINATO_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("OSTINATO_FUZZ_SEED") != "random",
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
# Answers that mean the service did not foresee the input.
UNFORESEEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
WORKFLOW_PATH = "/fuzz/target"
WF = items_pb2.ITEM_TYPE_WORKFLOW
JOB = {"agent": "agent-1", "executable": {"shellScript": {"script": 'echo "$A"'}}}
TARGET = {
    "orderPreparation": {
        "allowUndeclared": True,
        "parameters": {"n": {"type": "PARAMETER_TYPE_NUMBER", "default": {"number": "1"}}},
    },
    "instructions": [
        {"ifElse": {"condition": "$n > 0", "then": {"instructions": [{"execute": {"jobName": "j"}}]}}},
    ],
    "jobs": {"j": {**JOB, "executable": {"shellScript": {"script": 'echo "$A"', "env": {"A": "'a'"}}}}},
}
tried: collections.Counter[str] = collections.Counter()
answers: collections.Counter[str] = collections.Counter()


class Target:
    """One live service's public RPCs, called with raw bytes."""

    def __init__(self, name: str, address: str, services: list[Any], security: tls.Security) -> None:
        self.name = name
        self.channel = rpc.sync_channel(address, security)
        self.methods: dict[str, Any] = {}  # full path -> method descriptor
        for service in services:
            for method in service.methods:
                self.methods[f"/{service.full_name}/{method.name}"] = method

    def call(self, path: str, data: bytes) -> str:
        """Calls the method with `data` as its request and fails on an unforeseen answer;
        returns the status code's name."""
        method = self.methods[path]
        tried[f"{self.name} {path.rsplit('/', 1)[1]}"] += 1
        try:
            if method.server_streaming:
                # Some streams follow for ever: a few responses tell enough.
                responses = self.channel.unary_stream(path)(data, timeout=2)
                for n, _ in enumerate(responses):
                    if n >= 3:
                        responses.cancel()
                        break
            else:
                self.channel.unary_unary(path)(data, timeout=20)
            answers["OK"] += 1
            return "OK"
        except grpc.RpcError as e:
            code = e.code()  # type: ignore[attr-defined]
            answers[code.name] += 1
            if code in UNFORESEEN:
                pytest.fail(f"{path} answered {code.name}: {e.details()} to {data[:300]!r}")  # type: ignore[attr-defined]
            return str(code.name)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Topology, Target, Target]]:
    with running(tmp_path_factory.mktemp("fuzz"), TopologyConfig.ephemeral(subagents=1)) as topology:
        yield from _targets(topology)


def _targets(topology: Topology) -> Iterator[tuple[Topology, Target, Target]]:
    joc = Target(
        "joc",
        topology.joc_address,
        [
            joc_pb2.DESCRIPTOR.services_by_name[name]
            for name in ("InventoryService", "DeploymentService", "OrderService", "ClusterService")
            + ("AuditService", "AccountService")
        ],
        topology.security("cli"),
    )
    controller = Target(
        "controller",
        topology.services["controller"].address,
        [
            controller_pb2.DESCRIPTOR.services_by_name["ControllerService"],
            cluster_pb2.DESCRIPTOR.services_by_name["ClusterService"],
        ],
        topology.security("joc"),  # what a controller accepts
    )
    put = joc_pb2.PutObjectRequest(path=WORKFLOW_PATH, type=WF, json=json.dumps(TARGET))
    joc.channel.unary_unary("/ostinato.joc.v1.InventoryService/PutObject")(
        put.SerializeToString(), timeout=30
    )
    deploy = joc_pb2.DeployRequest(paths=[WORKFLOW_PATH])
    joc.channel.unary_unary("/ostinato.joc.v1.DeploymentService/Deploy")(
        deploy.SerializeToString(), timeout=30
    )
    try:
        yield topology, joc, controller
    finally:
        print(f"\nfuzz: {sum(tried.values())} inputs; answers {dict(answers)}")
        for target, count in sorted(tried.items()):
            print(f"  {count:6d}  {target}")
        joc.close()
        controller.close()


# ---- what is posted


def valid_requests() -> dict[str, bytes]:
    """A well-formed request of each method whose mutations reach deeper than random bytes."""
    arguments = {"n": values_pb2.Value(number="2"), "s": values_pb2.Value(string="x")}
    command = joc_pb2.CommandOrdersRequest()
    command.commands.add(order_id="fuzz-0").resume.variables["v"].string = "1"
    return {
        "/ostinato.joc.v1.InventoryService/PutObject": joc_pb2.PutObjectRequest(
            path="/fuzz/w", type=WF, json=json.dumps(TARGET)
        ).SerializeToString(),
        "/ostinato.joc.v1.OrderService/AddOrder": joc_pb2.AddOrderRequest(
            workflow_path=WORKFLOW_PATH, arguments=arguments
        ).SerializeToString(),
        "/ostinato.joc.v1.OrderService/CommandOrders": command.SerializeToString(),
        "/ostinato.controller.v1.ControllerService/AddOrders": controller_pb2.AddOrdersRequest(
            orders=[controller_pb2.NewOrder(id="fuzz-c", workflow_path=WORKFLOW_PATH, arguments=arguments)]
        ).SerializeToString(),
        "/ostinato.controller.v1.ControllerService/DeployItems": controller_pb2.DeployItemsRequest(
            items=[items_pb2.SignedItem(type=WF, path="/fuzz/w", version_id="v1", json=json.dumps(TARGET))]
        ).SerializeToString(),
    }


INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
strings = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=20),
    st.sampled_from(["", "/", "/fuzz/target", "/fuzz", "..", "a|b", "agent-1", "controller", "fuzz-0", "$n"]),
    st.integers(0, 5000).map(lambda n: "x" * n),
)


def scalar(fd: Any) -> st.SearchStrategy[Any]:
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 12)  # known values and unknown ones
    if fd.type in INT_RANGES:
        low, high = INT_RANGES[fd.type]
        return st.one_of(st.integers(-3, 100), st.integers(low, high)).filter(lambda n: low <= n <= high)
    if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=32 if fd.type == FieldDescriptor.TYPE_FLOAT else 64)
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=50)
    return strings


def fill(draw: st.DrawFn, message: Any, depth: int) -> None:
    """Sets a random choice of `message`'s fields to random values, nested `depth` deep."""
    for fd in message.DESCRIPTOR.fields:
        if not draw(st.booleans()):
            continue
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            key_fd, value_fd = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
            target = getattr(message, fd.name)
            for key in draw(st.lists(scalar(key_fd), max_size=3)):
                if value_fd.message_type is None:
                    target[key] = draw(scalar(value_fd))
                elif depth > 0:
                    fill(draw, target[key], depth - 1)
        elif fd.message_type is not None:
            if depth <= 0:
                continue
            if fd.is_repeated:
                for _ in range(draw(st.integers(0, 3))):
                    fill(draw, getattr(message, fd.name).add(), depth - 1)
            else:
                getattr(message, fd.name).SetInParent()
                fill(draw, getattr(message, fd.name), depth - 1)
        elif fd.is_repeated:
            getattr(message, fd.name).extend(draw(st.lists(scalar(fd), max_size=3)))
        else:
            setattr(message, fd.name, draw(scalar(fd)))


def random_message(descriptor: Any) -> st.SearchStrategy[bytes]:
    """A message of the type with random fields set, serialized."""
    message_class = message_factory.GetMessageClass(descriptor)

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        message = message_class()
        fill(draw, message, 4)
        return bytes(message.SerializeToString())

    return build()


def mutated(data: bytes) -> st.SearchStrategy[bytes]:
    """`data` with bytes flipped, inserted, removed or repeated."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        result = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, max(len(result) - 1, 0)))
            kind = draw(st.sampled_from(["flip", "insert", "delete", "repeat"]))
            if kind == "flip" and result:
                result[at] ^= 1 << draw(st.integers(0, 7))
            elif kind == "insert":
                result[at:at] = draw(st.binary(min_size=1, max_size=8))
            elif kind == "delete":
                del result[at : at + draw(st.integers(1, 8))]
            else:
                result[at:at] = result[at : at + draw(st.integers(1, 64))] * draw(st.integers(1, 50))
        return bytes(result)

    return mutate()


WORKFLOW_KEYS = [
    "instructions", "jobs", "execute", "jobName", "job", "agent", "executable", "shellScript",
    "commandLine", "argv", "script", "env", "arguments", "ifElse", "condition", "then", "else",
    "fork", "branches", "id", "block", "forkList", "children", "tryCatch", "try", "catch", "retry",
    "maxTries", "retryDelays", "lock", "lockPath", "count", "cycle", "limit", "breakCycle",
    "sleep", "duration", "prompt", "fail", "finish", "addOrder", "workflowPath", "label",
    "orderPreparation", "parameters", "type", "default", "finalExpression", "processLimit",
    "timeout", "sigkillDelay", "successReturnCodes", "defaultArguments", "string", "number",
    "list", "values", "object", "fields", "path", "versionId", "jobResourcePaths", "uncatchable",
]  # fmt: skip
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["agent-1", "j", "$n > 0", "PARAMETER_TYPE_NUMBER", "1s", "-5s", "/fuzz/target"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(WORKFLOW_KEYS), inner, max_size=5)
    ),
    max_leaves=40,
)

EXPRESSION_PARTS = st.sampled_from(
    ["$n", "${n}", "$returnCode", "'a'", '"x $n y"', "1", "0.1", "-5", "1e400", "true", "false", "[", "]",
     "(", ")", ",", "==", "!=", "<", "<=", "&&", "||", "!", "+", "-", "*", "/", "++", " in ", ".",
     "toNumber(", "toString(", "length(", "variable('n', default=1)", "variable(", "label=", "job=",
     "\\\\", "'", '"', "$", "${", "}", " ", "9" * 40, "99999999999999999999999999999999999 * 1e6"]
)  # fmt: skip
expressions = st.one_of(
    st.lists(EXPRESSION_PARTS, max_size=25).map("".join),
    st.text(alphabet="$(){}[]'\"!=<>&|+-*/., 0123456789abnxyz\\", max_size=60),
)


def values(depth: int = 20) -> st.SearchStrategy[values_pb2.Value]:
    leaves = st.one_of(
        st.text(max_size=30).map(lambda s: values_pb2.Value(string=s)),
        st.one_of(st.text(alphabet="0123456789+-.eE", max_size=30), st.text(max_size=5)).map(
            lambda s: values_pb2.Value(number=s)
        ),
        st.booleans().map(lambda b: values_pb2.Value(boolean=b)),
        st.just(values_pb2.Value()),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3).map(
                lambda vs: values_pb2.Value(list=values_pb2.ListValue(values=vs))
            ),
            st.dictionaries(st.text(max_size=8), inner, max_size=3).map(
                lambda fs: values_pb2.Value(object=values_pb2.ObjectValue(fields=fs))
            ),
        ),
        max_leaves=depth,
    )


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field in protobuf's wire format."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def deep_argument(depth: int) -> bytes:
    """An argument map entry "n" whose value is lists nested `depth` deep, in wire format: the
    Python runtime cannot even build a message that deep."""
    value = values_pb2.Value(string="deep").SerializeToString()
    for _ in range(depth):
        value = _field(4, _field(1, value))  # Value.list -> ListValue.values
    return _field(1, b"n") + _field(2, value)


arguments = st.dictionaries(
    st.one_of(st.sampled_from(["n", "s", "A", ""]), st.text(max_size=10)), values(), max_size=4
)


# ---- the tests


@FUZZ
@given(data=st.data())
def test_raw_and_mutated_protobuf_to_every_public_rpc(
    live: tuple[Topology, Target, Target], data: Any
) -> None:
    _, joc, controller = live
    target = data.draw(st.sampled_from([joc, controller]))
    path = data.draw(st.sampled_from(sorted(target.methods)))
    valid = valid_requests().get(path)
    strategies = [st.binary(max_size=200)] + ([mutated(valid)] if valid else [])
    target.call(path, data.draw(st.one_of(*strategies)))


@FUZZ
@given(data=st.data())
def test_random_messages_to_every_public_rpc(live: tuple[Topology, Target, Target], data: Any) -> None:
    """Well-formed requests with random values: out-of-range enums, numbers, times, odd names."""
    _, joc, controller = live
    target = data.draw(st.sampled_from([joc, controller]))
    path = data.draw(st.sampled_from(sorted(target.methods)))
    target.call(path, data.draw(random_message(target.methods[path].input_type)))


@FUZZ
@given(workflow=json_values, shape=st.sampled_from(["as is", "in instructions", "in a job"]))
def test_random_workflow_json(live: tuple[Topology, Target, Target], workflow: Any, shape: str) -> None:
    _, joc, controller = live
    if shape == "in instructions":
        workflow = {**TARGET, "instructions": [workflow]}
    elif shape == "in a job":
        workflow = {**TARGET, "jobs": {"j": workflow}}
    text = json.dumps(workflow)
    request = joc_pb2.PutObjectRequest(path="/fuzz/random", type=WF, json=text)
    joc.call("/ostinato.joc.v1.InventoryService/PutObject", request.SerializeToString())
    item = items_pb2.SignedItem(type=WF, path="/fuzz/random", version_id="v", json=text)
    deploy = controller_pb2.DeployItemsRequest(items=[item])
    controller.call("/ostinato.controller.v1.ControllerService/DeployItems", deploy.SerializeToString())


@FUZZ
@given(text=st.text(max_size=300), cut=st.integers(0, 2000))
def test_mutated_workflow_json_text(live: tuple[Topology, Target, Target], text: str, cut: int) -> None:
    _, joc, _ = live
    valid = json.dumps(TARGET)
    broken = valid[:cut] + text + valid[cut:]
    request = joc_pb2.PutObjectRequest(path="/fuzz/mutated", type=WF, json=broken)
    joc.call("/ostinato.joc.v1.InventoryService/PutObject", request.SerializeToString())


@FUZZ
@given(expression=expressions, where=st.sampled_from(["condition", "env", "argument"]))
def test_random_expressions(live: tuple[Topology, Target, Target], expression: str, where: str) -> None:
    """Expressions JOC accepts are deployed and run: evaluating them must not break anything."""
    _, joc, _ = live
    workflow = json.loads(json.dumps(TARGET))
    if where == "condition":
        workflow["instructions"][0]["ifElse"]["condition"] = expression
    elif where == "env":
        workflow["jobs"]["j"]["executable"]["shellScript"]["env"]["A"] = expression
    else:
        workflow["instructions"][0]["ifElse"]["then"]["instructions"][0]["execute"]["arguments"] = {
            "x": expression
        }
    request = joc_pb2.PutObjectRequest(path="/fuzz/expression", type=WF, json=json.dumps(workflow))
    if joc.call("/ostinato.joc.v1.InventoryService/PutObject", request.SerializeToString()) != "OK":
        return
    deploy = joc_pb2.DeployRequest(paths=["/fuzz/expression"])
    joc.call("/ostinato.joc.v1.DeploymentService/Deploy", deploy.SerializeToString())
    add = joc_pb2.AddOrderRequest(
        workflow_path="/fuzz/expression", arguments={"n": values_pb2.Value(number="3")}
    )
    joc.call("/ostinato.joc.v1.OrderService/AddOrder", add.SerializeToString())


@FUZZ
@given(
    given_arguments=arguments,
    depth=st.one_of(st.none(), st.integers(10, 120)),
    via=st.sampled_from(["joc", "controller"]),
)
def test_random_order_arguments(
    live: tuple[Topology, Target, Target], given_arguments: Any, depth: int | None, via: str
) -> None:
    _, joc, controller = live
    deep = b"" if depth is None else deep_argument(depth)
    if via == "joc":
        request = joc_pb2.AddOrderRequest(workflow_path=WORKFLOW_PATH, arguments=given_arguments)
        data = request.SerializeToString() + (_field(2, deep) if deep else b"")
        joc.call("/ostinato.joc.v1.OrderService/AddOrder", data)
    else:
        tried_id = f"fuzz-args-{sum(tried.values())}"
        new = controller_pb2.NewOrder(id=tried_id, workflow_path=WORKFLOW_PATH, arguments=given_arguments)
        order = new.SerializeToString() + (_field(4, deep) if deep else b"")
        controller.call("/ostinato.controller.v1.ControllerService/AddOrders", _field(1, order))


def test_afterwards_nothing_crashed_no_traceback_and_an_order_still_finishes(
    live: tuple[Topology, Target, Target],
) -> None:
    topology, joc, _ = live
    order_id = "fuzz-final"
    add = joc_pb2.AddOrderRequest(workflow_path=WORKFLOW_PATH, order_id=order_id)
    joc.channel.unary_unary("/ostinato.joc.v1.OrderService/AddOrder")(add.SerializeToString(), timeout=60)
    get: Callable[..., bytes] = joc.channel.unary_unary("/ostinato.joc.v1.OrderService/GetOrder")
    request = joc_pb2.GetOrderRequest(order_id=order_id).SerializeToString()

    def state() -> int:
        return int(joc_pb2.GetOrderResponse.FromString(get(request, timeout=10)).summary.order.state)

    wait_until(lambda: state() in END_STATES, timeout=60, what="the final order's end")
    assert state() == order_pb2.ORDER_STATE_FINISHED
    for name, launched in topology.services.items():
        assert launched.alive(), f"{name} died: {launched.log_text()[-3000:]}"
        log = Path(launched.log_path).read_text(errors="replace")
        assert "Traceback" not in log, f"{name} logged a traceback:\n{_around(log, 'Traceback')}"


def _around(text: str, needle: str) -> str:
    at = text.index(needle)
    return text[max(0, at - 500) : at + 2500]
