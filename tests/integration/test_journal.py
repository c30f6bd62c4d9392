"""The replicated journal on its own (a real single-node pysyncobj journal on disk)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from controller_svc.core import ControllerState
from gen.ostinato.common.v1 import events_pb2, order_pb2
from ostinato.journal.replicated import Journal, Timing
from ostinato.launch import free_port
from tests.integration.support import eventually


async def test_a_log_of_many_bytes_is_compacted_before_its_entry_count_would(tmp_path: Path) -> None:
    """pysyncobj keeps its whole log in memory: big events (a job's output) must not stay there
    until 5000 entries have gathered."""
    timing = dataclasses.replace(Timing(), compaction_bytes=256 * 1024)
    journal = Journal(
        data_dir=tmp_path / "journal",
        self_address=f"127.0.0.1:{free_port()}",
        partners=[],
        password="p",
        new_state=ControllerState,
        timing=timing,
    )
    try:
        state = await journal.wait_active()
        added = events_pb2.OrderAdded(
            order=order_pb2.Order(id="o", workflow_path="/w", workflow_version_id="v")
        )
        await journal.submit([state.emit(0, "o", order_added=added)])
        for _ in range(40):  # 40 batches of 64 KB of job output: 2.5 MB, ten times the bound
            written = events_pb2.OrderStdWritten(chunk="x" * 64 * 1024)
            event = state.emit(0, events_released=events_pb2.EventsReleased(until_id=state.last_event_id))
            await journal.submit([event, state.emit(0, "o", order_std_written=written)])
        raft_log = journal._raft._SyncObj__raftLog  # type: ignore[attr-defined]  (nothing public tells)
        # Snapshots are written by a child process: the log is cut once one is complete.
        await eventually(lambda: len(raft_log) < 10, timeout=10, what="compaction by bytes")
        assert (tmp_path / "journal" / "journal.snapshot").exists()
        assert journal.committed_id() == 81
    finally:
        journal.close()
