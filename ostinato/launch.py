"""Starting service processes and waiting until they listen: used by `ostinato up` and the tests."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# Below Linux's ephemeral range (32768-60999): ports the kernel hands out for port-0 binds and
# outgoing connections would otherwise take a planned port between choosing and binding it.
PLANNED_PORTS = range(20000, 32000)
# Handed out by this process: a planned port may stay unbound for a while (a node started later,
# or restarted after a kill), and must not be planned twice.
_planned: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, outside the ephemeral range; for listeners that must
    know their port in advance (pysyncobj's Raft port, cluster nodes). Others bind port 0."""
    for _ in range(100):
        port = random.choice(PLANNED_PORTS)
        if port in _planned:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _planned.add(port)
        return port
    raise OSError(f"no free port in {PLANNED_PORTS} on {host}")


@dataclass
class Launched:
    name: str
    process: subprocess.Popen[bytes]
    address: str
    log_path: Path
    args: list[str] = field(default_factory=list)
    address_file: Path | None = None
    metrics_url: str = ""  # http(s)://HOST:PORT/metrics when it serves metrics

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: the crash a fault test wants."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: a node frozen in the middle of whatever it did (a long GC, a stuck VM)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def launch(
    name: str,
    module: str,
    args: list[str],
    data_dir: Path,
    *,
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
) -> Launched:
    """Runs `python -m module args` (args must include --data-dir data_dir) and waits until it has
    written data_dir/name.address. stdout and stderr go to data_dir/name.log."""
    return wait_listening(spawn(name, module, args, data_dir, env=env), timeout)


def spawn(
    name: str, module: str, args: list[str], data_dir: Path, *, env: dict[str, str] | None = None
) -> Launched:
    """Starts `python -m module args` without waiting (nodes of a cluster listen only together)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    address_file = data_dir / f"{name}.address"
    address_file.unlink(missing_ok=True)
    address_file.with_suffix(".metrics").unlink(missing_ok=True)
    log_path = data_dir / f"{name}.log"
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # Ctrl-C in a terminal reaches the launcher, which stops us in order
    )
    log.close()
    return Launched(name, process, "", log_path, args, address_file)


def wait_listening(launched: Launched, timeout: float = 30.0) -> Launched:
    """Waits until the process announced its address (DATA_DIR/NAME.address, next to its log)."""
    name, process, log_path = launched.name, launched.process, launched.log_path
    address_file = launched.address_file
    assert address_file is not None
    deadline = time.monotonic() + timeout
    while not address_file.exists():
        if process.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {process.returncode} before listening; log {log_path}:\n"
                + log_path.read_text(errors="replace")[-3000:]
            )
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError(f"{name} did not listen within {timeout} s; log {log_path}")
        time.sleep(0.02)
    launched.address = address_file.read_text().strip()
    metrics_file = address_file.with_suffix(".metrics")  # written before the address, if at all
    launched.metrics_url = metrics_file.read_text().strip() if metrics_file.exists() else ""
    return launched
