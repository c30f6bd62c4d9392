"""`ostinato up` keeps its services running: a service that exits is reported and started again
after a delay that doubles while it keeps failing, and the others run on meanwhile. So a cluster
that `up` built shows a fail-over when one of its nodes is killed, and gets the node back.

`--exit-on-failure` restores the strict behaviour some tests want: the first exit ends `up`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TextIO

from ostinato.launch import Launched, wait_listening

# The first restart after this long; each failure in a row doubles it, up to the maximum.
RESTART_DELAY_S = 1.0
RESTART_DELAY_MAX_S = 30.0
# A service that ran this long counts as healthy again: its next failure restarts it quickly.
HEALTHY_AFTER_S = 60.0
# A restarted service that has not announced its address after this long is killed and retried.
LISTEN_TIMEOUT_S = 60.0


class Services(Protocol):
    """What the supervisor needs of a topology."""

    services: dict[str, Launched]

    def spawn_service(self, name: str) -> Launched: ...


@dataclass
class _Watch:
    started_at: float | None  # when it last began to listen; None while it fails
    failures: int = 0  # in a row
    restart_at: float | None = None  # a restart is due then
    starting: Launched | None = None  # restarted, not listening yet
    starting_since: float = 0.0


class Supervisor:
    def __init__(
        self,
        topology: Services,
        *,
        exit_on_failure: bool = False,
        out: TextIO | None = None,
        err: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topology = topology
        self.exit_on_failure = exit_on_failure
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.clock = clock
        now = clock()
        self.watches = {name: _Watch(started_at=now) for name in topology.services}

    def run(self, stop: threading.Event, poll_s: float = 0.2) -> int:
        """Watches until `stop` is set (0), or with exit_on_failure until a service exits (1)."""
        while not stop.is_set():
            if self.check() and self.exit_on_failure:
                return 1
            stop.wait(poll_s)
        return 0

    def check(self) -> bool:
        """One round: reports exits, schedules and starts restarts, notices restarted services
        listening. True when a service was found exited in this round."""
        now = self.clock()
        exited = False
        for name, watch in self.watches.items():
            if watch.starting is not None:
                self._check_starting(name, watch, now)
            elif watch.restart_at is not None:
                if now >= watch.restart_at:
                    self._restart(name, watch, now)
            elif not (launched := self.topology.services[name]).alive():
                exited = True
                self._failed(name, watch, now, f"exited with {launched.process.returncode}", launched)
        return exited

    def _failed(self, name: str, watch: _Watch, now: float, what: str, launched: Launched) -> None:
        if watch.started_at is not None and now - watch.started_at >= HEALTHY_AFTER_S:
            watch.failures = 0
        watch.failures += 1
        watch.started_at = None
        if self.exit_on_failure:
            self._say(self.err, f"ostinato: error: {name} {what}; see {launched.log_path}")
            return
        delay = min(RESTART_DELAY_S * 2 ** (watch.failures - 1), RESTART_DELAY_MAX_S)
        watch.restart_at = now + delay
        self._say(
            self.err, f"ostinato: {name} {what}; restarting it in {delay:g} s (log {launched.log_path})"
        )

    def _restart(self, name: str, watch: _Watch, now: float) -> None:
        launched = self.topology.spawn_service(name)
        launched.name = name
        self.topology.services[name] = launched  # stopped with the others from now on
        watch.restart_at = None
        watch.starting = launched
        watch.starting_since = now

    def _check_starting(self, name: str, watch: _Watch, now: float) -> None:
        launched = watch.starting
        assert launched is not None and launched.address_file is not None
        if launched.address_file.exists():
            wait_listening(launched, 0)
            watch.starting = None
            watch.started_at = now
            self._say(self.out, f"  {name:<12} restarted at {launched.address}, pid {launched.process.pid}")
        elif not launched.alive():
            watch.starting = None
            self._failed(
                name, watch, now, f"exited with {launched.process.returncode} before listening", launched
            )
        elif now - watch.starting_since > LISTEN_TIMEOUT_S:
            launched.kill()
            watch.starting = None
            self._failed(name, watch, now, f"did not listen within {LISTEN_TIMEOUT_S:g} s", launched)

    @staticmethod
    def _say(stream: TextIO, line: str) -> None:
        print(line, file=stream, flush=True)
