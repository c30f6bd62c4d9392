"""Starting service processes and waiting until they listen: used by `ostinato up` and the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago; for listeners that must know their port in advance
    (pysyncobj's Raft port). gRPC servers bind port 0 instead."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Launched:
    name: str
    process: subprocess.Popen[bytes]
    address: str
    log_path: Path
    args: list[str] = field(default_factory=list)

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
    data_dir.mkdir(parents=True, exist_ok=True)
    address_file = data_dir / f"{name}.address"
    address_file.unlink(missing_ok=True)
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
    address = address_file.read_text().strip()
    return Launched(name, process, address, log_path, args)
