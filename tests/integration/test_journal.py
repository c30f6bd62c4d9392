"""The replicated journal on its own (a real pysyncobj journal on disk), and its Raft port."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

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


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # The kernel prints each 32-bit word in host (little-endian) order.
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(str(ipaddress.ip_address(words)))
    return found


async def test_the_raft_port_listens_on_the_cluster_files_address_only(tmp_path: Path) -> None:
    """pysyncobj's peers speak pickle: its port must not face every interface (it binds 0.0.0.0
    unless told)."""
    port = free_port()
    journal = Journal(
        data_dir=tmp_path / "journal",
        self_address=f"127.0.0.1:{port}",
        partners=[f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"],
        password="p",
        new_state=ControllerState,
    )
    try:
        await eventually(lambda: listening_addresses(port), what="the raft port listening")
        assert listening_addresses(port) == {"127.0.0.1"}
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", port), timeout=5).close()
    finally:
        journal.close()


def test_a_cluster_node_refuses_to_start_without_the_cluster_password(tmp_path: Path) -> None:
    nodes = [
        {"name": n, "address": f"127.0.0.1:{free_port()}", "raft": f"127.0.0.1:{free_port()}"} for n in "abc"
    ]
    (tmp_path / "cluster.json").write_text(json.dumps({"nodes": nodes}))
    done = subprocess.run(
        [sys.executable, "-m", "controller_svc", "--cluster", str(tmp_path / "cluster.json"), "--node", "a"]
        + ["--data-dir", str(tmp_path / "a"), "--insecure"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "--cluster-password is required" in done.stderr, done.stderr
