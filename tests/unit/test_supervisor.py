"""`ostinato up`'s supervision, with small real processes standing in for services and a clock
the test moves."""

from __future__ import annotations

import io
import shlex
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ostinato.launch import Launched
from ostinato.supervisor import HEALTHY_AFTER_S, RESTART_DELAY_MAX_S, Supervisor
from tests.integration.support import wait_until


class Services:
    """Services that announce an address and then sleep; `failing[name]` more starts of a name
    exit at once instead."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.services: dict[str, Launched] = {}
        self.failing: dict[str, int] = {}
        self.spawned: list[str] = []

    def spawn_service(self, name: str) -> Launched:
        self.spawned.append(name)
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        address = folder / f"{name}.address"
        address.unlink(missing_ok=True)
        if self.failing.get(name, 0) > 0:
            self.failing[name] -= 1
            script = "exit 3"
        else:
            target = shlex.quote(str(address))
            script = f"echo 127.0.0.1:1 > {target}.tmp && mv {target}.tmp {target} && exec sleep 60"
        process = subprocess.Popen(["sh", "-c", script])
        return Launched(name, process, "", folder / f"{name}.log", [], address)

    def start(self, *names: str) -> None:
        for name in names:
            launched = self.spawn_service(name)
            self.services[name] = launched
            wait_until(lambda launched=launched: launched.address_file.exists())  # type: ignore[union-attr]

    def stop(self) -> None:
        for launched in self.services.values():
            launched.kill()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    s = Services(tmp_path)
    s.start("a", "b")
    yield s
    s.stop()


def supervise(
    services: Services, clock: Clock, **kwargs: bool
) -> tuple[Supervisor, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return Supervisor(services, out=out, err=err, clock=clock, **kwargs), out, err


def test_a_service_that_exits_is_restarted_after_a_delay_and_the_others_run_on(services: Services) -> None:
    clock = Clock()
    supervisor, out, err = supervise(services, clock)
    b_pid = services.services["b"].process.pid
    assert supervisor.check() is False
    services.services["a"].kill()
    assert supervisor.check() is True
    assert err.getvalue().startswith("ostinato: a exited with -9; restarting it in 1 s (log ")
    clock.now += 0.5
    supervisor.check()
    assert services.spawned == ["a", "b"]  # not yet
    clock.now += 0.5
    supervisor.check()
    assert services.spawned == ["a", "b", "a"]
    restarted = services.services["a"]
    wait_until(lambda: supervisor.check() is False and "restarted" in out.getvalue())
    assert f"a            restarted at 127.0.0.1:1, pid {restarted.process.pid}" in out.getvalue()
    assert restarted.alive() and restarted.address == "127.0.0.1:1"
    assert services.services["b"].process.pid == b_pid and services.services["b"].alive()


def test_the_delay_doubles_while_it_keeps_failing_and_resets_once_it_ran_long(services: Services) -> None:
    clock = Clock()
    supervisor, out, err = supervise(services, clock)
    services.failing["a"] = 6
    services.services["a"].kill()
    delays = []
    lines = []
    for _ in range(7):
        wait_until(lambda: supervisor.check() or "restarting it in" in err.getvalue())
        lines.append(err.getvalue().strip())
        delays.append(float(lines[-1].split("restarting it in ")[1].split(" s")[0]))
        err.truncate(0)
        err.seek(0)
        clock.now += delays[-1]
        supervisor.check()  # restarts it; it exits at once, or (the 7th time) listens
    assert delays == [1, 2, 4, 8, 16, RESTART_DELAY_MAX_S, RESTART_DELAY_MAX_S]
    assert all(line.startswith("ostinato: a exited with 3 before listening;") for line in lines[1:])
    wait_until(lambda: supervisor.check() is False and "restarted" in out.getvalue())
    clock.now += HEALTHY_AFTER_S
    services.services["a"].kill()
    assert supervisor.check() is True
    assert "a exited with -9; restarting it in 1 s" in err.getvalue()


def test_exit_on_failure_ends_at_the_first_exit(services: Services) -> None:
    supervisor, _, err = supervise(services, Clock(), exit_on_failure=True)
    services.services["b"].kill()
    assert supervisor.run(threading.Event(), poll_s=0.01) == 1
    assert err.getvalue().startswith("ostinato: error: b exited with -9; see ")
    assert services.spawned == ["a", "b"]
