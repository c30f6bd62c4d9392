"""`ostinato up` runs the topology in the foreground and stops all of it on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ostinato.topology import ROOT

CONFIG = """
[joc]
listen = "127.0.0.1:0"
[controller]
listen = "127.0.0.1:0"
id = "ctl"
[director]
listen = "127.0.0.1:0"
agent_name = "agent-1"
[[subagents]]
id = "only"
listen = "127.0.0.1:0"
"""


def test_up_prints_addresses_and_stops_everything_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "up.toml").write_text(CONFIG)
    data = tmp_path / "data"
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ostinato.cli",
            "up",
            "--config",
            str(tmp_path / "up.toml"),
            "--data-dir",
            str(data),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    assert up.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while not any(line.strip().startswith("joc ") for line in lines):
        line = up.stdout.readline()
        assert line and time.monotonic() < deadline, "".join(lines)
        lines.append(line)
    assert "ostinato is up" in "".join(lines)
    names = {line.split()[0] for line in lines if line.startswith("  ")}
    assert names == {"only", "director", "controller", "joc"}
    assert _processes_using(data), "the services should be running"

    up.send_signal(signal.SIGTERM)
    out, _ = up.communicate(timeout=30)
    assert up.returncode == 0, out
    assert "stopping" in out
    # Each service stopped by itself (exit 0), and none is left behind.
    for name in ("only", "director", "controller", "joc"):
        assert f"{name} stopped (exit 0)" in out, out
    assert _processes_using(data) == []


def _processes_using(data: Path) -> list[int]:
    """Pids of processes whose command line names the data directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(data) in cmdline and "ostinato.cli" not in cmdline:
                found.append(int(entry.name))
    return found
