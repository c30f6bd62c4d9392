"""Fault tests of job execution on subagents, with real processes: a subagent killed -9 and
started again while its job runs, and the director frozen (SIGSTOP) longer and shorter than the
subagents' director timeout.

The jobs keep their own record (a file named by their RECORD env var): each process appends
`START <order> <position> <subagent> <pid> <time> alive=<pids>` when it starts (`alive` lists the
earlier processes of the same order still alive at that moment), `TERM ...` when it gets SIGTERM
and `END ...` when it ends normally. So what ran, where and when is checked from the subagents'
side, not only from the journal.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gen.ostinato.common.v1 import order_pb2, workflow_pb2
from gen.ostinato.joc.v1 import joc_pb2
from ostinato.topology import Topology, TopologyConfig
from tests.integration.support import Joc, eventually

pytestmark = pytest.mark.integration

S = order_pb2.OrderState
K = workflow_pb2.OutcomeKind

JOB = r"""
import os, signal, sys, time
from pathlib import Path

record = Path(os.environ["RECORD"])
order = os.environ["OSTINATO_ORDER_ID"]
position = os.environ["OSTINATO_POSITION"]
subagent = Path.cwd().parent.name  # the subagent runs its jobs in DATA_DIR/<subagent>/work
pid = os.getpid()


def alive(p):
    try:
        state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X", "x")


def append(line):
    with open(record, "a") as f:
        f.write(line + "\n")


earlier = record.read_text().splitlines() if record.exists() else []
others = [
    w[4] for w in (line.split() for line in earlier)
    if w[0] == "START" and w[1] == order and alive(int(w[4]))
]
started_before = any(w[0] == "START" and w[1] == order for w in (line.split() for line in earlier))
append(f"START {order} {position} {subagent} {pid} {time.time():.3f} alive={','.join(others) or '-'}")


def terminated(signum, frame):
    append(f"TERM {order} {position} {subagent} {pid} {time.time():.3f}")
    signal.signal(signum, signal.SIG_DFL)
    os.kill(pid, signum)  # ends by the signal, as an unprepared job would


signal.signal(signal.SIGTERM, terminated)
print("started", flush=True)  # nothing after this on stdout: an orphan must not die of SIGPIPE
# A retry (an earlier start of this order is recorded) may run shorter.
time.sleep(float(os.environ["RETRY_SECONDS" if started_before else "SECONDS"]))
append(f"END {order} {position} {subagent} {pid} {time.time():.3f}")
"""


@dataclass(frozen=True)
class Line:
    what: str
    order: str
    position: str
    subagent: str
    pid: int
    at: float
    alive: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Line:
        what, order, position, subagent, pid, at, *rest = text.split()
        alive: tuple[int, ...] = ()
        if rest and rest[0] != "alive=-":
            alive = tuple(int(p) for p in rest[0].removeprefix("alive=").split(","))
        return cls(what, order, position, subagent, int(pid), float(at), alive)


def records(path: Path) -> list[Line]:
    return [Line.parse(t) for t in path.read_text().splitlines()] if path.exists() else []


def starts(path: Path) -> list[Line]:
    return [line for line in records(path) if line.what == "START"]


def process_alive(pid: int) -> bool:
    """Whether the pid is a live process (a zombie, killed but not yet reaped, is dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X", "x")


def check_never_concurrent(path: Path) -> None:
    """No two processes of one order overlapped: each start saw no earlier one alive, and one that
    ended (END or TERM) ended before the next started."""
    lines = records(path)
    for start in (line for line in lines if line.what == "START"):
        assert start.alive == (), f"{start} started while {start.alive} still ran"
    by_pid = {line.pid: line for line in lines if line.what in ("END", "TERM")}
    runs = [line for line in lines if line.what == "START"]
    for earlier, later in zip(runs, runs[1:], strict=False):
        if earlier.order == later.order and earlier.pid in by_pid:
            assert by_pid[earlier.pid].at <= later.at, f"{later} started before {by_pid[earlier.pid]}"


@dataclass
class Setup:
    topology: Topology
    joc: Joc
    record: Path
    job_script: Path


@pytest.fixture
def director_timeout() -> float:
    return 10.0


@pytest.fixture
def topology(tmp_path: Path, director_timeout: float) -> Iterator[Topology]:
    config = TopologyConfig.ephemeral()
    config.director_timeout_s = director_timeout
    topo = Topology(tmp_path / "topology", config)
    topo.start()
    try:
        yield topo
    finally:
        for launched in topo.services.values():
            if launched.alive():
                launched.resume()  # a paused service would not stop
        topo.stop()
        for name, launched in topo.services.items():
            if launched.process.returncode not in (0, -9, None):
                print(f"===== {name} log\n{launched.log_text()[-4000:]}")


@pytest.fixture
async def setup(topology: Topology, tmp_path: Path) -> AsyncIterator[Setup]:
    job_script = tmp_path / "job.py"
    job_script.write_text(JOB)
    channel = topology.channel(topology.joc_address)
    yield Setup(topology, Joc.connect(channel), tmp_path / "record.txt", job_script)
    await channel.close()
    # Whatever a failed test left running must not outlive it.
    for line in starts(tmp_path / "record.txt"):
        if process_alive(line.pid):
            os.kill(line.pid, signal.SIGKILL)


def job(s: Setup, seconds: float) -> dict:
    env = {"RECORD": f"'{s.record}'", "SECONDS": f"'{seconds}'", "RETRY_SECONDS": "'0.5'"}
    return {
        "agent": "agent-1",
        "executable": {"commandLine": {"argv": [sys.executable, str(s.job_script)], "env": env}},
    }


async def deploy(s: Setup, path: str, seconds: float, retry: bool = False) -> None:
    execute = {"execute": {"jobName": "recorded"}}
    instruction = (
        {
            "tryCatch": {
                "maxTries": 2,
                "retryDelays": ["0.5s"],
                "try": {"instructions": [execute]},
                "catch": {"instructions": [{"retry": {}}]},
            }
        }
        if retry
        else execute
    )
    await s.joc.deploy_workflow(path, {"instructions": [instruction], "jobs": {"recorded": job(s, seconds)}})


async def add_order(s: Setup, path: str) -> str:
    added = await s.joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path=path), timeout=30)
    return added.order_id


async def first_start(s: Setup, order_id: str) -> Line:
    await eventually(lambda: starts(s.record), timeout=30, what="the job started")
    [line] = starts(s.record)
    assert line.order == order_id
    return line


async def events(s: Setup, order_id: str) -> list:
    detail = await s.joc.orders.GetOrder(joc_pb2.GetOrderRequest(order_id=order_id), timeout=30)
    ids = [e.id for e in detail.events]
    assert ids == sorted(set(ids)), "events duplicated or out of order at JOC"
    return list(detail.events)


def kinds(evts: list) -> list[str]:
    return [e.WhichOneof("kind") for e in evts]


def outcomes(evts: list) -> list[int]:
    return [e.order_processed.outcome.kind for e in evts if e.WhichOneof("kind") == "order_processed"]


# 1. A subagent killed -9 while its job runs, then started again.


@pytest.mark.timeout(90)
@pytest.mark.parametrize("retry", [False, True], ids=["no-retry", "retry"])
async def test_subagent_killed_and_restarted_disrupts_its_job(setup: Setup, retry: bool) -> None:
    s = setup
    await deploy(s, "/long", seconds=30, retry=retry)
    order_id = await add_order(s, "/long")
    first = await first_start(s, order_id)
    victim = first.subagent
    assert victim in s.topology.config.subagents, first

    killed_at = time.time()
    s.topology.kill(victim)
    director = s.topology.services["director"]
    await eventually(
        lambda: any(
            f"subagent {victim} at" in x and " lost: " in x for x in director.log_text().splitlines()
        ),
        timeout=15,
        what="the director noticed the subagent is gone",
    )
    s.topology.start_service(victim)
    # The new run kills what the old one left (it recorded the process group) before it listens.
    await eventually(lambda: not process_alive(first.pid), timeout=10, what="the orphaned job killed")
    assert "killed orphan left by a previous run" in s.topology.services[victim].log_text()

    order = await s.joc.wait_until_ended(order_id, timeout=45)
    evts = await events(s, order_id)
    runs = starts(s.record)
    lines = records(s.record)
    assert not [x for x in lines if x.pid == first.pid and x.what != "START"], "the killed job ended normally"
    first_runs = [x for x in runs if x.position == first.position]
    assert len(first_runs) == 1, f"the job at {first.position} started again: {runs}"
    assert outcomes(evts)[0] == K.OUTCOME_KIND_DISRUPTED, evts
    check_never_concurrent(s.record)

    if not retry:
        assert order.state == S.ORDER_STATE_FAILED, order
        assert kinds(evts).count("order_processing_started") == 1, kinds(evts)
        assert outcomes(evts) == [K.OUTCOME_KIND_DISRUPTED], evts
        # It is not re-run later either.
        await asyncio.sleep(1.0)
        assert len(starts(s.record)) == 1, starts(s.record)
        return

    assert order.state == S.ORDER_STATE_FINISHED, order
    assert kinds(evts).count("order_processing_started") == 2, kinds(evts)
    assert outcomes(evts) == [K.OUTCOME_KIND_DISRUPTED, K.OUTCOME_KIND_SUCCEEDED], evts
    [second] = [x for x in runs if x.position != first.position]
    assert second.at > killed_at, (second, killed_at)
    assert first.pid not in second.alive, "the retry started while the killed process still ran"
    assert [x.what for x in lines if x.pid == second.pid] == ["START", "END"], lines


# 2. The director frozen longer than the subagents' director timeout.


@pytest.mark.timeout(90)
@pytest.mark.parametrize("director_timeout", [2.0])
async def test_director_paused_beyond_timeout_subagent_kills_the_job(setup: Setup) -> None:
    s = setup
    await deploy(s, "/long", seconds=30)
    order_id = await add_order(s, "/long")
    first = await first_start(s, order_id)
    director = s.topology.services["director"]

    paused_at = time.monotonic()
    director.pause()
    try:
        # Session lost after 3 missed heartbeats (3 s), then 2 s without one: about 5 s.
        await eventually(lambda: not process_alive(first.pid), timeout=20, what="the subagent killed the job")
        died_after = time.monotonic() - paused_at
        # Still paused: nothing else starts the job meanwhile.
        await asyncio.sleep(0.5)
        assert len(starts(s.record)) == 1
    finally:
        director.resume()
    print(f"the subagent killed the job {died_after:.1f} s after the director was paused")
    assert died_after >= 2.0, f"the job was killed {died_after:.1f} s after the pause, before the timeout"
    lines = records(s.record)
    assert "END" not in [x.what for x in lines], lines
    assert [x.what for x in lines] == ["START", "TERM"], lines
    log = s.topology.services[first.subagent].log_text()
    assert "director lost: killing process" in log, log[-3000:]

    order = await s.joc.wait_until_ended(order_id, timeout=30)
    assert order.state == S.ORDER_STATE_FAILED, order
    evts = await events(s, order_id)
    assert kinds(evts).count("order_processing_started") == 1, kinds(evts)
    assert kinds(evts).count("order_failed") == 1, kinds(evts)
    assert outcomes(evts) == [K.OUTCOME_KIND_KILLED], evts
    await asyncio.sleep(1.0)
    assert len(starts(s.record)) == 1, "the job ran again after the director returned"
    check_never_concurrent(s.record)


# 3. The director frozen shorter than the timeout.


@pytest.mark.timeout(60)
@pytest.mark.parametrize("director_timeout", [6.0])
async def test_director_paused_briefly_the_job_completes_once(setup: Setup) -> None:
    s = setup
    await deploy(s, "/short", seconds=3)
    order_id = await add_order(s, "/short")
    first = await first_start(s, order_id)
    director = s.topology.services["director"]
    director.pause()
    try:
        await asyncio.sleep(1.5)
        assert process_alive(first.pid), "the job died while the director was paused briefly"
    finally:
        director.resume()

    order = await s.joc.wait_until_ended(order_id, timeout=30)
    assert order.state == S.ORDER_STATE_FINISHED, order
    lines = records(s.record)
    assert [(x.what, x.pid) for x in lines] == [("START", first.pid), ("END", first.pid)], lines
    evts = await events(s, order_id)
    assert kinds(evts).count("order_processing_started") == 1, kinds(evts)
    assert kinds(evts).count("order_processed") == 1, kinds(evts)
    assert outcomes(evts) == [K.OUTCOME_KIND_SUCCEEDED], evts
    assert kinds(evts).count("order_finished") == 1, kinds(evts)
    log = s.topology.services[first.subagent].log_text()
    assert "director lost" not in log, log[-3000:]
