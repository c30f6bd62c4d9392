"""The journal on pysyncobj (Raft): event batches replicated, applied in commit order.

The replicated operation applies a batch to the *committed* state on pysyncobj's tick thread;
that is what a restart replays and what followers hold. The active node's shell works on its own
copy (the working state), where it assigns ids and applies events as it decides them, then
submits them here; ids are assigned deterministically, so both states stay equal once committed.

Fencing inside the log: a batch carries the term its node decided it in and must continue the
committed ids exactly. A deposed node's batch (pysyncobj forwards commands of a follower to the
leader) is therefore skipped on every node alike, and its submitter learns it was deposed.

Snapshots are explicit (ostinato/journal/snapshot.py), made when pysyncobj's log compaction asks,
in a forked child: the child holds the state exactly as of the last applied entry while the node
goes on (pysyncobj forks only for its own pickle; serialising 100,000 orders on the tick thread
would stop replication for seconds). Their cadence grows with their size, so the cost of snapshots
per journaled byte stays the same however many orders are held.

The tick: pysyncobj's thread wakes every `tick` seconds while commands are in flight, and every
`idle_tick` seconds otherwise (an idle 2 ms tick burns CPU for nothing); a submitted command wakes
it at once, and a single node commits in the next tick rather than a tick period later.

Facts this follows (shared/DEPENDENCIES.md): never sync=True from asyncio; results come back by
callback on the tick thread; cap commands in flight; always set the password, since the peer
protocol is pickle; a pair cannot elect, so clusters have one or at least three voters.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.node import TCPNode
from pysyncobj.pipe_notifier import PipeNotifier

from gen.ostinato.common.v1 import events_pb2, journal_pb2
from ostinato.errors import Deposed, Unavailable
from ostinato.journal import snapshot

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 400
# ... and at most this many bytes: each command waits pickled in pysyncobj's queue, so a burst
# of big batches (job output) would otherwise hold hundreds of megabytes there.
MAX_BYTES_IN_FLIGHT = 8 * 1024 * 1024
REJECTED = -1  # apply_batch's result for a batch of a deposed node


@dataclass(frozen=True)
class Timing:
    """Raft timing. Followers start an election after raft_min..raft_max seconds without the
    leader; a leader that hears from no majority for leader_fallback seconds steps down (so a
    paused or cut-off active node stops acting soon after the others elected a new one)."""

    tick: float = 0.002
    # The tick while nothing is in flight: a leader's heartbeats go at least this often.
    idle_tick: float = 0.05
    append_entries: float = 0.01
    raft_min: float = 0.3
    raft_max: float = 0.6
    leader_fallback: float = 1.0
    # A witness waits this much longer before it stands for election: a full node wins first.
    witness_factor: float = 3.0
    # A node restarting with a journal waits this long before it may stand for election, unless
    # it hears from a leader first: pysyncobj has no pre-vote, so a returning node that times out
    # before its connections are up would depose a healthy leader with its higher term.
    restart_grace: float = 2.0
    # How soon a lost peer connection is dialled again (pysyncobj's default is 5 s).
    reconnect: float = 0.1
    # Compaction: a snapshot once the log has this many entries (batches), or this many seconds,
    # or this many bytes (pysyncobj holds the whole log in memory too: a job's 100 MB of output
    # must not stay there until the next 5000 entries).
    compaction_entries: int = 5000
    compaction_seconds: float = 600.0
    compaction_bytes: int = 16 * 1024 * 1024


class _Raft(SyncObj):
    def __init__(
        self,
        self_address: str,
        partners: list[str],
        conf: SyncObjConf,
        new_state: Callable[[], Any],
        witness: bool,
        compaction_bytes: int,
    ) -> None:
        self.new_state = new_state
        self.witness = witness
        self.handed_on_at = 0.0
        self.committed = new_state()
        self.term_applied = 0  # highest term of an applied batch
        self.lock = threading.Lock()
        self.on_applied: Callable[[int], None] = lambda _last: None
        self.on_tick: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.compaction_bytes = compaction_bytes
        self.bytes_since_snapshot = 0
        self.snapshot_bytes = 0  # of the last snapshot: the next one waits for as much journal
        self.snapshot_pid = 0  # the child writing a snapshot
        self.single = not partners
        self.settings = conf  # pysyncobj has a read-only `conf` of its own
        self.min_compaction_entries = conf.logCompactionMinEntries
        conf.serializer = self._serialize
        conf.deserializer = self._deserialize
        conf.serializeChecker = self._snapshot_state
        super().__init__(self_address, partners, conf=conf)
        self._SyncObj__raftLog = _ConflictAwareLog(getattr(self, "_SyncObj__raftLog"))  # noqa: B009
        self.notifier = PipeNotifier(self._poller)
        self.addOnTickCallback(self._run_on_tick)

    @replicated
    def apply_batch(self, data: bytes) -> int:
        batch = journal_pb2.EventBatch.FromString(data)
        with self.lock:
            last = int(self.committed.last_event_id)
            if batch.term < self.term_applied or (batch.events and batch.events[0].id != last + 1):
                return REJECTED
            self.term_applied = batch.term
            for event in batch.events:
                self.committed.apply(event)
            last = int(self.committed.last_event_id)
            self.bytes_since_snapshot += len(data)
            if self.bytes_since_snapshot > max(self.compaction_bytes, self.snapshot_bytes):
                self.forceLogCompaction()  # only sets a flag; the tick thread snapshots
        self.on_applied(last)
        return last

    def _run_on_tick(self) -> None:
        # pysyncobj's own calls (transferLeadership) are not thread-safe: they run here.
        while not self.on_tick.empty():
            self.on_tick.get_nowait()()
        if self.single and self._SyncObj__raftCommitIndex < self._SyncObj__raftLog[-1][1]:
            # Commands were just added to a single node's log: commit them in the next tick at once.
            self.notifier.notify()
        # A witness that won an election hands leadership on, as soon as a full node has caught
        # up (Raft refuses a transfer to a node behind the leader's log).
        if self.witness and self._isLeader() and time.monotonic() - self.handed_on_at > 0.05:
            self.handed_on_at = time.monotonic()
            self.transferLeadership()

    def _serialize(self, filename: str, raft_data: tuple[Any, Any, Any]) -> None:
        """Starts a child that writes the snapshot (see `_snapshot_state`). On the tick thread,
        between two applied entries: the child's copy of the state is exactly the one at the
        entry pysyncobj compacts to. pysyncobj renames `filename` (its .tmp) to the snapshot when
        this returns; the child writes a name of its own and renames it when it is complete."""
        final = filename.removesuffix(".tmp")
        parent = os.getpid()
        with self.lock:
            pid = os.fork()
            if pid == 0:  # the child: only this thread exists here
                status = 1
                try:
                    size = _write_snapshot(final, self.committed, self.term_applied, raft_data, parent)
                    # Read by the parent from the file's size once the child is done.
                    status = 0 if size else 1
                finally:
                    os._exit(status)
            self.bytes_since_snapshot = 0
        self.snapshot_pid = pid

    def _snapshot_state(self) -> int:
        """pysyncobj asks on every tick whether the snapshot child is done."""
        if not self.snapshot_pid:
            return int(SERIALIZER_STATE.NOT_SERIALIZING)
        pid, status = os.waitpid(self.snapshot_pid, os.WNOHANG)
        if pid == 0:
            return int(SERIALIZER_STATE.SERIALIZING)
        self.snapshot_pid = 0
        if status != 0:
            log.warning("journal snapshot failed (child exit status %d)", status)
            return int(SERIALIZER_STATE.FAILED)
        # The next snapshot waits for about as much journal as this one took, in bytes and in
        # entries: its cost per journaled byte is then the same whatever the state's size.
        self.snapshot_bytes = os.path.getsize(self.settings.fullDumpFile)
        self.settings.logCompactionMinEntries = max(self.min_compaction_entries, self.snapshot_bytes // 1000)
        return int(SERIALIZER_STATE.SUCCESS)

    def _deserialize(self, filename: str) -> tuple[Any, Any, Any]:
        document = json.loads(Path(filename).read_text())
        state = snapshot.decode(document["state"], self.new_state)
        with self.lock:
            self.committed = state
            self.term_applied = int(document["term_applied"])
        last_entry, previous_entry = (_entry_tuple(e) for e in document["entries"])
        return last_entry, previous_entry, {TCPNode(a) for a in document["cluster"]}


class _ConflictAwareLog:
    """pysyncobj 0.3.17 truncates a follower's log whenever an AppendEntries starts before the
    log's end, even when the entries there match (a late or repeated message of the same leader),
    and then appends only what the message carried: committed entries can vanish from a node
    that may then win the next election. Seen here as director events lost at fail-over. Raft
    truncates only from the first entry that conflicts; this wrapper of pysyncobj's log makes the
    one truncation site (deleteEntriesFrom followed by add) do that."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.pending: int | None = None  # offset a truncation was asked from, not yet decided

    def deleteEntriesFrom(self, offset: int) -> None:  # noqa: N802 (pysyncobj's name)
        self.pending = offset

    def add(self, command: bytes, index: int, term: int) -> None:
        if self.pending is not None:
            if self.pending < len(self.inner):
                _, have_index, have_term = self.inner[self.pending]
                if (have_index, have_term) == (index, term):
                    self.pending += 1  # the same entry: keep it and what follows
                    return
                self.inner.deleteEntriesFrom(self.pending)  # the first conflict
            self.pending = None
        self.inner.add(command, index, term)

    def __getitem__(self, item: Any) -> Any:
        self.pending = None  # the message's entries are all added once the log is read again
        return self.inner[item]

    def __len__(self) -> int:
        self.pending = None
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _write_snapshot(
    path: str, state: Any, term_applied: int, raft_data: tuple[Any, Any, Any], parent: int
) -> int:
    """Writes the snapshot document (in the forked child) and returns its size, or 0 when the
    node that forked it has gone meanwhile: a later run of the node may have written a newer one."""
    last_entry, previous_entry, cluster = raft_data
    document = {
        "state": snapshot.encode(state),
        "term_applied": term_applied,
        "entries": [_entry_json(last_entry), _entry_json(previous_entry)],
        "cluster": sorted(node.address for node in cluster),
    }
    text = json.dumps(document, separators=(",", ":"))
    partial = Path(f"{path}.{os.getpid()}.partial")
    partial.write_text(text)
    if os.getppid() != parent:
        partial.unlink()
        return 0
    partial.replace(path)
    return len(text)


def _entry_json(entry: tuple[bytes, int, int]) -> list[Any]:
    command, index, term = entry
    return [base64.b64encode(command).decode(), index, term]


def _entry_tuple(entry: list[Any]) -> tuple[bytes, int, int]:
    return base64.b64decode(entry[0]), int(entry[1]), int(entry[2])


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
        witness: bool = False,
        timing: Timing = Timing(),
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.witness = witness
        self._waiters: list[asyncio.Future[None]] = []
        self._loop = asyncio.get_running_loop()
        factor = timing.witness_factor if witness else 1.0
        restarting = bool(partners) and (data_dir / "journal.raft").exists()
        grace = timing.restart_grace if restarting else 0.0
        conf = SyncObjConf(
            journalFile=str(data_dir / "journal.raft"),
            fullDumpFile=str(data_dir / "journal.snapshot"),
            password=password,
            # pysyncobj binds 0.0.0.0 unless told; its peers speak pickle: only the cluster's address.
            bindAddress=self_address,
            autoTickPeriod=timing.idle_tick,
            appendEntriesPeriod=timing.append_entries,
            raftMinTimeout=timing.raft_min * factor + grace,
            raftMaxTimeout=timing.raft_max * factor + grace,
            connectionRetryTime=timing.reconnect,
            connectionTimeout=max(3.5, timing.raft_max * factor + grace),
            leaderFallbackTimeout=timing.leader_fallback,
            logCompactionMinEntries=timing.compaction_entries,
            logCompactionMinTime=timing.compaction_seconds,
            dynamicMembershipChange=False,
            onStateChanged=self._state_changed,
        )
        self._timing = timing
        self._raft = _Raft(self_address, partners, conf, new_state, witness, timing.compaction_bytes)
        if grace:
            # The timeouts are read anew for each election deadline: back to normal once a
            # leader was heard, or after the grace.
            def end_grace() -> None:
                conf.raftMinTimeout = timing.raft_min * factor
                conf.raftMaxTimeout = timing.raft_max * factor

            self._loop.create_task(self._end_grace(grace, end_grace))
        self._in_flight = 0
        self._bytes_in_flight = 0
        self._room = asyncio.Event()

    async def _end_grace(self, grace: float, end: Callable[[], None]) -> None:
        deadline = self._loop.time() + grace
        while not self.leader() and self._loop.time() < deadline:
            await self.changed(timeout=0.05)
        end()

    def _state_changed(self, _old: int, _new: int) -> None:
        # On the tick thread.
        self._loop.call_soon_threadsafe(self._notify)

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    @property
    def term(self) -> int:
        return int(self._raft._getTerm())

    def is_leader(self) -> bool:
        return bool(self._raft._isLeader())

    def leader(self) -> str:
        """Raft address of the leader as this node knows it, or ""."""
        node = self._raft._getLeader()
        return str(node.address) if node is not None else ""

    def status(self) -> dict[str, Any]:
        return dict(self._raft.getStatus())

    def committed_id(self) -> int:
        with self._raft.lock:
            return int(self._raft.committed.last_event_id)

    def read_committed(self, read: Callable[[Any], Any]) -> Any:
        """read(committed state), under the lock the tick thread applies with."""
        with self._raft.lock:
            return read(self._raft.committed)

    def set_on_applied(self, callback: Callable[[int], None]) -> None:
        """callback(last_event_id) runs on the tick thread after each applied batch."""
        self._raft.on_applied = callback

    async def changed(self, timeout: float | None = None) -> None:
        """Returns after the next change of this node's Raft state, or after `timeout`. (Whom a
        follower follows changes without a state change: watch that with a timeout.)"""
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass

    async def wait_active(self) -> Any:
        """Waits until this node leads and has applied the whole log; returns a working copy of
        the state, to which nothing else writes. A witness never returns."""
        while True:
            while self.witness or not self.is_leader():
                await self.changed()
            try:
                # A batch of this term commits after every entry before it: then the state is
                # complete, and batches of deposed nodes are fenced off from here on.
                await self.submit([])
            except Unavailable:
                continue
            with self._raft.lock:
                return copy.deepcopy(self._raft.committed)

    async def wait_deposed(self) -> None:
        while self.is_leader():
            await self.changed()

    async def room(self) -> None:
        """Waits while too many commands are in flight (an uncapped burst can wedge a follower)."""
        while self._in_flight >= MAX_IN_FLIGHT or self._bytes_in_flight >= MAX_BYTES_IN_FLIGHT:
            self._room.clear()
            await self._room.wait()

    def submit(self, events: list[events_pb2.Event]) -> asyncio.Future[int]:
        """Hands the events (ids assigned) to Raft at once, so batches commit in submission order;
        the future resolves with the last applied id once they are committed, or fails with
        Unavailable when this node was deposed."""
        future: asyncio.Future[int] = self._loop.create_future()
        if not self.is_leader():
            future.set_exception(Deposed("this node is no longer active"))
            return future
        data = journal_pb2.EventBatch(events=events, term=self.term).SerializeToString()
        self._in_flight += 1
        self._bytes_in_flight += len(data)

        def done(result: Any, error: int) -> None:
            self._loop.call_soon_threadsafe(self._settle, future, result, error, len(data))

        self._raft.apply_batch(data, callback=done)
        # pysyncobj takes commands on its tick: wake it now, and tick fast while this is in flight.
        self._raft.settings.autoTickPeriod = self._timing.tick
        self._raft.notifier.notify()
        return future

    def _settle(self, future: asyncio.Future[int], result: Any, error: int, size: int) -> None:
        self._in_flight -= 1
        self._bytes_in_flight -= size
        self._room.set()
        if not self._in_flight:
            self._raft.settings.autoTickPeriod = self._timing.idle_tick
        if future.done():
            return
        if error == FAIL_REASON.SUCCESS and result != REJECTED:
            future.set_result(int(result))
        elif error == FAIL_REASON.SUCCESS:
            future.set_exception(Deposed("journal batch of a deposed node was skipped"))
        else:
            future.set_exception(Deposed(f"journal command not committed (pysyncobj reason {error})"))

    def transfer_leadership(self, to_raft_address: str | None) -> asyncio.Future[None]:
        """Asks Raft to hand leadership to the node (None: the most caught-up one); resolves once
        the request was sent, or fails when Raft refused (not leader, target not caught up)."""
        future: asyncio.Future[None] = self._loop.create_future()

        def done(_result: Any, error: int) -> None:
            def settle() -> None:
                if future.done():
                    return
                if error == FAIL_REASON.SUCCESS:
                    future.set_result(None)
                else:
                    future.set_exception(Unavailable(f"switch-over refused by Raft (reason {error})"))

            self._loop.call_soon_threadsafe(settle)

        self._raft.on_tick.put(lambda: self._raft.transferLeadership(to_raft_address, done))
        self._raft.notifier.notify()
        return future

    def close(self) -> None:
        self._raft.destroy()
