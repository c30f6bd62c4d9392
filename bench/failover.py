"""Fail-over time of controller and director clusters while orders keep flowing.

A topology with a three-node controller cluster and a three-node director cluster runs; an order
of a one-job workflow is submitted through JOC every 100 ms without waiting for the previous ones.
The job appends `<wall-clock start> <order id>` to a file. Before each kill the orders must flow
without a backlog (one submitted within the last second has started). Per kill of the active node
(found with ClusterService.GetClusterStatus(local_only=True) at each node, then SIGKILL at t0):

- committed_s: t0 until a surviving node reports itself ACTIVE with a last_event_id beyond the
  highest one seen before the kill (the old active node's just before, the survivors' just after);
  the survivors are polled every 10 ms.
- job_start_s: t0 until the first job start of an order submitted after t0, i.e. one that had to go
  through the surviving nodes (JOC retries AddOrder until the controller answers again).
- job_start_any_s: t0 until the first job start of any order. Orders already handed on to the
  director keep starting while a controller fails over, so for controller kills this mostly shows
  that the agent works on autonomously; it is not a fail-over time.

The killed node is then started again (same address, same journal) and the next kill waits until
all three nodes answer, one active, the restarted one passive and caught up.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from gen.ostinato.common.v1 import cluster_pb2, cluster_pb2_grpc, items_pb2
from gen.ostinato.joc.v1 import joc_pb2, joc_pb2_grpc
from ostinato.topology import Topology, TopologyConfig

KINDS = ("controller", "director")
WORKFLOW_PATH = "/bench/failover"
# 10 orders/s: at 20/s the three-node clusters on a 2-core machine fall behind (the lag from
# submission to job start creeps up by the minute), and a job start then measures the backlog.
ORDER_INTERVAL_S = 0.1
POLL_S = 0.01
STATUS_TIMEOUT_S = 0.25
FAILOVER_TIMEOUT_S = 30.0
HEAL_TIMEOUT_S = 60.0
ADD_TIMEOUT_S = 20.0  # JOC itself gives up on the controller after 15 s
SLOW_ADD_S = 5.0
DRAIN_S = 5.0  # at the end, how long AddOrder calls still open may take before they count as unanswered
ACTIVE = cluster_pb2.NODE_ROLE_ACTIVE
PASSIVE = cluster_pb2.NODE_ROLE_PASSIVE


def workflow(starts: Path) -> dict[str, Any]:
    script = f'echo "$(date +%s.%N) $JS7_ORDER_ID" >> {shlex.quote(str(starts))}'
    return {
        "instructions": [{"execute": {"jobName": "mark"}}],
        "jobs": {
            "mark": {
                "agent": "agent-1",
                "processLimit": 50,
                "executable": {"shellScript": {"script": script}},
            }
        },
    }


@dataclass
class Kill:
    kind: str
    victim: str
    at: str = ""  # wall-clock time of the kill, as the node logs write it
    steady_wait_s: float | None = None  # how long orders took to flow without backlog before it
    new_active: str = ""
    committed_s: float | None = None
    job_start_s: float | None = None
    job_start_any_s: float | None = None
    restart_s: float | None = None
    heal_s: float | None = None
    error: str = ""


class Starts:
    """The job-start file, read incrementally: (wall-clock start, order id) per job start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines: list[tuple[float, str]] = []

    def read(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # complete lines only
        self.offset += end
        for line in data[:end].decode().splitlines():
            stamp, _, order_id = line.strip().partition(" ")
            if stamp:
                self.lines.append((float(stamp), order_id))

    def first_after(self, t0: float, accept: Callable[[str], bool] | None = None) -> float | None:
        found = [t for t, oid in self.lines if t > t0 and (accept is None or accept(oid))]
        return min(found) if found else None


class Feeder:
    """Submits an order through JOC every interval, each call in its own task (JOC holds a call
    while no controller node is active), and remembers when each was submitted."""

    def __init__(self, orders: joc_pb2_grpc.OrderServiceStub, interval: float) -> None:
        self.orders = orders
        self.interval = interval
        self.submitted: dict[str, float] = {}
        self.errors: list[str] = []
        self.slow = 0  # AddOrder calls that took more than SLOW_ADD_S
        self.tasks: set[asyncio.Task[None]] = set()
        self.count = 0

    async def run(self) -> None:
        next_at = time.monotonic()
        while True:
            order_id = f"bench-fo-{self.count:06d}"
            self.count += 1
            self.submitted[order_id] = time.time()
            task = asyncio.create_task(self._add(order_id))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def _add(self, order_id: str) -> None:
        started = time.monotonic()
        try:
            await self.orders.AddOrder(
                joc_pb2.AddOrderRequest(workflow_path=WORKFLOW_PATH, order_id=order_id), timeout=ADD_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as e:
            self.errors.append(f"{order_id}: {e.code().name}: {e.details()}")
        finally:
            if time.monotonic() - started > SLOW_ADD_S:
                self.slow += 1

    def submitted_after(self, t0: float) -> Callable[[str], bool]:
        return lambda order_id: self.submitted.get(order_id, 0.0) > t0

    async def flowing(self, starts: Starts, timeout: float = FAILOVER_TIMEOUT_S) -> float | None:
        """Waits until orders flow without a backlog: an order submitted within the last second
        has started (jobs start in submission order). Returns how long that took, None when the
        backlog did not clear within `timeout`."""
        started = time.monotonic()
        while True:
            starts.read()
            recent = time.time() - 1.0
            if any(self.submitted.get(oid, 0.0) > recent for _, oid in starts.lines[-20:]):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                return None
            await asyncio.sleep(0.05)


class Nodes:
    """ClusterService of each node of one cluster, asked about the node itself only."""

    def __init__(self, topology: Topology, kind: str) -> None:
        self.topology = topology
        self.names = list(topology.nodes[kind])
        # As each node itself: a node accepts its own cluster's nodes.
        self.channels = {n: topology.channel(topology.addresses[n], as_name=n) for n in self.names}

    async def status(self, name: str) -> cluster_pb2.ClusterNode | None:
        stub = cluster_pb2_grpc.ClusterServiceStub(self.channels[name])
        try:
            response = await stub.GetClusterStatus(
                cluster_pb2.GetClusterStatusRequest(local_only=True), timeout=STATUS_TIMEOUT_S
            )
        except grpc.aio.AioRpcError:
            return None
        return response.status.nodes[0]

    async def statuses(self, names: Sequence[str]) -> dict[str, cluster_pb2.ClusterNode | None]:
        answers = await asyncio.gather(*(self.status(n) for n in names))
        return dict(zip(names, answers, strict=True))

    async def reconnect(self, name: str) -> None:
        old = self.channels[name]
        self.channels[name] = self.topology.channel(self.topology.addresses[name], as_name=name)
        await old.close()

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.channels.values()))

    async def healthy(self, caught_up: tuple[str, int] | None = None, timeout: float = HEAL_TIMEOUT_S) -> str:
        """Waits until every node answers, one active and the others passive (and the node
        `caught_up` names has applied at least that event id); returns the active node."""
        deadline = time.monotonic() + timeout
        while True:
            st = await self.statuses(self.names)
            active = [n for n, s in st.items() if s is not None and s.role == ACTIVE]
            passive = [n for n, s in st.items() if s is not None and s.role == PASSIVE]
            ok = len(active) == 1 and len(active) + len(passive) == len(self.names)
            if ok and caught_up is not None:
                node = st[caught_up[0]]
                ok = node is not None and node.last_event_id >= caught_up[1]
            if ok:
                return active[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not whole within {timeout} s: {_brief(st)}")
            await asyncio.sleep(0.05)


def _brief(st: dict[str, cluster_pb2.ClusterNode | None]) -> str:
    return ", ".join(
        f"{n}=" + ("down" if s is None else f"{cluster_pb2.NodeRole.Name(s.role)}@{s.last_event_id}")
        for n, s in st.items()
    )


async def kill_once(topology: Topology, nodes: Nodes, feeder: Feeder, starts: Starts, kind: str) -> Kill:
    steady_wait_s = await feeder.flowing(starts)
    victim = await nodes.healthy()
    before_status = await nodes.status(victim)
    before = before_status.last_event_id if before_status is not None else 0
    survivors = [n for n in nodes.names if n != victim]
    t0_wall, t0 = time.time(), time.monotonic()
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0_wall)) + f",{int(t0_wall * 1000) % 1000:03d}"
    kill = Kill(kind, victim, at, steady_wait_s)
    topology.services[victim].kill()
    # What the survivors applied already was committed before the kill.
    for s in (await nodes.statuses(survivors)).values():
        if s is not None:
            before = max(before, s.last_event_id)
    try:
        while kill.committed_s is None:
            if time.monotonic() - t0 > FAILOVER_TIMEOUT_S:
                raise TimeoutError(f"no committed event within {FAILOVER_TIMEOUT_S} s")
            for name, s in (await nodes.statuses(survivors)).items():
                if s is not None and s.role == ACTIVE and s.last_event_id > before:
                    kill.committed_s, kill.new_active = time.monotonic() - t0, name
                    break
            else:
                await asyncio.sleep(POLL_S)
        new_order = feeder.submitted_after(t0_wall)
        while (first := starts.first_after(t0_wall, new_order)) is None:
            if time.monotonic() - t0 > FAILOVER_TIMEOUT_S:
                raise TimeoutError(f"no job of a new order started within {FAILOVER_TIMEOUT_S} s")
            await asyncio.sleep(POLL_S)
            starts.read()
        await asyncio.sleep(0.05)  # starts a few ms apart may land in the file out of order
        starts.read()
        first = starts.first_after(t0_wall, new_order)
        assert first is not None
        kill.job_start_s = first - t0_wall
        any_first = starts.first_after(t0_wall)
        kill.job_start_any_s = None if any_first is None else any_first - t0_wall
    except TimeoutError as e:
        kill.error = str(e)
    restarted_at = time.monotonic()
    await asyncio.to_thread(topology.start_service, victim)
    kill.restart_s = time.monotonic() - restarted_at
    await nodes.reconnect(victim)
    active_now = await nodes.healthy()
    active_status = await nodes.status(active_now)
    target = active_status.last_event_id if active_status is not None else 0
    await nodes.healthy(caught_up=(victim, target))
    kill.heal_s = time.monotonic() - restarted_at
    return kill


def _stats(values: list[float | None]) -> dict[str, Any]:
    got = [v for v in values if v is not None]
    if not got:
        return {"n": 0}
    return {
        "n": len(got),
        "median_ms": round(statistics.median(got) * 1000, 1),
        "max_ms": round(max(got) * 1000, 1),
    }


def _row(kill: Kill) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(kill).items()}


def summarize(kills: list[Kill]) -> dict[str, Any]:
    return {
        "kills": len(kills),
        "failed": sum(1 for k in kills if k.error),
        "next_committed_event": _stats([k.committed_s for k in kills]),
        "next_job_start_new_order": _stats([k.job_start_s for k in kills]),
        "next_job_start_any_order": _stats([k.job_start_any_s for k in kills]),
        "backlog_wait_before_kill": _stats([k.steady_wait_s for k in kills]),
        "restart_to_listening": _stats([k.restart_s for k in kills]),
        "restart_to_whole_cluster": _stats([k.heal_s for k in kills]),
        "each": [_row(k) for k in kills],
    }


async def measure(
    topology: Topology, kills: int, kinds: Sequence[str], interval: float, log: Any = print
) -> tuple[dict[str, list[Kill]], dict[str, Any]]:
    starts = Starts(topology.data_dir / "job-starts.txt")
    channel = topology.channel(topology.joc_address)
    inventory = joc_pb2_grpc.InventoryServiceStub(channel)
    deployment = joc_pb2_grpc.DeploymentServiceStub(channel)
    await inventory.PutObject(
        joc_pb2.PutObjectRequest(
            path=WORKFLOW_PATH, type=items_pb2.ITEM_TYPE_WORKFLOW, json=json.dumps(workflow(starts.path))
        )
    )
    deployed = await deployment.Deploy(joc_pb2.DeployRequest(paths=[WORKFLOW_PATH]))
    assert [d.status for d in deployed.deployments] == [joc_pb2.DEPLOYMENT_STATUS_DEPLOYED], deployed
    feeder = Feeder(joc_pb2_grpc.OrderServiceStub(channel), interval)
    feeding = asyncio.create_task(feeder.run())
    results: dict[str, list[Kill]] = {}
    all_nodes = {kind: Nodes(topology, kind) for kind in kinds}
    try:
        # Orders flowing before the first kill.
        while starts.first_after(0.0) is None:
            await asyncio.sleep(0.05)
            starts.read()
        await asyncio.sleep(0.5)
        for kind in kinds:
            results[kind] = []
            for i in range(kills):
                kill = await kill_once(topology, all_nodes[kind], feeder, starts, kind)
                results[kind].append(kill)
                log(
                    f"  {kind} kill {i + 1}/{kills}: {kill.victim} -> {kill.new_active or '?'}"
                    f"  committed {_ms(kill.committed_s)}  job start {_ms(kill.job_start_s)}"
                    f" (any order {_ms(kill.job_start_any_s)})  restarted {_ms(kill.restart_s)},"
                    f" whole again {_ms(kill.heal_s)}" + (f"  ERROR {kill.error}" if kill.error else "")
                )
    finally:
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
        if feeder.tasks:
            await asyncio.wait(set(feeder.tasks), timeout=DRAIN_S)
        unanswered = len(feeder.tasks)
        for task in set(feeder.tasks):
            task.cancel()
        for n in all_nodes.values():
            await n.close()
        await channel.close()
    starts.read()
    started: dict[str, int] = {}
    for _, order_id in starts.lines:
        started[order_id] = started.get(order_id, 0) + 1
    orders = {
        "submitted": feeder.count,
        "add_order_errors": len(feeder.errors),
        "add_order_slower_than_5s": feeder.slow,
        "add_order_unanswered_at_end": unanswered,
        "first_add_order_errors": feeder.errors[:3],
        "jobs_started": len(starts.lines),
        "orders_started_twice": sum(1 for c in started.values() if c > 1),
    }
    return results, orders


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f} ms"


def run(
    kills: int,
    kinds: Sequence[str] = KINDS,
    data_dir: Path | None = None,
    shapes: dict[str, str] | None = None,
    interval: float = ORDER_INTERVAL_S,
    log: Any = print,
) -> dict[str, Any]:
    """Starts a topology in data_dir (a temporary one unless given, kept when given), measures
    `kills` fail-overs of each kind in turn, and returns the figures."""
    import tempfile

    shapes = {"controller": "three", "director": "three", **(shapes or {})}
    for kind in kinds:
        if shapes[kind] != "three":
            raise ValueError(f"killing {kind} nodes needs a three-node {kind} cluster")
    with tempfile.TemporaryDirectory(prefix="ostinato-bench-failover-") as tmp:
        where = data_dir or Path(tmp)
        config = TopologyConfig.ephemeral()
        config.controller_cluster = shapes["controller"]
        config.director_cluster = shapes["director"]
        topology = Topology(where, config)
        started = time.perf_counter()
        topology.start()
        startup_s = time.perf_counter() - started
        try:
            results, orders = asyncio.run(measure(topology, kills, kinds, interval, log))
        finally:
            topology.stop()
    return {
        "clusters": {k: shapes[k] for k in ("controller", "director")},
        "order_interval_ms": round(interval * 1000),
        "topology_startup_s": round(startup_s, 2),
        **{kind: summarize(k) for kind, k in results.items()},
        "orders": orders,
    }
