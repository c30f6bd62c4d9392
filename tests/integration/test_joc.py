"""A real JOC process over real gRPC and SQLite, and the `ostinato` CLI as a subprocess.

Two controllers stand in for the real one: an address where nothing listens, and a small
test-side controller (real gRPC server) that journals scripted order events, so JOC's ingestion,
release, order watching and the CLI's --wait are exercised without the other services.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from gen.ostinato.common.v1 import commands_pb2, events_pb2, items_pb2, order_pb2, values_pb2, workflow_pb2
from gen.ostinato.controller.v1 import controller_pb2, controller_pb2_grpc
from gen.ostinato.joc.v1 import joc_pb2, joc_pb2_grpc
from ostinato import rpc
from ostinato.launch import Launched, launch
from tests.integration.certificates import Certificates
from tests.integration.support import eventually

pytestmark = pytest.mark.integration

WF = items_pb2.ITEM_TYPE_WORKFLOW
HELLO = (
    '{"instructions":[{"execute":{"jobName":"greet"}}],'
    '"jobs":{"greet":{"agent":"agent-1","executable":{"shellScript":{"script":"echo hello"}}}}}'
)
CLI = [sys.executable, "-m", "ostinato.cli"]


def start_joc(data_dir: Path, controller: str, certificates: Certificates) -> Launched:
    return launch(
        "joc",
        "joc_svc",
        [
            *["--listen", "127.0.0.1:0", "--data-dir", str(data_dir), "--controller", f"main={controller}"],
            *certificates.args("joc"),
        ],
        data_dir,
    )


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


# ---- JOC whose controller is unreachable


@pytest.fixture(scope="module")
def lonely_joc(tmp_path_factory: pytest.TempPathFactory, certificates: Certificates) -> Iterator[Launched]:
    joc = start_joc(tmp_path_factory.mktemp("joc"), "127.0.0.1:1", certificates)
    yield joc
    joc.stop()


@pytest.fixture(scope="module")
def stubs(
    lonely_joc: Launched, certificates: Certificates
) -> Iterator[tuple[joc_pb2_grpc.InventoryServiceStub, ...]]:
    with certificates.sync_channel(lonely_joc.address) as channel:
        yield (
            joc_pb2_grpc.InventoryServiceStub(channel),
            joc_pb2_grpc.DeploymentServiceStub(channel),
            joc_pb2_grpc.OrderServiceStub(channel),
        )


def rpc_error(call: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)  # type: ignore[operator]
    return info.value


def test_inventory_put_get_list_remove(stubs: tuple) -> None:
    inventory, _, _ = stubs
    put = inventory.PutObject(joc_pb2.PutObjectRequest(path="/inv/a/hello", type=WF, json=HELLO), timeout=10)
    assert put.object.path == "/inv/a/hello" and put.object.type == WF
    assert json.loads(put.object.json)["path"] == "/inv/a/hello"  # canonical JSON carries the path
    inventory.PutObject(
        joc_pb2.PutObjectRequest(
            path="/inv/db", type=items_pb2.ITEM_TYPE_NOTICE_BOARD, json='{"b": 1, "a": 2}'
        ),
        timeout=10,
    )
    got = inventory.GetObject(joc_pb2.GetObjectRequest(path="/inv/db"), timeout=10).object
    assert got.json == '{"a": 2, "b": 1}' and got.modified_at.seconds > 0

    def listed(folder: str, recursive: bool) -> list[str]:
        request = joc_pb2.ListObjectsRequest(folder=folder, recursive=recursive)
        return [o.path for o in inventory.ListObjects(request, timeout=10).objects]

    assert listed("/inv", False) == ["/inv/db"]
    assert listed("/inv", True) == ["/inv/a/hello", "/inv/db"]
    inventory.RemoveObject(joc_pb2.RemoveObjectRequest(path="/inv/db"), timeout=10)
    assert listed("/inv", True) == ["/inv/a/hello"]
    e = rpc_error(inventory.GetObject, joc_pb2.GetObjectRequest(path="/inv/db"))
    assert e.code() == grpc.StatusCode.NOT_FOUND and "/inv/db" in e.details()


def test_invalid_objects_are_rejected_naming_the_field(stubs: tuple) -> None:
    inventory, _, _ = stubs
    bad = '{"instructions":[{"execute":{"jobName":"a"}}],"jobs":{"a":{"agnt":"x"}}}'
    e = rpc_error(inventory.PutObject, joc_pb2.PutObjectRequest(path="/bad", type=WF, json=bad))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "agnt" in e.details()
    no_executable = '{"instructions":[{"execute":{"jobName":"a"}}],"jobs":{"a":{"agent":"x"}}}'
    e = rpc_error(inventory.PutObject, joc_pb2.PutObjectRequest(path="/bad", type=WF, json=no_executable))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "jobs.a.executable" in e.details()
    e = rpc_error(inventory.PutObject, joc_pb2.PutObjectRequest(path="/bad", json="{}"))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "type" in e.details()
    lock = items_pb2.ITEM_TYPE_LOCK
    e = rpc_error(inventory.PutObject, joc_pb2.PutObjectRequest(path="/bad", type=lock, json="[1]"))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "json" in e.details()
    e = rpc_error(inventory.PutObject, joc_pb2.PutObjectRequest(path="relative", type=lock, json="{}"))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "path" in e.details()


def test_deploy_to_unreachable_controller_is_history(stubs: tuple) -> None:
    inventory, deployment, _ = stubs
    inventory.PutObject(joc_pb2.PutObjectRequest(path="/dep/hello", type=WF, json=HELLO), timeout=10)
    response = deployment.Deploy(joc_pb2.DeployRequest(paths=["/dep"]), timeout=30)
    [row] = response.deployments
    assert (row.path, row.controller_id, row.status) == (
        "/dep/hello",
        "main",
        joc_pb2.DEPLOYMENT_STATUS_NOT_DEPLOYED,
    )
    assert "unreachable" in row.message and row.version_id
    history = deployment.ListDeployments(joc_pb2.ListDeploymentsRequest(path="/dep/hello"), timeout=10)
    assert [d.id for d in history.deployments] == [row.id]
    got = inventory.GetObject(joc_pb2.GetObjectRequest(path="/dep/hello"), timeout=10).object
    assert got.deployed_version_id == ""
    e = rpc_error(deployment.Deploy, joc_pb2.DeployRequest(paths=["/nowhere"]))
    assert e.code() == grpc.StatusCode.NOT_FOUND and "/nowhere" in e.details()
    e = rpc_error(deployment.Deploy, joc_pb2.DeployRequest(paths=["/dep"], controller_ids=["other"]))
    assert e.code() == grpc.StatusCode.NOT_FOUND and "other" in e.details()


def test_orders_with_controller_unreachable(stubs: tuple) -> None:
    _, _, orders = stubs
    e = rpc_error(orders.AddOrder, joc_pb2.AddOrderRequest(workflow_path="/dep/hello"))
    assert e.code() == grpc.StatusCode.UNAVAILABLE and "controller main" in e.details()
    e = rpc_error(orders.GetOrder, joc_pb2.GetOrderRequest(order_id="#nope"))
    assert e.code() == grpc.StatusCode.NOT_FOUND and "#nope" in e.details()
    assert list(orders.ListOrders(joc_pb2.ListOrdersRequest(), timeout=10).orders) == []


def test_cli_errors() -> None:
    result = cli("order", "list", "--joc", "127.0.0.1:1")
    assert result.returncode == 1
    assert result.stderr == "ostinato: error: cannot reach JOC at 127.0.0.1:1\n"
    result = cli("order", "add")
    assert result.returncode == 2 and "WORKFLOW_PATH" in result.stderr
    result = cli("order", "add", "/w", "--arg", "novalue")
    assert result.returncode == 2 and "NAME=VALUE" in result.stderr
    result = cli("frobnicate")
    assert result.returncode == 2


def test_cli_deploy_folder(lonely_joc: Launched, tmp_path: Path) -> None:
    (tmp_path / "ex/a").mkdir(parents=True)
    (tmp_path / "ex/a/hello.workflow.json").write_text(HELLO)
    (tmp_path / "ex/env.jobresource.json").write_text('{"variables": {"x": "1"}}')
    (tmp_path / "ex/board.noticeboard.json").write_text("{}")
    (tmp_path / "ex/README.md").write_text("not an object")
    result = cli("deploy", str(tmp_path / "ex"), "--joc", lonely_joc.address)
    assert result.returncode == 1, result.stderr  # the controller is unreachable
    lines = result.stdout.splitlines()
    assert [line.split(" version ")[0] for line in lines] == [
        "NOT deployed /a/hello",
        "NOT deployed /env",
        "NOT deployed /board",
    ]
    for line in lines[:2]:  # pending: JOC keeps delivering them
        assert " to main: controller main at 127.0.0.1:1 is unreachable" in line and "(pending" in line
    assert "notice_board objects cannot be deployed yet" in lines[2] and "pending" not in lines[2]

    (tmp_path / "bad.workflow.json").write_text(
        '{"instructions":[{"execute":{"jobName":"a"}}],"jobs":{"a":{"agnt":"x"}}}'
    )
    result = cli("deploy", str(tmp_path / "bad.workflow.json"), "--joc", lonely_joc.address)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("ostinato: error: ") and "bad.workflow.json" in line and "agnt" in line


def test_cli_tells_unreachable_controller_from_unreachable_joc(lonely_joc: Launched) -> None:
    result = cli("order", "add", "/dep/hello", "--joc", lonely_joc.address)
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("ostinato: error: controller main at 127.0.0.1:1 is unreachable")


# ---- JOC with a test-side controller


class TestController(controller_pb2_grpc.ControllerServiceServicer):
    """A controller's journal, reduced to what JOC sees: scripted order events."""

    __test__ = False

    def __init__(self) -> None:
        self.events: list[events_pb2.Event] = []
        self.last_id = 0
        self.released_until = 0
        self.deployed: dict[str, items_pb2.SignedItem] = {}
        self.orders: set[str] = set()
        self.changed = asyncio.Condition()
        self.tasks: set[asyncio.Task[None]] = set()
        self.commands: list[commands_pb2.OrderCommand] = []
        self.commands_implemented = True

    async def emit(self, order_id: str, **kind: object) -> None:
        async with self.changed:
            self.last_id += 1
            event = events_pb2.Event(id=self.last_id, order_id=order_id, **kind)  # type: ignore[arg-type]
            event.timestamp.GetCurrentTime()
            self.events.append(event)
            self.changed.notify_all()

    async def DeployItems(self, request, context):
        for item in request.items:
            if "nope-agent" in item.json:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"{item.path}: unknown agent 'nope-agent'"
                )
        for item in request.items:
            self.deployed[item.path] = item
            # As the real controller once an agent journaled the item.
            attached = events_pb2.ItemAttached(agent="agent-1", path=item.path, version_id=item.version_id)
            await self.emit("", item_attached=attached)
        return controller_pb2.DeployItemsResponse(event_id=self.last_id)

    async def CommandOrders(self, request, context):
        if not self.commands_implemented:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        self.commands.extend(request.commands)
        return controller_pb2.CommandOrdersResponse(
            results=[
                commands_pb2.OrderCommandResult(
                    order_id=c.order_id,
                    error="" if c.WhichOneof("kind") != "answer_prompt" else "the order is not prompting",
                )
                for c in request.commands
            ]
        )

    async def AddOrders(self, request, context):
        added = []
        for new in request.orders:
            item = self.deployed.get(new.workflow_path)
            if item is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown workflow {new.workflow_path}")
            added.append(
                controller_pb2.AddedOrder(
                    id=new.id, workflow_version_id=item.version_id, existed=new.id in self.orders
                )
            )
            if new.id not in self.orders:
                self.orders.add(new.id)
                task = asyncio.create_task(self.run_order(new, item.version_id))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        return controller_pb2.AddOrdersResponse(orders=added)

    async def run_order(self, new: controller_pb2.NewOrder, version_id: str) -> None:
        fail = new.arguments.get("fail", values_pb2.Value()).boolean
        order = order_pb2.Order(
            id=new.id,
            workflow_path=new.workflow_path,
            workflow_version_id=version_id,
            arguments=dict(new.arguments),
            state=order_pb2.ORDER_STATE_FRESH,
        )
        outcome = workflow_pb2.Outcome(
            kind=workflow_pb2.OUTCOME_KIND_FAILED if fail else workflow_pb2.OUTCOME_KIND_SUCCEEDED,
            return_code=1 if fail else 0,
        )
        o = new.id
        script: list[dict[str, object]] = [
            {"order_added": events_pb2.OrderAdded(order=order)},
            {"order_started": events_pb2.OrderStarted()},
            {"order_attachable": events_pb2.OrderAttachable(agent="agent-1")},
            {"order_attached": events_pb2.OrderAttached(agent="agent-1")},
            {
                "order_processing_started": events_pb2.OrderProcessingStarted(
                    processing=order_pb2.Processing(subagent_id="subagent-1")
                )
            },
            {
                "order_std_written": events_pb2.OrderStdWritten(
                    stream=events_pb2.STD_STREAM_STDOUT, chunk="hello from job\n"
                )
            },
            {
                "order_std_written": events_pb2.OrderStdWritten(
                    stream=events_pb2.STD_STREAM_STDERR, chunk="a warning\n"
                )
            },
            {"order_processed": events_pb2.OrderProcessed(outcome=outcome)},
        ]
        if fail:
            script += [{"order_failed": events_pb2.OrderFailed(outcome=outcome)}]
        else:
            script += [
                {"order_moved": events_pb2.OrderMoved(to=order_pb2.Position(nr=1))},
                {"order_detachable": events_pb2.OrderDetachable()},
                {"order_detached": events_pb2.OrderDetached()},
                {"order_finished": events_pb2.OrderFinished()},
                {"order_deleted": events_pb2.OrderDeleted()},
            ]
        for kind in script:
            await asyncio.sleep(0.05)  # so watchers see most events live, some in batches
            await self.emit(o, **kind)

    async def WatchEvents(self, request, context):
        if request.after < self.released_until:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"events until {self.released_until} released"
            )
        after = request.after
        while True:
            async with self.changed:
                batch = [e for e in self.events if e.id > after]
                if not batch:
                    try:
                        await asyncio.wait_for(self.changed.wait(), 0.3)
                        continue
                    except TimeoutError:
                        pass
            if batch:
                after = batch[-1].id
            yield controller_pb2.WatchEventsResponse(events=batch)  # empty: a heartbeat

    async def ReleaseEvents(self, request, context):
        self.released_until = max(self.released_until, request.until_id)
        self.events = [e for e in self.events if e.id > self.released_until]
        return controller_pb2.ReleaseEventsResponse()

    async def GetOverview(self, request, context):
        return controller_pb2.GetOverviewResponse(
            controller_id="main", last_event_id=self.last_id, released_until_id=self.released_until
        )


async def serve_controller(
    controller: TestController, certificates: Certificates, address: str = "127.0.0.1:0"
) -> rpc.Server:
    """As the controller, serving JOC alone."""
    return await rpc.start_server(
        address,
        [
            (
                controller_pb2_grpc.add_ControllerServiceServicer_to_server,
                controller,
                rpc.service_name(controller_pb2, "ControllerService"),
            )
        ],
        security=certificates.security("controller", peers=["joc"]),
    )


async def run_cli(*args: str, timeout: float = 30) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode or 0, out.decode(), err.decode()


@pytest.fixture
async def controller(certificates: Certificates) -> AsyncIterator[tuple[TestController, rpc.Server]]:
    c = TestController()
    server = await serve_controller(c, certificates)
    yield c, server
    for task in list(c.tasks):
        task.cancel()
    await server.stop(0)


async def test_orders_flow_through_joc(
    controller: tuple[TestController, rpc.Server], tmp_path: Path, certificates: Certificates
) -> None:
    fake, server = controller
    joc = await asyncio.to_thread(start_joc, tmp_path / "joc", server.address, certificates)
    try:
        (tmp_path / "ex").mkdir()
        (tmp_path / "ex/hello.workflow.json").write_text(HELLO)
        code, out, err = await run_cli("deploy", str(tmp_path / "ex"), "--joc", joc.address)
        assert code == 0, err
        [line] = out.splitlines()
        assert line.startswith("deployed /hello version ") and line.endswith(" to main")
        version_id = line.split()[3]
        item = fake.deployed["/hello"]
        assert item.version_id == version_id and item.type == WF
        assert json.loads(item.json)["versionId"] == version_id and json.loads(item.json)["path"] == "/hello"

        code, out, err = await run_cli(
            "order", "add", "/hello", "--id", "o-1", "--arg", "n=3", "--wait", "--joc", joc.address
        )
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == "o-1"
        assert "o-1 processing on subagent-1" in lines
        assert "hello from job" in lines and "o-1 moved to 1" in lines
        assert lines[-1] == "o-1 finished"
        assert err == "a warning\n"

        code, out, err = await run_cli(
            "order", "add", "/hello", "--arg", "fail=true", "--wait", "--joc", joc.address
        )
        assert code == 1, err
        assert out.splitlines()[-1].endswith(" failed (return code 1)")

        code, out, err = await run_cli("order", "show", "o-1", "--joc", joc.address)
        assert code == 0, err
        assert (
            "state      finished" in out and f"/hello version {version_id}" in out and "argument   n=3" in out
        )
        code, out, err = await run_cli("order", "list", "--state", "finished", "--joc", joc.address)
        assert code == 0 and len(out.splitlines()) == 2 and "o-1" in out, out + err
        code, out, err = await run_cli("order", "logs", "o-1", "-f", "--joc", joc.address)
        assert (code, out, err) == (0, "hello from job\n", "a warning\n")

        # JOC released what it stored; the controller may drop it.
        await eventually(lambda: fake.released_until == fake.last_id)

        # The controller's own verdicts reach the caller with their code.
        async with certificates.channel(joc.address) as channel:
            orders = joc_pb2_grpc.OrderServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/missing"))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND and "/missing" in info.value.details()
            # Same id again: added once.
            again = await orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/hello", order_id="o-1"))
            assert again.order_id == "o-1" and again.workflow_version_id == version_id
            inventory = joc_pb2_grpc.InventoryServiceStub(channel)
            await inventory.PutObject(
                joc_pb2.PutObjectRequest(path="/nope", type=WF, json=HELLO.replace("agent-1", "nope-agent"))
            )
            deployment = joc_pb2_grpc.DeploymentServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await deployment.Deploy(joc_pb2.DeployRequest(paths=["/nope"]))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "unknown agent 'nope-agent'" in info.value.details()
            history = await deployment.ListDeployments(joc_pb2.ListDeploymentsRequest(path="/nope"))
            assert [d.status for d in history.deployments] == [joc_pb2.DEPLOYMENT_STATUS_NOT_DEPLOYED]

            # Watching an order that ended replays its events and ends.
            responses = [r async for r in orders.WatchOrder(joc_pb2.WatchOrderRequest(order_id="o-1"))]
            assert responses[-1].event.WhichOneof("kind") == "order_finished"
            assert responses[-1].order.state == order_pb2.ORDER_STATE_FINISHED
            assert [r.event.id for r in responses] == sorted(r.event.id for r in responses)
            assert responses[0].order.state == order_pb2.ORDER_STATE_FRESH
    finally:
        joc.stop()


async def test_joc_survives_controller_restart_and_lost_events(
    controller: tuple[TestController, rpc.Server], tmp_path: Path, certificates: Certificates
) -> None:
    fake, server = controller
    fake.deployed["/hello"] = items_pb2.SignedItem(type=WF, path="/hello", version_id="v1")
    joc = await asyncio.to_thread(start_joc, tmp_path / "joc", server.address, certificates)
    try:
        async with certificates.channel(joc.address) as channel:
            orders = joc_pb2_grpc.OrderServiceStub(channel)
            await orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/hello", order_id="before"))
            await eventually(lambda: fake.released_until == fake.last_id and not fake.tasks)

            # The controller goes away and comes back on the same address with its journal.
            await server.stop(0)
            await asyncio.sleep(0.5)
            server = await serve_controller(fake, certificates, server.address)
            await fake.run_order(controller_pb2.NewOrder(id="after", workflow_path="/hello"), "v1")
            assert (await watch_to_end(orders, "after"))[-1].order.state == order_pb2.ORDER_STATE_FINISHED
            await eventually(lambda: fake.released_until == fake.last_id)
    finally:
        joc.stop()

    try:
        # A JOC that never saw the released events is told so and continues after them, loudly.
        second = await asyncio.to_thread(start_joc, tmp_path / "joc2", server.address, certificates)
        try:
            await fake.run_order(controller_pb2.NewOrder(id="late", workflow_path="/hello"), "v1")
            async with certificates.channel(second.address) as channel:
                orders = joc_pb2_grpc.OrderServiceStub(channel)
                assert (await watch_to_end(orders, "late"))[-1].order.state == order_pb2.ORDER_STATE_FINISHED
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await orders.GetOrder(joc_pb2.GetOrderRequest(order_id="before"))
                assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert "EVENTS LOST" in second.log_text()
        finally:
            second.stop()
    finally:
        await server.stop(0)


async def watch_to_end(
    orders: joc_pb2_grpc.OrderServiceStub, order_id: str
) -> list[joc_pb2.WatchOrderResponse]:
    """WatchOrder once JOC has learnt of the order from the controller's events."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return [
                r async for r in orders.WatchOrder(joc_pb2.WatchOrderRequest(order_id=order_id), timeout=10)
            ]
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_order_commands_item_confirmations_and_audit_through_joc(
    controller: tuple[TestController, rpc.Server], tmp_path: Path, certificates: Certificates
) -> None:
    fake, server = controller
    joc = await asyncio.to_thread(start_joc, tmp_path / "joc", server.address, certificates)
    try:
        (tmp_path / "hello.workflow.json").write_text(HELLO)
        code, out, err = await run_cli(
            "deploy", str(tmp_path / "hello.workflow.json"), "--joc", joc.address, "--reason", "first try"
        )
        assert code == 0, err
        version_id = out.split()[3]
        async with certificates.channel(joc.address) as channel:
            deployment = joc_pb2_grpc.DeploymentServiceStub(channel)

            # The agent's confirmation (ItemAttached) reaches the history without holding up "deployed".
            async def confirmed() -> list[joc_pb2.AgentConfirmation]:
                history = await deployment.ListDeployments(joc_pb2.ListDeploymentsRequest(path="/hello"))
                return list(history.deployments[0].agent_confirmations)

            await eventually(confirmed, what="the agent's confirmation")
            [agent] = await confirmed()
            assert agent.agent == "agent-1" and agent.attached_at.seconds > 0
            code, out, _ = await run_cli("deploy", "history", "/hello", "--joc", joc.address)
            assert code == 0 and "deployed" in out and "agent-1" in out and version_id in out, out

            orders = joc_pb2_grpc.OrderServiceStub(channel)
            await orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/hello", order_id="c-1"))

        code, out, err = await run_cli("order", "cancel", "c-1", "--kill", "--joc", joc.address)
        assert (code, out) == (0, "c-1: cancel accepted\n"), err
        code, out, err = await run_cli("order", "suspend", "c-1", "--joc", joc.address)
        assert code == 0, err
        code, out, err = await run_cli(
            "order", "resume", "c-1", "--position", "1", "--arg", "x=2", "--joc", joc.address
        )
        assert code == 0, err
        code, out, err = await run_cli("order", "answer", "c-1", "nope", "--joc", joc.address)
        assert (code, out) == (1, "")
        assert err.splitlines() == [
            "ostinato: error: c-1: answer refused: the order is not prompting",
            "ostinato: error: nope: answer refused: no order nope",
        ]
        kinds = [(c.order_id, c.WhichOneof("kind")) for c in fake.commands]
        assert kinds == [("c-1", "cancel"), ("c-1", "suspend"), ("c-1", "resume"), ("c-1", "answer_prompt")]
        assert fake.commands[0].cancel.kill and not fake.commands[1].suspend.kill
        assert fake.commands[2].resume.position.nr == 1
        assert fake.commands[2].resume.variables["x"].number == "2"

        # A controller without order commands yet: each command says so.
        fake.commands_implemented = False
        code, out, err = await run_cli("order", "cancel", "c-1", "--joc", joc.address)
        assert code == 1 and "UNIMPLEMENTED" in err, out + err

        code, out, err = await run_cli("audit", "--joc", joc.address, "--limit", "20")
        assert code == 0, err
        lines = out.splitlines()
        for action, obj in [
            ("deploy", f"/hello {version_id} to main"),
            ("add order", "c-1 /hello on main"),
            ("cancel order (kill)", "c-1 on main"),
            ("suspend order", "c-1 on main"),
            ("resume order", "c-1 on main"),
            ("answer prompt", "c-1 on main: the order is not prompting"),
            ("answer prompt", "nope on no controller: no order nope"),
        ]:
            assert any(action in line and obj in line for line in lines), (action, obj, out)
        assert any("deploy" in line and "first try" in line for line in lines), out
    finally:
        joc.stop()
