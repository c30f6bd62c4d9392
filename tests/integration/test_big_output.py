"""A job that writes 100 MiB to stdout, through JOC, controller, director and subagents as real
processes: the order finishes, JOC has the whole log, and no service's memory grows with the output.

Memory is each service's peak RSS (VmHWM in /proc/PID/status; VmRSS is sampled as well while the
job runs) against its RSS before the job. Run with -s to see the figures per service.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gen.ostinato.common.v1 import events_pb2, order_pb2
from gen.ostinato.controller.v1 import controller_pb2, controller_pb2_grpc
from gen.ostinato.director.v1 import director_pb2, director_pb2_grpc
from gen.ostinato.joc.v1 import joc_pb2
from ostinato.topology import Topology
from ostinato.workflow.orders import END_STATES
from tests.integration.support import Joc, eventually, shell_job

pytestmark = pytest.mark.integration

MB = 1024 * 1024  # "MB" in this file's figures: 2**20 bytes
SIZE = 100 * MB
LINE = 100  # bytes per line, newline included
# `yes` repeats its line without end; head cuts it at exactly SIZE bytes (a multiple of LINE).
SCRIPT = f"yes {'x' * (LINE - 1)} | head -c {SIZE}"

# Bounds on the growth of each service's peak RSS over its RSS before the job; none depends on SIZE.
# A subagent keeps at most BUFFER_LIMIT (4 MiB, subagent_svc/server.py) of output the director has
# not acknowledged, read in 32 KiB pieces; measured: +5 MB at 25 to 800 MiB of output.
SUBAGENT_BOUND = 60 * MB
# Director, controller and JOC: what the flow-control bounds add up to (see the test), several
# copies of a 1 MB batch, a snapshot of at most the 8 MB backlog, 16 MB of Raft log before it is
# compacted, and the mapped journal file. Measured: +110..+140 MB for 100 and for 200 MiB of output.
BATCH_BOUND = 200 * MB
# JOC serving GetOrderLog: a read that streams from the database holds a few stored chunks of at
# most 32 KiB at a time.
LOG_BOUND = 60 * MB


class OutputHeldInMemory(AssertionError):
    """A service's memory grew with the job's output."""


def memory(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of a process, in bytes."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            figures[key] = int(value.split()[0]) * 1024
    return figures


def mapped_rss(pid: int, path: Path) -> int:
    """Resident bytes of the process's mappings of `path`."""
    total, inside = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            inside = len(fields) >= 6 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total


def reset_peak(pid: int) -> bool:
    """Resets VmHWM to the current RSS (Linux: 5 > /proc/PID/clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _mb(n: float) -> str:
    return f"{n / MB:7.1f}"


# What keeps it bounded (all measured with this test): output is flow-controlled end to end. A
# director stops acknowledging a subagent's output, and a controller stops reading its director,
# while more than OUTPUT_BACKLOG (8 MB, ostinato/journal/shell.py) of output waits for its
# receiver's release; JOC releases after every 4 MB of output (RELEASE_BYTES); batches are at most
# 1 MB (EventLog.after, the director's subagent batches) and 8 MB may wait for Raft
# (MAX_BYTES_IN_FLIGHT); the journal compacts every 16 MB (Timing.compaction_bytes); GetOrderLog
# reads the database in pages. Before that the director grew by +366..+759 MB and the controller
# by +534..+1103 MB for 100 MiB. Now: director +139, controller +110, JOC +16 MB for 100 MiB, and
# about the same for 200 MiB (+142, +130): the peak is what the bounds above add up to, with
# Python's and glibc's overhead, not the output.
@pytest.mark.timeout(90)
async def test_100_mib_of_stdout_finishes_with_full_log_and_bounded_memory(
    topology: Topology, joc: Joc
) -> None:
    await joc.deploy_workflow(
        "/big", {"instructions": [{"execute": {"jobName": "big"}}], "jobs": {"big": shell_job(SCRIPT)}}
    )
    await joc.deploy_workflow(
        "/small",
        {"instructions": [{"execute": {"jobName": "small"}}], "jobs": {"small": shell_job("echo hi")}},
    )
    # One small order first: each service has then run every code path the big one takes (imports,
    # streams, SQL statements, first journal entries), so the baseline holds what is not output.
    warm = await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/small"))
    await joc.wait_until_ended(warm.order_id)
    pids = {name: launched.process.pid for name, launched in topology.services.items()}
    baseline = {name: memory(pid)["VmRSS"] for name, pid in pids.items()}
    sampled = dict(baseline)

    added = await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/big"))
    order = order_pb2.Order()

    async def ended() -> bool:
        nonlocal order
        for name, pid in pids.items():
            sampled[name] = max(sampled[name], memory(pid)["VmRSS"])
        # GetOrder, not WatchOrder: it leaves the output out, so this test's reading adds nothing
        # to JOC's memory (a watcher's queue at JOC would hold what it has not read yet).
        order = (await joc.orders.GetOrder(joc_pb2.GetOrderRequest(order_id=added.order_id))).summary.order
        return order.state in END_STATES

    took = await eventually(ended, timeout=60, what="the end of the 100 MiB order")
    assert order.state == order_pb2.ORDER_STATE_FINISHED, order
    now = {name: memory(pid) for name, pid in pids.items()}
    peak = {name: max(now[name]["VmHWM"], sampled[name]) for name in pids}
    journals = {}
    for name in ("director", "controller"):
        journal = topology.data_dir / name / "journal" / "journal.raft"
        journals[name] = (journal.stat().st_blocks * 512, mapped_rss(pids[name], journal))

    # The whole log, counted chunk by chunk (not kept here), with JOC's peak while it serves it.
    log_baseline = memory(pids["joc"])["VmRSS"]
    peak_reset = reset_peak(pids["joc"])
    size = lines = 0
    async for chunk in joc.orders.GetOrderLog(joc_pb2.GetOrderLogRequest(order_id=added.order_id)):
        assert chunk.stream == events_pb2.STD_STREAM_STDOUT, chunk.stream
        size += len(chunk.chunk.encode())
        lines += chunk.chunk.count("\n")
    log_peak = memory(pids["joc"])["VmHWM"] if peak_reset else peak["joc"]

    overviews = await _overviews(topology)
    print(f"\n100 MiB of stdout: order finished in {took:.1f} s; log at JOC {size} bytes, {lines} lines")
    print(
        f"{'service':<12}{'before MB':>10}{'peak MB':>9}{'growth MB':>10}{'RSS now':>9}{'anon':>8}{'file':>8}"
    )
    for name in pids:
        print(
            f"{name:<12}{_mb(baseline[name]):>10}{_mb(peak[name]):>9}{_mb(peak[name] - baseline[name]):>10}"
            f"{_mb(now[name]['VmRSS']):>9}{_mb(now[name]['RssAnon']):>8}{_mb(now[name]['RssFile']):>8}"
        )
    for name, (on_disk, resident) in journals.items():
        last, released = overviews[name]
        end = memory(pids[name])
        # Released events have left the EventLog; what stays is the journal's, until compaction.
        print(
            f"{name}: journal.raft {_mb(on_disk).strip()} MB on disk, {_mb(resident).strip()} MB of it"
            f" resident in the process; events {last}, released until {released}; RSS at the end"
            f" {_mb(end['VmRSS']).strip()} MB (anon {_mb(end['RssAnon']).strip()})"
        )
    print(
        f"joc serving GetOrderLog: RSS before {_mb(log_baseline).strip()} MB, peak {_mb(log_peak).strip()} MB"
        + ("" if peak_reset else " (VmHWM not resettable here: the peak since start)")
    )

    assert size == SIZE and lines == SIZE // LINE, (size, lines)
    for name in topology.config.subagents:
        assert peak[name] - baseline[name] < SUBAGENT_BOUND, (name, peak[name], baseline[name])
    assert peak["joc"] - baseline["joc"] < BATCH_BOUND, (peak["joc"], baseline["joc"])
    grown = [
        f"{name} +{(peak[name] - baseline[name]) / MB:.0f} MB"
        for name in ("director", "controller")
        if peak[name] - baseline[name] >= BATCH_BOUND
    ]
    if log_peak - log_baseline >= LOG_BOUND:
        grown.append(f"joc serving GetOrderLog +{(log_peak - log_baseline) / MB:.0f} MB")
    print("grown with the output: " + (", ".join(grown) or "nothing"))
    if grown:
        raise OutputHeldInMemory(f"peak RSS grew with {SIZE // MB} MiB of output: {', '.join(grown)}")


async def _overviews(topology: Topology) -> dict[str, tuple[int, int]]:
    """Last event id and released-until id of director and controller: what their EventLogs hold."""
    director = topology.channel(topology.addresses["director"], as_name="controller")
    controller = topology.channel(topology.addresses["controller"], as_name="joc")
    try:
        d = await director_pb2_grpc.DirectorServiceStub(director).GetOverview(
            director_pb2.GetOverviewRequest()
        )
        c = await controller_pb2_grpc.ControllerServiceStub(controller).GetOverview(
            controller_pb2.GetOverviewRequest()
        )
    finally:
        await director.close()
        await controller.close()
    return {
        "director": (d.last_event_id, d.released_until_id),
        "controller": (c.last_event_id, c.released_until_id),
    }


@pytest.mark.timeout(90)
async def test_a_job_printing_much_while_joc_is_away_is_not_held_up(topology: Topology, joc: Joc) -> None:
    """Flow control holds producers back only while the receiver keeps releasing: with JOC down,
    a job printing more than the backlog bound (8 MB) still runs to its end, and JOC gets the
    whole log when it is back."""
    size = 24 * MB
    gate, done = topology.data_dir / "gate", topology.data_dir / "done"
    script = (
        f"while [ ! -e {gate} ]; do sleep 0.05; done; yes {'x' * (LINE - 1)} | head -c {size}; touch {done}"
    )
    await joc.deploy_workflow(
        "/away", {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job(script)}}
    )
    added = await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/away"))
    await joc.wait_for(added.order_id, "order_processing_started")
    topology.services["joc"].stop()
    gate.touch()
    took = await eventually(done.exists, timeout=40, what="the job's end while JOC is down")
    print(f"\n{size // MB} MiB printed with JOC down in {took:.1f} s")
    topology.start_service("joc")
    async with topology.channel(topology.joc_address) as channel:
        back = Joc.connect(channel)
        order = await back.wait_until_ended(added.order_id, timeout=30)
        assert order.state == order_pb2.ORDER_STATE_FINISHED
        logged = 0
        async for chunk in back.orders.GetOrderLog(joc_pb2.GetOrderLogRequest(order_id=added.order_id)):
            logged += len(chunk.chunk)
        assert logged == size


@pytest.mark.timeout(90)
async def test_a_slow_follower_of_a_busy_log_gets_all_of_it_in_order(topology: Topology, joc: Joc) -> None:
    """`order logs -f` by a reader slower than the job: JOC does not buffer for it without end
    (Hub's SUBSCRIBER_BACKLOG), it reads what it missed from the database, and the log arrives
    whole and in order."""
    count = 2_000_000  # numbered lines, about 15 MB: more chunks than JOC holds for a reader
    await joc.deploy_workflow(
        "/numbers",
        {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job(f"seq 1 {count}")}},
    )
    added = await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/numbers"))
    text = []
    follow = joc.orders.GetOrderLog(joc_pb2.GetOrderLogRequest(order_id=added.order_id, follow=True))
    async for chunk in follow:
        if not text:
            # Slow at first, so that the job's output piles up behind this reader.
            await joc.wait_until_ended(added.order_id, timeout=60)
        text.append(chunk.chunk)
    assert "".join(text) == "".join(f"{i}\n" for i in range(1, count + 1))
