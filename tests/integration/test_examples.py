"""Every sample workflow in examples/ runs through the real processes, deployed by the CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from gen.ostinato.common.v1 import commands_pb2, order_pb2
from gen.ostinato.joc.v1 import joc_pb2
from ostinato.topology import ROOT, Topology
from tests.integration.support import Joc

S = order_pb2.OrderState

# workflow -> (arguments, final state, lines its jobs print)
EXPECTED: dict[str, tuple[dict[str, str], int, list[str]]] = {
    "/hello": ({"name": "examples"}, S.ORDER_STATE_FINISHED, ["hello, examples", "step 3 of 3"]),
    "/instructions/fork": ({}, S.ORDER_STATE_FINISHED, ["joined: 4 files and 2 tables"]),
    "/instructions/fork_list": ({}, S.ORDER_STATE_FINISHED, []),
    "/instructions/retry": ({}, S.ORDER_STATE_FINISHED, ["first try fails", "second try works"]),
    "/instructions/if_else": ({}, S.ORDER_STATE_FINISHED, ["a big one"]),
    "/instructions/lock": (
        {},
        S.ORDER_STATE_FINISHED,
        ["migrating while nobody else holds the database lock"],
    ),
    "/instructions/fail": ({}, S.ORDER_STATE_FINISHED, ["told the operator"]),
    "/instructions/finish": ({}, S.ORDER_STATE_FINISHED, []),
    "/instructions/sleep": ({}, S.ORDER_STATE_FINISHED, ["before", "after"]),
    "/instructions/cycle": ({}, S.ORDER_STATE_FINISHED, ["tick at 0/cycle+0:0", "tick at 0/cycle+2:0"]),
    "/instructions/add_order": ({}, S.ORDER_STATE_FINISHED, ["added an order of /hello"]),
    "/instructions/break": ({}, S.ORDER_STATE_FINISHED, ["poll 1", "poll 3", "ready after 3 polls"]),
}


@pytest.fixture
async def deployed(topology: Topology, joc: Joc) -> Joc:
    result = subprocess.run(
        [sys.executable, "-m", "ostinato.cli", "deploy", "--joc", topology.joc_address,
         *topology.cli_args(), str(ROOT / "examples")],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return joc


async def output_of(joc: Joc, order_id: str) -> str:
    chunks = [c.chunk async for c in joc.orders.GetOrderLog(joc_pb2.GetOrderLogRequest(order_id=order_id))]
    return "".join(chunks)


async def run(joc: Joc, path: str, arguments: dict[str, str]) -> tuple[order_pb2.Order, str]:
    from ostinato.workflow.values import parse_cli_value

    request = joc_pb2.AddOrderRequest(workflow_path=path)
    for k, v in arguments.items():
        request.arguments[k].CopyFrom(parse_cli_value(v))
    added = await joc.orders.AddOrder(request)
    order = await joc.wait_until_ended(added.order_id, timeout=60)
    return order, await output_of(joc, added.order_id)


async def test_every_example_runs(deployed: Joc) -> None:
    # All at once, as users would: they share the machine, the agent and the subagents.
    results = await asyncio.gather(*(run(deployed, path, args) for path, (args, _, _) in EXPECTED.items()))
    for (path, (_, state, lines)), (order, output) in zip(EXPECTED.items(), results, strict=True):
        assert order.state == state, (path, order)
        for line in lines:
            assert line in output, (path, output)


async def test_finish_example_skips_its_job_unless_asked(deployed: Joc) -> None:
    _, skipped = await run(deployed, "/instructions/finish", {})
    _, worked = await run(deployed, "/instructions/finish", {"work": "true"})
    assert "working" not in skipped and "working" in worked


async def test_fork_list_example_forks_one_child_per_file(deployed: Joc) -> None:
    added = await deployed.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/instructions/fork_list"))
    await deployed.wait_until_ended(added.order_id)
    logs = {i: await output_of(deployed, f"{added.order_id}|{i}") for i in range(3)}
    assert logs == {0: "loading a.csv\n", 1: "loading b.csv\n", 2: "loading c.csv\n"}


async def test_prompt_example_waits_for_the_answer(deployed: Joc) -> None:
    added = await deployed.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/instructions/prompt"))
    prompted = await deployed.wait_for(added.order_id, "order_prompted")
    assert prompted.state == S.ORDER_STATE_PROMPTING and prompted.prompt_question == "Release to production?"
    answer = commands_pb2.OrderCommand(order_id=added.order_id, answer_prompt=commands_pb2.AnswerPrompt())
    response = await deployed.orders.CommandOrders(joc_pb2.CommandOrdersRequest(commands=[answer]))
    assert [r.error for r in response.results] == [""]
    order = await deployed.wait_until_ended(added.order_id)
    assert order.state == S.ORDER_STATE_FINISHED
    assert "released" in await output_of(deployed, added.order_id)
