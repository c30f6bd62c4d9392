"""`ostinato up` runs the topology in the foreground, with mutual TLS by default (the CLI finds its
certificate in the data directory), and stops all of it on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    data = tmp_path / ".ostinato"  # the default data directory, in the working directory
    # As an operator's shell: no test CA for the CLI, it takes what `up` made.
    env = {k: v for k, v in os.environ.items() if k != "OSTINATO_TLS_DIR"}
    up = subprocess.Popen(
        [sys.executable, "-m", "ostinato.cli", "up", "--config", "up.toml"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env=env,
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
    # Each service's metrics address beside its gRPC address.
    metrics = [line.split()[2:4] for line in lines if line.startswith("  ")]
    assert all(
        m[0] == "metrics" and re.fullmatch(r"https://127\.0\.0\.1:\d+/metrics", m[1]) for m in metrics
    ), lines
    assert "mutual TLS" in "".join(lines)
    assert _processes_using(data), "the services should be running"
    joc = next(line.split()[1] for line in lines if line.strip().startswith("joc "))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "ostinato.cli", "order", "list", "--joc", joc, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=tmp_path, env=env)

    listed = cli()  # its certificate: .ostinato/pki/cli.pem, found by itself
    assert listed.returncode == 0, listed.stderr
    plain = cli("--insecure")
    assert plain.returncode == 1 and f"cannot connect to JOC at {joc}" in plain.stderr, plain.stderr

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
