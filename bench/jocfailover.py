"""Take-over time of a two-instance JOC cluster while orders and deployments keep coming.

Two JOC instances share a fresh PostgreSQL database (created for the run, dropped after); one
controller, one director, one subagent; a trivial one-job workflow is deployed. The whole time:

- orders: CLI_PARALLEL loops each run `python -m ostinato.cli order add /bench/jocfailover/trivial
  --joc A,B` one after another. The CLI follows the active instance and retries UNAVAILABLE within
  its 60 s deadline; a run that exits non-zero counts as a client error (its stderr is kept), the
  order id a run printed is remembered.
- deployments: every DEPLOY_INTERVAL_S a workflow whose script text changes each time is put into
  the inventory and deployed over gRPC (PutObject, Deploy), following the active instance: the
  address a passive one names, the other instance when it names none or does not answer. One that
  is not deployed within DEPLOY_DEADLINE_S counts as a deploy error.

Per kill: the active instance is found with ClusterService.GetJocStatus, the other one must report
PASSIVE and its process run; then SIGKILL at t0. A prober writes to both addresses (AddOrder with a
fresh order id, PROBE_TIMEOUT_S each) every PROBE_INTERVAL_S, each call a task of its own, from t0
on: takeover_ms is t0 until the answer of the first write the surviving instance accepted (a client
that polls this fast sees the cluster writable again then). lease_ms, for comparison, is t0 until
the survivor's log line "is active (epoch N)". The killed instance is then started again (same
data dir, same address) and the next kill waits until it reports PASSIVE, SETTLE_S more so that
the active instance's lease is fresh, and until both flows got an answer again (no backlog).

At the end every order id the CLI printed is looked up at JOC (GetOrder, retried for up to
LOOKUP_WAIT_S while JOC's projection catches up): one not found is a lost order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from gen.ostinato.common.v1 import items_pb2
from gen.ostinato.joc.v1 import joc_pb2, joc_pb2_grpc
from ostinato import rpc
from ostinato.topology import ROOT, Topology, TopologyConfig

PG_HOST = os.environ.get("OSTINATO_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("OSTINATO_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("OSTINATO_TEST_PG_USER", "postgres")

ORDERS_PATH = "/bench/jocfailover/trivial"
CHANGING_PATH = "/bench/jocfailover/changing"
GOAL = "median < 3000 ms, max < 5000 ms, 0 client errors"
CLI_PARALLEL = 2
CLI_TIMEOUT_S = 90.0  # the CLI's own deadline is 60 s
DEPLOY_INTERVAL_S = 1.0
DEPLOY_DEADLINE_S = 30.0
CALL_TIMEOUT_S = 5.0
PROBE_INTERVAL_S = 0.02
PROBE_TIMEOUT_S = 1.0
PROBES_IN_FLIGHT = 10  # per address
STATUS_TIMEOUT_S = 1.0
TAKEOVER_TIMEOUT_S = 30.0
HEAL_TIMEOUT_S = 60.0
SETTLE_S = 3.0
LOOKUP_WAIT_S = 30.0
ACTIVE = joc_pb2.JOC_ROLE_ACTIVE
PASSIVE = joc_pb2.JOC_ROLE_PASSIVE


def workflow(script: str) -> dict[str, Any]:
    return {
        "instructions": [{"execute": {"jobName": "job"}}],
        "jobs": {"job": {"agent": "agent-1", "executable": {"shellScript": {"script": script}}}},
    }


@dataclass
class Kill:
    victim: str
    survivor: str
    at: str = ""  # wall-clock time of the kill, as the JOC logs write it
    epoch_before: int = 0
    epoch_after: int = 0
    takeover_s: float | None = None  # t0 until the survivor accepted a write
    lease_s: float | None = None  # t0 until the survivor logged "is active"
    probes_refused: int = 0  # probe calls that failed before the first accepted one
    restart_s: float | None = None  # starting the killed instance again until it listens
    passive_s: float | None = None  # ... until it reports PASSIVE
    settle_wait_s: float | None = None  # SETTLE_S and waiting for both flows to answer again
    error: str = ""


@dataclass
class CliRun:
    started: float  # monotonic
    duration_s: float
    returncode: int | None
    order_id: str
    stderr: str


@dataclass
class Flows:
    """What the CLI loops and the deployer did; `answered_*` are the monotonic times of their
    latest answers, for the no-backlog check."""

    cli: list[CliRun] = field(default_factory=list)
    deployments: int = 0
    deploy_errors: list[str] = field(default_factory=list)
    deploy_pending: int = 0
    deploy_durations: list[float] = field(default_factory=list)
    answered_cli: float = 0.0
    answered_deploy: float = 0.0


class Joc:
    """Both instances' aio channels and the instance thought active, for the bench's own calls."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.active = topology.services[topology.joc_names[0]].address

    def channel(self, address: str) -> grpc.aio.Channel:
        if address not in self.channels:
            self.channels[address] = self.topology.channel(address)
        return self.channels[address]

    def addresses(self) -> list[str]:
        return [self.topology.services[n].address for n in self.topology.joc_names]

    async def status(self, address: str | None = None) -> joc_pb2.GetJocStatusResponse | None:
        """GetJocStatus at `address`, else at any instance that answers."""
        for a in [address] if address else [self.active, *self.addresses()]:
            stub = joc_pb2_grpc.ClusterServiceStub(self.channel(a))
            with contextlib.suppress(grpc.aio.AioRpcError):
                return await stub.GetJocStatus(joc_pb2.GetJocStatusRequest(), timeout=STATUS_TIMEOUT_S)
        return None

    async def write(self, call: Callable[[grpc.aio.Channel], Any], deadline_s: float) -> Any:
        """`call`(channel) at the active instance, following it (the address a passive instance
        names, else the other one) until it is answered or `deadline_s` passed."""
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                return await call(self.channel(self.active))
            except grpc.aio.AioRpcError as e:
                if e.code() not in rpc.FOLLOWED or time.monotonic() > deadline:
                    raise
                named = rpc.active_address_of(e)
                others = [a for a in self.addresses() if a != self.active]
                self.active = named or (others[0] if others else self.active)
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.channels.values()), return_exceptions=True)


async def deploy(joc: Joc, path: str, definition: dict[str, Any]) -> joc_pb2.DeployResponse:
    text = json.dumps(definition)

    async def put(channel: grpc.aio.Channel) -> Any:
        return await joc_pb2_grpc.InventoryServiceStub(channel).PutObject(
            joc_pb2.PutObjectRequest(path=path, type=items_pb2.ITEM_TYPE_WORKFLOW, json=text),
            timeout=CALL_TIMEOUT_S,
        )

    async def deploy_it(channel: grpc.aio.Channel) -> Any:
        return await joc_pb2_grpc.DeploymentServiceStub(channel).Deploy(
            joc_pb2.DeployRequest(paths=[path]), timeout=CALL_TIMEOUT_S
        )

    deadline = time.monotonic() + DEPLOY_DEADLINE_S
    await joc.write(put, DEPLOY_DEADLINE_S)
    return await joc.write(deploy_it, max(deadline - time.monotonic(), 0.1))


async def cli_loop(topology: Topology, flows: Flows) -> None:
    """`ostinato order add` one after another, for ever."""
    args = [
        *("-m", "ostinato.cli", "order", "add", ORDERS_PATH),
        *("--joc", topology.joc_addresses, *topology.cli_args()),
    ]
    while True:
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            out, err = await proc.communicate()
            err += f"\n(killed after {CLI_TIMEOUT_S:.0f} s)".encode()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        lines = out.decode().split()
        run = CliRun(
            started,
            time.monotonic() - started,
            proc.returncode,
            lines[0] if lines and proc.returncode == 0 else "",
            err.decode().strip(),
        )
        flows.cli.append(run)
        flows.answered_cli = time.monotonic()


async def deploy_loop(joc: Joc, flows: Flows) -> None:
    """A new version of CHANGING_PATH every DEPLOY_INTERVAL_S."""
    n = 0
    next_at = time.monotonic()
    while True:
        n += 1
        started = time.monotonic()
        try:
            response = await deploy(joc, CHANGING_PATH, workflow(f"echo version {n}"))
            statuses = [d.status for d in response.deployments]
            if statuses == [joc_pb2.DEPLOYMENT_STATUS_DEPLOYED]:
                flows.deployments += 1
            elif response.deployments and all(d.pending for d in response.deployments):
                flows.deployments += 1
                flows.deploy_pending += 1
            else:
                messages = "; ".join(d.message for d in response.deployments)
                flows.deploy_errors.append(f"version {n}: {messages}")
        except grpc.aio.AioRpcError as e:
            flows.deploy_errors.append(f"version {n}: {e.code().name}: {e.details()}")
        flows.deploy_durations.append(time.monotonic() - started)
        flows.answered_deploy = time.monotonic()
        next_at = max(next_at + DEPLOY_INTERVAL_S, time.monotonic())
        await asyncio.sleep(next_at - time.monotonic())


class Prober:
    """AddOrder at one address every PROBE_INTERVAL_S, each call a task of its own, until stopped;
    remembers the first accepted call's answer time and the ids of the orders accepted."""

    def __init__(self, joc: Joc, address: str, tag: str) -> None:
        self.stub = joc_pb2_grpc.OrderServiceStub(joc.channel(address))
        self.tag = tag
        self.first_ok: float | None = None
        self.refused = 0
        self.accepted: list[str] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.count = 0

    async def run(self) -> None:
        while self.first_ok is None:
            if len(self.tasks) < PROBES_IN_FLIGHT:
                self.count += 1
                task = asyncio.create_task(self._probe(f"{self.tag}-{self.count:04d}"))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def _probe(self, order_id: str) -> None:
        try:
            await self.stub.AddOrder(
                joc_pb2.AddOrderRequest(workflow_path=ORDERS_PATH, order_id=order_id), timeout=PROBE_TIMEOUT_S
            )
        except grpc.aio.AioRpcError:
            if self.first_ok is None:
                self.refused += 1
            return
        self.accepted.append(order_id)
        if self.first_ok is None:
            self.first_ok = time.monotonic()

    async def drain(self) -> None:
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=PROBE_TIMEOUT_S + 1)


def _role(status: joc_pb2.GetJocStatusResponse | None, name: str) -> int:
    if status is None:
        return joc_pb2.JOC_ROLE_UNSPECIFIED
    return next((i.role for i in status.instances if i.id == name), joc_pb2.JOC_ROLE_UNSPECIFIED)


async def wait_pair(topology: Topology, joc: Joc, timeout: float = HEAL_TIMEOUT_S) -> tuple[str, str, int]:
    """Waits until one instance reports ACTIVE and the other PASSIVE with its process running;
    returns (active, passive, epoch)."""
    deadline = time.monotonic() + timeout
    while True:
        status = await joc.status()
        if status is not None and status.active_instance in topology.joc_names:
            active = status.active_instance
            others = [n for n in topology.joc_names if n != active]
            if (
                all(
                    _role(status, n) == PASSIVE and topology.services[n].process.poll() is None
                    for n in others
                )
                and _role(status, active) == ACTIVE
            ):
                joc.active = topology.services[active].address
                return active, others[0], status.epoch
        if time.monotonic() > deadline:
            raise TimeoutError(f"no active and passive JOC instance within {timeout:.0f} s: {status}")
        await asyncio.sleep(0.1)


def _log_time(line: str) -> float | None:
    try:
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return None


def role_lines(topology: Topology) -> list[str]:
    """The JOC logs' lines about roles and the lease, oldest first."""
    lines = []
    for name in topology.joc_names:
        path = topology.data_dir / name / "joc.log"
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text(errors="replace").splitlines():
                if any(
                    m in line
                    for m in (" is active (epoch", " is passive now", "does not answer", "gave up the lease")
                ):
                    lines.append(line)
    return sorted(lines)


def lease_taken(topology: Topology, survivor: str, after_wall: float) -> float | None:
    """Wall-clock time of the survivor's first "is active" line after `after_wall`."""
    for line in role_lines(topology):
        if f"instance {survivor} is active" in line and (t := _log_time(line)) is not None and t > after_wall:
            return t
    return None


async def kill_once(topology: Topology, joc: Joc, flows: Flows, number: int) -> tuple[Kill, list[str]]:
    victim, survivor, epoch = await wait_pair(topology, joc)
    kill = Kill(victim, survivor, epoch_before=epoch)
    addresses = {n: topology.services[n].address for n in (victim, survivor)}
    probers = {n: Prober(joc, a, f"probe-{number:02d}-{n}") for n, a in addresses.items()}
    await joc.status(addresses[survivor])  # the survivor's channel connected before t0
    t0_wall, t0 = time.time(), time.monotonic()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0_wall))
    kill.at = stamp + f",{int(t0_wall * 1000) % 1000:03d}"
    topology.kill(victim)
    tasks = [asyncio.create_task(p.run()) for p in probers.values()]
    survivor_probe = probers[survivor]
    try:
        while survivor_probe.first_ok is None:
            if time.monotonic() - t0 > TAKEOVER_TIMEOUT_S:
                raise TimeoutError(f"{survivor} accepted no write within {TAKEOVER_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.005)
        kill.takeover_s = survivor_probe.first_ok - t0
        kill.probes_refused = survivor_probe.refused
    except TimeoutError as e:
        kill.error = str(e)
    finally:
        for p in probers.values():
            p.first_ok = p.first_ok or time.monotonic()  # ends its loop
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(p.drain() for p in probers.values()))
    accepted = [oid for p in probers.values() for oid in p.accepted]
    if probers[victim].accepted:
        kill.error += f" the killed instance {victim} accepted {len(probers[victim].accepted)} writes?"
    status = await joc.status(addresses[survivor])
    kill.epoch_after = status.epoch if status is not None else 0
    restarted = time.monotonic()
    await asyncio.to_thread(topology.start_service, victim)
    kill.restart_s = time.monotonic() - restarted
    try:
        await wait_pair(topology, joc)
        kill.passive_s = time.monotonic() - restarted
        taken = lease_taken(topology, survivor, t0_wall - 0.5)
        kill.lease_s = None if taken is None else taken - t0_wall
        settle = time.monotonic()
        await asyncio.sleep(SETTLE_S)
        while min(flows.answered_cli, flows.answered_deploy) < settle:
            if time.monotonic() - settle > HEAL_TIMEOUT_S:
                raise TimeoutError("the order and deployment flows did not answer again")
            await asyncio.sleep(0.05)
        kill.settle_wait_s = time.monotonic() - settle
    except TimeoutError as e:
        kill.error += f" {e}"
    return kill, accepted


async def lookup(joc: Joc, order_ids: list[str]) -> list[str]:
    """The ids JOC does not know, after waiting up to LOOKUP_WAIT_S for its projection."""
    missing = list(order_ids)
    deadline = time.monotonic() + LOOKUP_WAIT_S
    while missing:
        still = []
        for order_id in missing:

            async def get(channel: grpc.aio.Channel, order_id: str = order_id) -> Any:
                return await joc_pb2_grpc.OrderServiceStub(channel).GetOrder(
                    joc_pb2.GetOrderRequest(order_id=order_id), timeout=CALL_TIMEOUT_S
                )

            try:
                await joc.write(get, CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                still.append(order_id)
        missing = still
        if not missing or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    return missing


async def measure(topology: Topology, kills: int, parallel: int, log: Any) -> dict[str, Any]:
    joc = Joc(topology)
    flows = Flows()
    response = await deploy(joc, ORDERS_PATH, workflow("true"))
    assert [d.status for d in response.deployments] == [joc_pb2.DEPLOYMENT_STATUS_DEPLOYED], response
    flow_tasks = [asyncio.create_task(cli_loop(topology, flows)) for _ in range(parallel)]
    flow_tasks.append(asyncio.create_task(deploy_loop(Joc(topology), flows)))
    done: list[Kill] = []
    probe_orders: list[str] = []
    try:
        while not (any(r.returncode == 0 for r in flows.cli) and flows.deployments):
            if any(t.done() for t in flow_tasks):
                break
            await asyncio.sleep(0.1)
        for i in range(kills):
            kill, accepted = await kill_once(topology, joc, flows, i + 1)
            done.append(kill)
            probe_orders += accepted
            log(
                f"  kill {i + 1}/{kills}: {kill.victim} (epoch {kill.epoch_before}) -> {kill.survivor}"
                f" (epoch {kill.epoch_after})  write accepted {_ms(kill.takeover_s)}"
                f" (lease taken {_ms(kill.lease_s)}, {kill.probes_refused} probes refused)"
                f"  restarted {_ms(kill.restart_s)}, passive {_ms(kill.passive_s)}"
                f"  [orders so far {sum(1 for r in flows.cli if r.returncode == 0)},"
                f" client errors {sum(1 for r in flows.cli if r.returncode != 0)},"
                f" deployments {flows.deployments}, deploy errors {len(flows.deploy_errors)}]"
                + (f"  ERROR {kill.error.strip()}" if kill.error else "")
            )
    finally:
        for t in flow_tasks:
            t.cancel()
        flow_errors = [
            repr(r)
            for r in await asyncio.gather(*flow_tasks, return_exceptions=True)
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
        ]
    await wait_pair(topology, joc)
    cli_ids = [r.order_id for r in flows.cli if r.returncode == 0 and r.order_id]
    lost = await lookup(joc, cli_ids)
    lost_probes = await lookup(joc, probe_orders)
    await joc.close()
    failed_cli = [r for r in flows.cli if r.returncode != 0]
    takeovers = [k.takeover_s for k in done if k.takeover_s is not None]
    leases = [k.lease_s for k in done if k.lease_s is not None]
    cli_durations = [r.duration_s for r in flows.cli if r.returncode == 0]
    return {
        "kills": len(done),
        "median_ms": _round_ms(statistics.median(takeovers)) if takeovers else None,
        "max_ms": _round_ms(max(takeovers)) if takeovers else None,
        "min_ms": _round_ms(min(takeovers)) if takeovers else None,
        "takeovers_ms": [_round_ms(t) for t in takeovers],
        "failed_kills": sum(1 for k in done if k.error),
        "lease_taken_median_ms": _round_ms(statistics.median(leases)) if leases else None,
        "lease_taken_max_ms": _round_ms(max(leases)) if leases else None,
        "client_orders": len(cli_ids),
        "client_errors": len(failed_cli),
        "client_error_stderr": [f"rc {r.returncode}: {r.stderr[-500:]}" for r in failed_cli[:10]],
        "client_order_add_median_ms": _round_ms(statistics.median(cli_durations)) if cli_durations else None,
        "client_order_add_max_ms": _round_ms(max(cli_durations)) if cli_durations else None,
        "cli_parallel": parallel,
        "lost_orders": len(lost),
        "lost_order_ids": lost[:20],
        "probe_orders_accepted": len(probe_orders),
        "lost_probe_orders": len(lost_probes),
        "deployments": flows.deployments,
        "deploy_errors": len(flows.deploy_errors),
        "deploy_pending": flows.deploy_pending,
        "deploy_error_messages": flows.deploy_errors[:10],
        "deploy_max_ms": _round_ms(max(flows.deploy_durations)) if flows.deploy_durations else None,
        "flow_task_errors": flow_errors,
        "goal": GOAL,
        "goal_met": bool(takeovers)
        and len(takeovers) == len(done)
        and statistics.median(takeovers) < 3.0
        and max(takeovers) < 5.0
        and not failed_cli
        and not lost,
        "each": [{k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(k).items()} for k in done],
        "joc_role_log": role_lines(topology),
    }


def _round_ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f} ms"


def _pg(dbname: str = "postgres") -> Any:
    import psycopg

    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, autocommit=True, connect_timeout=3
    )


def run(
    kills: int, data_dir: Path | None = None, parallel: int = CLI_PARALLEL, log: Any = print
) -> dict[str, Any]:
    """Creates a database, starts the topology in data_dir (a temporary one unless given, kept when
    given), measures `kills` take-overs and returns the figures; drops the database after."""
    name = f"ostinato_bench_{secrets.token_hex(4)}"
    with _pg() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        with tempfile.TemporaryDirectory(prefix="ostinato-bench-jocfailover-") as tmp:
            config = TopologyConfig.ephemeral(subagents=1)
            config.joc_instances = 2
            config.db_url = f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
            topology = Topology(data_dir or Path(tmp), config)
            started = time.perf_counter()
            topology.start()
            startup_s = time.perf_counter() - started
            try:
                result = asyncio.run(measure(topology, kills, parallel, log))
            finally:
                topology.stop()
    finally:
        with _pg() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    log(
        f"  take-over (first write accepted after kill -9): median {result['median_ms']} ms,"
        f" max {result['max_ms']} ms, min {result['min_ms']} ms over {result['kills']} kills;"
        f" client errors {result['client_errors']} of {result['client_orders'] + result['client_errors']}"
        f" CLI runs, lost orders {result['lost_orders']}, deployments {result['deployments']}"
        f" (errors {result['deploy_errors']}); goal {GOAL}: {'met' if result['goal_met'] else 'MISSED'}"
    )
    return {"topology_startup_s": round(startup_s, 2), **result}
