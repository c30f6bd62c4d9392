"""Helpers for integration tests: a JOC client that deploys and follows orders."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from gen.ostinato.common.v1 import items_pb2, order_pb2
from gen.ostinato.joc.v1 import joc_pb2, joc_pb2_grpc
from ostinato.topology import Topology, TopologyConfig
from ostinato.workflow.orders import END_STATES


@contextlib.contextmanager
def running(data_dir: Path, config: TopologyConfig) -> Iterator[Topology]:
    """A topology started for a test, stopped after it; the log of each service that failed (not
    one a test killed) is printed, where pytest shows it."""
    topo = Topology(data_dir, config)
    topo.start()
    try:
        yield topo
    finally:
        topo.stop()
        for name, launched in topo.services.items():
            if launched.process.returncode not in (0, -9, None):
                print(f"===== {name} log\n{launched.log_text()[-4000:]}")


@dataclass
class Joc:
    channel: grpc.aio.Channel
    inventory: joc_pb2_grpc.InventoryServiceStub
    deployment: joc_pb2_grpc.DeploymentServiceStub
    orders: joc_pb2_grpc.OrderServiceStub

    @classmethod
    def connect(cls, channel: grpc.aio.Channel) -> Joc:
        return cls(
            channel,
            joc_pb2_grpc.InventoryServiceStub(channel),
            joc_pb2_grpc.DeploymentServiceStub(channel),
            joc_pb2_grpc.OrderServiceStub(channel),
        )

    async def deploy_workflow(self, path: str, workflow: dict) -> joc_pb2.Deployment:
        return await self.deploy(path, items_pb2.ITEM_TYPE_WORKFLOW, workflow)

    async def deploy(self, path: str, item_type: int, value: dict) -> joc_pb2.Deployment:
        await self.inventory.PutObject(
            joc_pb2.PutObjectRequest(path=path, type=item_type, json=json.dumps(value))  # type: ignore[arg-type]
        )
        response = await self.deployment.Deploy(joc_pb2.DeployRequest(paths=[path]))
        assert [d.status for d in response.deployments] == [joc_pb2.DEPLOYMENT_STATUS_DEPLOYED], response
        return response.deployments[0]

    async def wait_for(self, order_id: str, kind: str, timeout: float = 30) -> order_pb2.Order:
        """Follows the order's events until one of `kind` (or the order's end) arrives."""

        async def follow() -> order_pb2.Order:
            order = order_pb2.Order()
            async for r in self.orders.WatchOrder(joc_pb2.WatchOrderRequest(order_id=order_id)):
                order = r.order
                if r.event.WhichOneof("kind") == kind:
                    return order
            return order

        return await asyncio.wait_for(follow(), timeout)

    async def wait_until_ended(self, order_id: str, timeout: float = 30) -> order_pb2.Order:
        order = await self.wait_for(order_id, "order_finished", timeout)
        assert order.state in END_STATES, order
        return order


def shell_job(script: str, agent: str = "agent-1", **env: str) -> dict:
    return {"agent": agent, "executable": {"shellScript": {"script": script, "env": env}}}


async def eventually(check: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> float:
    """Polls `check` (plain or async) until it holds: a deadline, not a guess of how long things
    take. Returns how long it took."""
    started = time.monotonic()
    while not await _holds(check):
        assert time.monotonic() - started < timeout, f"{what} not met within {timeout} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def _holds(check: Callable[[], object]) -> bool:
    result = check()
    return bool(await result) if inspect.isawaitable(result) else bool(result)


def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> float:
    """`eventually` for synchronous tests."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"{what} not met within {timeout} s"
        time.sleep(0.02)
    return time.monotonic() - started
