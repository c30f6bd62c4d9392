"""The replicated journal on its own (a real single-node pysyncobj journal on disk)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from controller_svc.core import ControllerState
from gen.ostinato.common.v1 import events_pb2, workflow_pb2
from ostinato.journal.replicated import Journal, Timing
from ostinato.launch import free_port


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
        for i in range(40):  # 40 batches of 64 KB: 2.5 MB, ten times the bound
            lock = workflow_pb2.LockItem(path=f"/lock-{i}-" + "x" * 64 * 1024, limit=1)
            event = state.emit(0, item_deployed=events_pb2.ItemDeployed(lock=lock))
            await journal.submit([event])
        raft_log = journal._raft._SyncObj__raftLog  # type: ignore[attr-defined]  (nothing public tells)
        assert len(raft_log) < 10, f"{len(raft_log)} entries in memory; compaction by bytes did not run"
        assert (tmp_path / "journal" / "journal.snapshot").exists()
        assert journal.committed_id() == 40
    finally:
        journal.close()
