"""One order through JOC, controller, director and subagents as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from gen.ostinato.common.v1 import items_pb2, order_pb2
from gen.ostinato.joc.v1 import joc_pb2
from ostinato.topology import ROOT, Topology
from tests.integration.support import Joc, shell_job

S = order_pb2.OrderState


def cli(topology: Topology, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    joc = ["--joc", topology.joc_address, *topology.cli_args()]
    return subprocess.run(
        [sys.executable, "-m", "ostinato.cli", *args[:2], *joc, *args[2:]]
        if args[0] == "order"
        else [sys.executable, "-m", "ostinato.cli", args[0], *joc, *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_deploy_order_and_logs_through_all_four_processes(topology: Topology) -> None:
    deployed = cli(topology, "deploy", str(ROOT / "examples"))
    assert deployed.returncode == 0, deployed.stderr
    assert "deployed /hello version" in deployed.stdout

    run = cli(topology, "order", "add", "/hello", "--arg", "name=tester", "--wait")
    assert run.returncode == 0, run.stderr
    assert "hello, tester" in run.stdout  # the job's output, streamed while it ran
    assert "step 3 of 3" in run.stdout
    assert "a line on stderr" in run.stderr
    assert run.stdout.strip().splitlines()[-1].endswith("finished")
    order_id = run.stdout.split()[0]

    logs = cli(topology, "order", "logs", order_id)
    assert logs.returncode == 0, logs.stderr
    for line in ("hello, tester", "step 1 of 3", "step 3 of 3", "done"):
        assert line in logs.stdout + logs.stderr

    shown = cli(topology, "order", "show", order_id)
    assert shown.returncode == 0 and "FINISHED" in shown.stdout.upper()
    listed = cli(topology, "order", "list")
    assert order_id in listed.stdout


async def test_events_reach_joc_once_each(topology: Topology, joc: Joc) -> None:
    await joc.deploy_workflow(
        "/three",
        {
            "instructions": [{"execute": {"jobName": "j"}}] * 3,
            "jobs": {"j": shell_job("echo $N", N="$n")},
        },
    )
    added = await joc.orders.AddOrder(
        joc_pb2.AddOrderRequest(workflow_path="/three", arguments={"n": _num(7)})
    )
    order = await joc.wait_until_ended(added.order_id)
    assert order.state == S.ORDER_STATE_FINISHED
    detail = await joc.orders.GetOrder(joc_pb2.GetOrderRequest(order_id=added.order_id))
    ids = [e.id for e in detail.events]
    assert ids == sorted(set(ids)), "events duplicated or out of order at JOC"
    kinds = [e.WhichOneof("kind") for e in detail.events]
    assert kinds.count("order_processing_started") == 3
    # The agent journaled the workflow; that confirmation reached JOC's deployment history.
    history = await joc.deployment.ListDeployments(joc_pb2.ListDeploymentsRequest(path="/three"))
    assert [c.agent for c in history.deployments[0].agent_confirmations] == ["agent-1"]
    assert kinds.count("order_processed") == 3
    assert kinds.count("order_finished") == 1
    chunks = [c async for c in joc.orders.GetOrderLog(joc_pb2.GetOrderLogRequest(order_id=added.order_id))]
    assert "".join(c.chunk for c in chunks) == "7\n7\n7\n"


def _num(n: int):
    from ostinato.workflow.values import to_value

    return to_value(n)


def _marked_workflow(marker: Path, gate: Path) -> dict:
    """A job that records each run in `marker`, then waits until `gate` exists: so a test can act
    while it runs and count afterwards how often it ran."""
    script = (
        f'echo "run $$" >> {marker}\necho started\nwhile [ ! -e {gate} ]; do sleep 0.05; done\necho ended'
    )
    return {"instructions": [{"execute": {"jobName": "marked"}}], "jobs": {"marked": shell_job(script)}}


@pytest.mark.parametrize("victim", ["controller", "director"])
async def test_kill_9_mid_order_then_restart_finishes_exactly_once(
    topology: Topology, joc: Joc, tmp_path: Path, victim: str
) -> None:
    marker, gate = tmp_path / "runs.txt", tmp_path / "gate"
    await joc.deploy_workflow("/marked", _marked_workflow(marker, gate))
    added = await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/marked"))
    await joc.wait_for(added.order_id, "order_std_written")  # the job is running now

    topology.kill(victim)
    gate.touch()  # the job ends while the victim is down
    topology.start_service(victim)

    order = await joc.wait_until_ended(added.order_id, timeout=60)
    assert order.state == S.ORDER_STATE_FINISHED
    assert len(marker.read_text().splitlines()) == 1, "the job ran more than once"
    detail = await joc.orders.GetOrder(joc_pb2.GetOrderRequest(order_id=added.order_id))
    kinds = [e.WhichOneof("kind") for e in detail.events]
    assert kinds.count("order_processing_started") == 1
    assert kinds.count("order_finished") == 1
    # A new order after the restart runs as usual (the gate is open now).
    added2 = await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/marked"))
    assert (await joc.wait_until_ended(added2.order_id)).state == S.ORDER_STATE_FINISHED
    assert len(marker.read_text().splitlines()) == 2
    # Adding an ended order again (as a retry does, after a fail-over swallowed the answer)
    # adds nothing and runs nothing.
    again = await joc.orders.AddOrder(
        joc_pb2.AddOrderRequest(workflow_path="/marked", order_id=added2.order_id)
    )
    assert again.existed
    added3 = await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/marked"))
    await joc.wait_until_ended(added3.order_id)
    assert len(marker.read_text().splitlines()) == 3, "the ended order ran again"


async def test_bad_workflow_rejected_naming_the_field(topology: Topology, joc: Joc, tmp_path: Path) -> None:
    bad = {"instructions": [{"execute": {"jobName": "a"}}], "jobs": {"a": {"agnt": "agent-1"}}}
    (tmp_path / "bad.workflow.json").write_text(json.dumps(bad))
    result = cli(topology, "deploy", str(tmp_path / "bad.workflow.json"))
    assert result.returncode == 1
    assert "agnt" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    missing_job = {"instructions": [{"execute": {"jobName": "nope"}}], "jobs": {}}
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await joc.deploy_workflow("/missing", missing_job)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "instructions[0].execute.jobName" in (e.value.details() or "")

    unknown_agent = {
        "instructions": [{"execute": {"jobName": "a"}}],
        "jobs": {"a": shell_job("true", agent="agent-9")},
    }
    await joc.inventory.PutObject(
        joc_pb2.PutObjectRequest(
            path="/elsewhere", type=items_pb2.ITEM_TYPE_WORKFLOW, json=json.dumps(unknown_agent)
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await joc.deployment.Deploy(joc_pb2.DeployRequest(paths=["/elsewhere"]))
    assert "agent-9" in (e.value.details() or "")


async def test_unknown_workflow_path_rejected(topology: Topology, joc: Joc) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/no/such/workflow"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "/no/such/workflow" in (e.value.details() or "")
    result = cli(topology, "order", "add", "/no/such/workflow")
    assert result.returncode == 1 and "/no/such/workflow" in result.stderr


async def test_orders_added_at_once_each_get_their_own_answer(topology: Topology, joc: Joc) -> None:
    # JOC sends concurrent AddOrder calls to the controller together, and the controller refuses
    # a whole request for one bad order: the bad ones fail alone, the others run.
    await joc.deploy_workflow(
        "/many", {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job("true")}}
    )
    paths = ["/many"] * 12
    paths[3] = paths[8] = "/missing"
    answers = await asyncio.gather(
        *(joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path=p)) for p in paths),
        return_exceptions=True,
    )
    for path, answer in zip(paths, answers, strict=True):
        if path == "/missing":
            assert isinstance(answer, grpc.aio.AioRpcError), answer
            assert answer.code() == grpc.StatusCode.NOT_FOUND and "/missing" in (answer.details() or "")
        else:
            assert isinstance(answer, joc_pb2.AddOrderResponse), answer
            assert (await joc.wait_until_ended(answer.order_id)).state == S.ORDER_STATE_FINISHED
    listed = await joc.orders.ListOrders(joc_pb2.ListOrdersRequest(workflow_path="/many"))
    assert len(listed.orders) == 10


def test_reflection_lists_every_service(topology: Topology) -> None:
    buf = shutil.which("buf", path=str(ROOT / "node_modules" / ".bin")) or shutil.which("buf")
    assert buf, "buf is missing: `make test` installs it with npm (package.json)"
    expected = {
        "joc": {
            "ostinato.joc.v1.InventoryService",
            "ostinato.joc.v1.OrderService",
            "ostinato.joc.v1.DeploymentService",
        },
        "controller": {"ostinato.controller.v1.ControllerService"},
        "director": {"ostinato.director.v1.DirectorService"},
        "subagent-1": {"ostinato.subagent.v1.SubagentService"},
    }

    def tls(as_name: str) -> list[str]:
        """buf curl's mutual TLS: the CA, and the certificate of `as_name`."""
        security = topology.security(as_name)
        return ["--cacert", str(security.ca), "--cert", str(security.cert), "--key", str(security.key)]

    for name, services in expected.items():
        address = topology.services[name].address
        # Health and reflection answer any certificate of the CA: the CLI's here.
        listed = subprocess.run(
            [buf, "curl", "--protocol", "grpc", *tls("cli"), "--list-services", f"https://{address}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert listed.returncode == 0, listed.stderr
        names = set(listed.stdout.split())
        assert services | {"grpc.health.v1.Health"} <= names, (name, names)
    method = "ostinato.controller.v1.ControllerService/GetOverview"
    address = topology.services["controller"].address
    # The controller serves JOC (and its cluster peers) only.
    refused = subprocess.run(
        [buf, "curl", "--protocol", "grpc", *tls("cli"), f"https://{address}/{method}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode != 0 and "permission_denied" in refused.stderr, refused.stderr
    overview = subprocess.run(
        [buf, "curl", "--protocol", "grpc", *tls("joc"), f"https://{address}/{method}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert overview.returncode == 0, overview.stderr
    assert json.loads(overview.stdout)["controllerId"] == "controller"
    assert os.path.exists(topology.data_dir / "controller" / "journal")


async def test_folder_with_an_undeployable_type_still_deploys_its_workflows(
    topology: Topology, joc: Joc
) -> None:
    workflow = {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job("true")}}
    await joc.inventory.PutObject(
        joc_pb2.PutObjectRequest(
            path="/mixed/wf", type=items_pb2.ITEM_TYPE_WORKFLOW, json=json.dumps(workflow)
        )
    )
    await joc.inventory.PutObject(
        joc_pb2.PutObjectRequest(
            path="/mixed/board",
            type=items_pb2.ITEM_TYPE_NOTICE_BOARD,
            json=json.dumps({"endOfLife": "$js7EpochMilli + 24 * 3600 * 1000"}),
        )
    )
    response = await joc.deployment.Deploy(joc_pb2.DeployRequest(paths=["/mixed"]))
    status = {d.path: (d.status, d.message) for d in response.deployments}
    assert status["/mixed/wf"] == (joc_pb2.DEPLOYMENT_STATUS_DEPLOYED, "")
    assert status["/mixed/board"][0] == joc_pb2.DEPLOYMENT_STATUS_NOT_DEPLOYED
    assert "notice_board objects cannot be deployed yet" in status["/mixed/board"][1]
    added = await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/mixed/wf"))
    assert (await joc.wait_until_ended(added.order_id)).state == S.ORDER_STATE_FINISHED
