"""The part of a journaled service's shell that controller and director share: persisting what
the core decided, running hooks once it is committed, and serving Watch/Release."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from gen.ostinato.common.v1 import events_pb2
from ostinato import metrics
from ostinato.journal.replicated import Journal
from ostinato.journal.state import JournaledState

log = logging.getLogger(__name__)

CommitHook = Callable[[list[events_pb2.Event]], None]

# Flow control of job output: while its receiver keeps releasing, a service holds at most about
# this much output the receiver has not released, then stops taking more from its producer (the
# director stops acknowledging a subagent, whose job then blocks in write(); the controller stops
# reading its director), so memory stays bounded. A receiver that released nothing for
# RECEIVER_PATIENCE_S counts as away: an absent controller or JOC must not stop jobs, so output is
# then kept without limit (in memory: spilling it to disk is still to do).
OUTPUT_BACKLOG = 8 * 1024 * 1024
RECEIVER_PATIENCE_S = 10.0


def now_ms() -> int:
    return int(time.time() * 1000)


class JournalShell:
    def __init__(self, journal: Journal, state: JournaledState, on_failure: Callable[[], None]) -> None:
        self.journal = journal
        self.on_failure = on_failure
        self.failed = False
        self.state = state  # the working state: only this node's loop writes it
        self.committed_id = state.last_event_id
        self._commit_hooks: list[CommitHook] = []
        self._changed = asyncio.Event()
        # Set when the node stops being active: what to raise to those still watching.
        self._closed: Callable[[], Exception] | None = None
        self._released_at = time.monotonic()  # when the receiver last released events

    def close(self, error: Callable[[], Exception]) -> None:
        """The node was deposed: watchers get error() at once, so receivers go and look for
        the active node instead of waiting on heartbeats from one that no longer decides."""
        self._closed = error
        self._notify()

    async def output_room(self, limit: int = OUTPUT_BACKLOG) -> None:
        """Waits while more than `limit` bytes of job output wait for the receiver's release, as
        long as the receiver keeps releasing (one that has gone quiet does not hold jobs up)."""
        while self.state.log.unreleased_output > limit and self._closed is None:
            patience = RECEIVER_PATIENCE_S - (time.monotonic() - self._released_at)
            if patience <= 0:
                return
            try:
                await asyncio.wait_for(self._changed.wait(), patience)
            except TimeoutError:
                return

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def on_commit(self, hook: CommitHook) -> None:
        self._commit_hooks.append(hook)

    async def command(self, decide: Callable[[int], list[events_pb2.Event]]) -> list[events_pb2.Event]:
        """Runs a core decision against the working state and waits until its events commit.

        Nothing awaits between deciding and submitting, so batches reach the journal in the
        order they were decided."""
        await self.journal.room()
        events = decide(now_ms())
        # Shielded: a caller that goes away (a cancelled RPC) must not cancel the commit, which
        # the working state already counts on.
        await asyncio.shield(self.persist(events))
        return events

    def persist(self, events: list[events_pb2.Event]) -> asyncio.Future[Any]:
        """Submits events the core just emitted (already applied to the working state)."""
        if not events:
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            done.set_result(self.committed_id)
            return done
        submitted = time.perf_counter()
        future = self.journal.submit(events)
        future.add_done_callback(lambda f: self._committed(f, events, submitted))
        return future

    def _committed(
        self, future: asyncio.Future[Any], events: list[events_pb2.Event], submitted: float
    ) -> None:
        if self.failed:
            return
        if future.cancelled() or future.exception() is not None:
            error = "cancelled" if future.cancelled() else repr(future.exception())
            # The working state now holds events the journal may not: this node steps down and
            # drops it; whoever is active next starts from the committed state.
            log.error("journal commit failed (%s); stepping down", error)
            self.failed = True
            self.on_failure()
            return
        metrics.JOURNAL_COMMIT.observe(time.perf_counter() - submitted)
        self.committed_id = max(self.committed_id, events[-1].id)
        if any(e.WhichOneof("kind") == "events_released" for e in events):
            self._released_at = time.monotonic()
        self._notify()
        for hook in self._commit_hooks:
            try:
                hook(events)
            except Exception:
                log.exception("commit hook failed")

    async def watch(self, after: int, heartbeat_s: float) -> AsyncIterator[list[events_pb2.Event]]:
        """Committed events after `after`, in batches; an empty batch as heartbeat when idle.
        Raises FailedPrecondition when they were released already."""
        heartbeat_s = heartbeat_s if heartbeat_s > 0 else 5.0
        while True:
            if self._closed is not None:
                raise self._closed()
            changed = self._changed
            events = self.state.log.after(after, self.committed_id)
            if events:
                after = events[-1].id
                yield events
                continue
            # Only bookkeeping events may lie between; skip past them.
            after = max(after, min(self.committed_id, self.state.log.last_id))
            try:
                await asyncio.wait_for(changed.wait(), heartbeat_s)
            except TimeoutError:
                if self._closed is None:
                    yield []
