"""The largest item, arguments and return values the limits allow go through JOC, controller,
director and subagent as real processes, also to a JOC that was down meanwhile; what is beyond
them is refused at the edge, naming the field, the size and the limit, and nothing is stored."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from gen.ostinato.common.v1 import items_pb2, order_pb2, values_pb2
from gen.ostinato.controller.v1 import controller_pb2, controller_pb2_grpc
from gen.ostinato.joc.v1 import joc_pb2
from joc_svc.inventory import deployable
from ostinato import limits, signing
from ostinato.topology import Topology
from ostinato.workflow.model import canonical_json, parse_workflow
from tests.integration.support import Joc, eventually, shell_job

pytestmark = pytest.mark.integration

WF = items_pb2.ITEM_TYPE_WORKFLOW
NAMES = [f"a{i}" for i in range(4)]
# Four values whose names and texts add up to exactly the limit on an order's arguments (and on
# the values a job returns), each within the limit on one value.
VALUE_CHARS = limits.ARGUMENTS_BYTES // len(NAMES) - 2
GATE_SCRIPT = (
    'while [ ! -e "$GATE" ]; do sleep 0.05; done\n'
    '[ "${#A0}" -eq "$EXPECTED" ] || { echo "A0 has ${#A0} characters" >&2; exit 3; }\n'
    "for i in 0 1 2 3; do printf 'r%s=' $i; head -c \"$EXPECTED\" /dev/zero | tr '\\0' y; echo; done"
    ' > "$JS7_RETURN_VALUES"'
)


def largest_workflow(gate: Path) -> dict:
    """A workflow whose canonical JSON is just within the limit: a job that runs, and jobs that
    do not, with long scripts."""
    job = shell_job(GATE_SCRIPT)
    job["executable"]["shellScript"]["env"] = {
        "A0": "$a0",
        "GATE": f"'{gate}'",
        "EXPECTED": f"'{VALUE_CHARS}'",
    }
    workflow: dict = {"instructions": [{"execute": {"jobName": "run"}}], "jobs": {"run": job}}
    base = len(canonical_json(parse_workflow(json.dumps(workflow), "/limits/largest")).encode())
    room = limits.ITEM_JSON_BYTES - base - 200
    filler = 16 * 1024
    for i in range(room // (filler + 100)):
        workflow["jobs"][f"unused{i:03d}"] = shell_job("#" * filler)
    size = len(canonical_json(parse_workflow(json.dumps(workflow), "/limits/largest")).encode())
    assert limits.ITEM_JSON_BYTES - 32 * 1024 < size <= limits.ITEM_JSON_BYTES
    return workflow


def largest_arguments() -> dict[str, values_pb2.Value]:
    arguments = {name: values_pb2.Value(string="x" * VALUE_CHARS) for name in NAMES}
    limits.check_arguments(arguments, "arguments")  # just within
    return arguments


async def test_the_largest_item_arguments_and_return_values_pass_a_restarting_joc(
    topology: Topology, joc: Joc, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    workflow = largest_workflow(gate)
    await joc.deploy_workflow("/limits/largest", workflow)
    added = await joc.orders.AddOrder(
        joc_pb2.AddOrderRequest(
            workflow_path="/limits/largest", order_id="big-1", arguments=largest_arguments()
        )
    )
    assert added.workflow_version_id

    # JOC goes away; meanwhile the job ends with the largest return values, and a new version of
    # the largest workflow is deployed to the controller directly.
    topology.services["joc"].stop()
    gate.touch()
    key, cert = topology.root_key()  # type: ignore[misc]
    signer = signing.Signer(key.read_text(), cert.read_text())
    stored = canonical_json(parse_workflow(json.dumps(workflow), "/limits/largest"))
    item = signer.sign_item(deployable(WF, "/limits/largest", stored, "v2-direct"))
    assert len(item.json.encode()) > limits.ITEM_JSON_BYTES - 32 * 1024
    async with topology.channel(topology.services["controller"].address, as_name="joc") as channel:
        controller = controller_pb2_grpc.ControllerServiceStub(channel)
        await controller.DeployItems(controller_pb2.DeployItemsRequest(items=[item]), timeout=30)
        snapshot = controller_pb2.GetSnapshotRequest()

        async def ended_at_controller() -> bool:
            orders = (await controller.GetSnapshot(snapshot, timeout=10)).orders
            return all(o.state == order_pb2.ORDER_STATE_FINISHED for o in orders if o.id == "big-1")

        await eventually(ended_at_controller, timeout=60, what="the order's end at the controller")

    topology.start_service("joc")
    order = await joc.wait_until_ended("big-1", timeout=60)
    assert order.state == order_pb2.ORDER_STATE_FINISHED, order
    assert {k: len(v.string) for k, v in order.variables.items() if k.startswith("r")} == {
        f"r{i}": VALUE_CHARS for i in range(4)
    }
    shown = await joc.orders.GetOrder(joc_pb2.GetOrderRequest(order_id="big-1"))
    assert shown.summary.order.state == order_pb2.ORDER_STATE_FINISHED and shown.events_omitted == 0
    assert {k: len(v.string) for k, v in shown.summary.order.arguments.items()} == dict.fromkeys(
        NAMES, VALUE_CHARS
    )
    assert len(shown.summary.order.variables["r3"].string) == VALUE_CHARS

    # JOC took the events of the direct deployment too, and goes on: an order of that version.
    again = await joc.orders.AddOrder(
        joc_pb2.AddOrderRequest(
            workflow_path="/limits/largest", order_id="big-2", arguments=largest_arguments()
        )
    )
    assert again.workflow_version_id == "v2-direct"
    assert (await joc.wait_until_ended("big-2", timeout=60)).state == order_pb2.ORDER_STATE_FINISHED


async def test_beyond_the_limits_is_refused_naming_field_size_and_limit(topology: Topology, joc: Joc) -> None:
    workflow = {
        "instructions": [{"execute": {"jobName": "j"}}],
        "jobs": {"j": shell_job("#" * limits.ITEM_JSON_BYTES)},
    }
    text = json.dumps(workflow)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await joc.inventory.PutObject(joc_pb2.PutObjectRequest(path="/limits/huge", type=WF, json=text))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        f"json: JSON of {len(text):,} bytes, more than the limit of {limits.ITEM_JSON_BYTES:,} bytes"
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await joc.inventory.GetObject(joc_pb2.GetObjectRequest(path="/limits/huge", type=WF))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    # Beyond what the request of a method may carry at all.
    huge = "x" * (2 * limits.ITEM_JSON_BYTES)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await joc.inventory.PutObject(joc_pb2.PutObjectRequest(path="/limits/huge", type=WF, json=huge))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request: the PutObject request of 2,097,1" in (info.value.details() or "")

    await joc.deploy_workflow(
        "/limits/small", {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job("true")}}
    )
    too_big = {"a": values_pb2.Value(string="x" * (limits.VALUE_BYTES + 1))}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await joc.orders.AddOrder(
            joc_pb2.AddOrderRequest(workflow_path="/limits/small", order_id="refused-1", arguments=too_big)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "arguments.a: a value of 65,537 bytes, more than the limit of 65,536 bytes"
    listed = await joc.orders.ListOrders(joc_pb2.ListOrdersRequest())
    assert "refused-1" not in {s.order.id for s in listed.orders}

    # The controller refuses the same when asked directly, and a 100,000-parentheses expression
    # in a workflow gets an answer small enough to arrive.
    async with topology.channel(topology.services["controller"].address, as_name="joc") as channel:
        controller = controller_pb2_grpc.ControllerServiceStub(channel)
        new = controller_pb2.NewOrder(id="refused-2", workflow_path="/limits/small", arguments=too_big)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await controller.AddOrders(controller_pb2.AddOrdersRequest(orders=[new]), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (info.value.details() or "").startswith("orders[0].arguments.a: a value of 65,537 bytes")
    deep = "(" * 100_000 + "1" + ")" * 100_000
    env_workflow = {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job("true", X=deep)}}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await joc.inventory.PutObject(
            joc_pb2.PutObjectRequest(path="/limits/deep", type=WF, json=json.dumps(env_workflow))
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert details.startswith("jobs.j.executable.shellScript.env.X: expression of 200,001 characters")
    assert len(details) < 300


async def test_a_snapshot_larger_than_a_part_reaches_a_new_joc_whole(
    topology: Topology, joc: Joc, tmp_path: Path
) -> None:
    from tests.integration.test_joc_controller_cluster import joc_process, orders_of, released_past

    await joc.deploy_workflow(
        "/limits/later", {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job("true")}}
    )
    later = datetime.now(UTC) + timedelta(days=1)
    ids = [f"held-{i:02d}" for i in range(20)]  # 20 x 256 KiB of arguments: more than one part
    for order_id in ids:
        request = joc_pb2.AddOrderRequest(
            workflow_path="/limits/later", order_id=order_id, arguments=largest_arguments()
        )
        request.scheduled_for.FromDatetime(later)
        await joc.orders.AddOrder(request)

    async def last_event_id() -> int:
        events = (await joc.orders.GetOrder(joc_pb2.GetOrderRequest(order_id=ids[-1]))).events
        return max((e.id for e in events), default=0)

    await eventually(last_event_id, what="JOC has the last order's events")
    await released_past(topology, await last_event_id())
    async with topology.channel(topology.services["controller"].address, as_name="joc") as channel:
        controller = controller_pb2_grpc.ControllerServiceStub(channel)
        parts = [
            p async for p in controller.StreamSnapshot(controller_pb2.StreamSnapshotRequest(), timeout=30)
        ]
    assert len(parts) >= 2 and len({p.event_id for p in parts}) == 1
    assert sorted(o.id for p in parts for o in p.orders) == ids
    assert all(p.ByteSize() <= limits.BATCH_BYTES + limits.ARGUMENTS_BYTES + 4096 for p in parts)

    topology.services["joc"].stop()
    controller = f"controller={topology.addresses['controller']}"
    as_joc = topology.tls_args("joc")
    async with joc_process(tmp_path / "new-joc", controller, topology.security(), *as_joc) as (_, new):

        async def resynced() -> bool:
            return set(await orders_of(new)) == set(ids)

        await eventually(resynced, timeout=60, what="the new JOC lists the controller's held orders")
        shown = await new.orders.GetOrder(joc_pb2.GetOrderRequest(order_id=ids[0]))
        assert len(shown.summary.order.arguments["a0"].string) == VALUE_CHARS
