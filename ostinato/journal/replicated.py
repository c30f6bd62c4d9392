"""The journal on pysyncobj (Raft): event batches replicated, applied in commit order.

The replicated operation applies a batch to the *committed* state on pysyncobj's tick thread;
that is what a restart replays and what followers hold. The active node's shell works on its own
copy (the working state), where it assigns ids and applies events as it decides them, then
submits them here; ids are assigned deterministically, so both states stay equal once committed.
Facts this follows (shared/DEPENDENCIES.md): never sync=True from asyncio; results come back by
callback on the tick thread; commands must be idempotent (a timed-out call may still commit);
cap commands in flight; always set the password, since the peer protocol is pickle.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

from gen.ostinato.common.v1 import events_pb2, journal_pb2
from ostinato.errors import Unavailable

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 400


class JournaledState(Protocol):
    last_event_id: int

    def apply(self, event: events_pb2.Event) -> None: ...


class _Raft(SyncObj):
    def __init__(self, self_address: str, partners: list[str], conf: SyncObjConf, state: Any) -> None:
        self.committed = state
        self.lock = threading.Lock()
        self.on_applied: Callable[[int], None] = lambda _last: None
        super().__init__(self_address, partners, conf=conf)

    @replicated
    def apply_batch(self, data: bytes) -> int:
        batch = journal_pb2.EventBatch.FromString(data)
        with self.lock:
            for event in batch.events:
                # A batch re-submitted after a timeout commits twice; the second copy is skipped.
                if event.id <= self.committed.last_event_id:
                    continue
                self.committed.apply(event)
            last = int(self.committed.last_event_id)
        self.on_applied(last)
        return last


def cluster_password(data_dir: Path, given: str | None) -> str:
    """The given password, or one made once and kept in the data directory (single node)."""
    if given:
        return given
    path = data_dir / "cluster.password"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


class Journal:
    """Asyncio face of the replicated journal."""

    def __init__(
        self,
        *,
        data_dir: Path,
        self_address: str,
        partners: list[str],
        password: str,
        new_state: Callable[[], Any],
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self._leader_changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        conf = SyncObjConf(
            journalFile=str(data_dir / "journal.raft"),
            password=password,
            autoTickPeriod=0.002,
            appendEntriesPeriod=0.01,
            raftMinTimeout=0.3,
            raftMaxTimeout=0.6,
            # Compaction needs an explicit serialiser of the state; until the replicated-journal
            # work adds it, the log is kept whole (it survives restarts either way).
            logCompactionMinEntries=2**40,
            logCompactionMinTime=10**12,
            dynamicMembershipChange=False,
            onStateChanged=lambda _old, _new: self._loop.call_soon_threadsafe(self._leader_changed.set),
        )
        self._raft = _Raft(self_address, partners, conf, new_state())
        self._in_flight = 0
        self._room = asyncio.Event()

    @property
    def term(self) -> int:
        return int(self._raft._getTerm())

    def is_leader(self) -> bool:
        return bool(self._raft._isLeader())

    def set_on_applied(self, callback: Callable[[int], None]) -> None:
        """callback(last_event_id) runs on the tick thread after each applied batch."""
        self._raft.on_applied = callback

    async def wait_active(self) -> Any:
        """Waits until this node leads and has applied the whole log; returns a working copy of
        the state, to which nothing else writes."""
        while True:
            while not self.is_leader():
                self._leader_changed.clear()
                if self.is_leader():
                    break
                await self._leader_changed.wait()
            try:
                # An empty batch commits after every entry before it: then the state is complete.
                await self.submit([])
            except Unavailable:
                continue
            with self._raft.lock:
                return copy.deepcopy(self._raft.committed)

    async def room(self) -> None:
        """Waits while too many commands are in flight (an uncapped burst can wedge a follower)."""
        while self._in_flight >= MAX_IN_FLIGHT:
            self._room.clear()
            await self._room.wait()

    def submit(self, events: list[events_pb2.Event]) -> asyncio.Future[int]:
        """Hands the events (ids assigned) to Raft at once, so batches commit in submission order;
        the future resolves with the last applied id once they are committed."""
        data = journal_pb2.EventBatch(events=events).SerializeToString()
        future: asyncio.Future[int] = self._loop.create_future()
        self._in_flight += 1

        def done(result: Any, error: int) -> None:
            self._loop.call_soon_threadsafe(self._settle, future, result, error)

        self._raft.apply_batch(data, callback=done)
        return future

    def _settle(self, future: asyncio.Future[int], result: Any, error: int) -> None:
        self._in_flight -= 1
        self._room.set()
        if future.done():
            return
        if error == FAIL_REASON.SUCCESS:
            future.set_result(int(result))
        else:
            future.set_exception(Unavailable(f"journal command not committed (pysyncobj reason {error})"))

    def close(self) -> None:
        self._raft.destroy()
