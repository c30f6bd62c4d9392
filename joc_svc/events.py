"""Event ingestion: one task per controller follows its journal (WatchEvents), applies what arrived
to the database in one transaction, releases what is stored, and wakes the streams watching orders.

Reading, applying and releasing overlap: a reader task reads responses ahead into a bounded buffer
while the applier stores everything buffered so far in ONE transaction (a transaction costs JOC
about the same whatever its size), and releases go out in the background, never waited for. So the
controller's events do not queue up in gRPC's buffers behind one transaction per response.

The controller keeps events until JOC releases them, so JOC may be down or the controller restarted
at any time: the task reconnects forever (following the controller cluster's active node) and
resumes after its stored cursor. When the controller released events JOC never stored (JOC's
database restored from an old backup, or a new JOC), JOC resynchronises from the controller's
snapshot: see `Ingestion._resync` and `Store.resync`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from datetime import UTC, datetime

import grpc

from gen.ostinato.common.v1 import order_pb2
from gen.ostinato.controller.v1 import controller_pb2
from joc_svc.controllers import ControllerLink
from joc_svc.store import Applied, ControllerBehind, Store
from ostinato import rpc
from ostinato.journal.eventlog import output_bytes

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5.0
# Responses read ahead of the applier: beyond this the reader waits, and gRPC's flow control holds
# the controller back.
READ_AHEAD_BYTES = 16 * 1024 * 1024
# One transaction takes at most this much of what was read ahead (at least one response).
BATCH_EVENTS = 5000
BATCH_BYTES = 4 * 1024 * 1024
# Releases are throttled to one per interval while events flow; one held back goes out when the
# interval is over, so the controller drops stored events within about a second.
RELEASE_INTERVAL = 1.0
# ... unless this many events or this much job output came since the last release: the controller
# holds them in memory until released, and stops taking output from its agents beyond a bound.
RELEASE_EVENTS = 10_000
RELEASE_BYTES = 4 * 1024 * 1024
BACKOFF_START = 0.2
BACKOFF_MAX = 5.0
SNAPSHOT_TIMEOUT = 60.0
# A controller whose journal stays behind JOC's cursor this long is an operator's problem.
BEHIND_ERROR_AFTER = 30.0
# Items (events, a job's output in chunks of up to 32 KB) held for one slow reader of an order.
SUBSCRIBER_BACKLOG = 256
# Who the audit log names for what JOC does by itself.
SYSTEM_ACCOUNT = "(joc)"


class Subscription:
    """What is applied for one order, for one reader. A reader that falls `limit` items behind
    (a slow client of a busy order) is not buffered for: it gets None once, and reads what it
    missed from the database instead."""

    def __init__(self, limit: int) -> None:
        self._queue: asyncio.Queue[Applied | None] = asyncio.Queue()
        self._limit = limit
        self._missed = False
        self._ended: Exception | None = None

    def end(self, error: Exception) -> None:
        """No more will come (this JOC instance stopped being active): the reader gets `error`."""
        self._ended = error
        self._queue.put_nowait(None)

    def put(self, item: Applied) -> None:
        if self._missed or self._ended:
            return
        if self._queue.qsize() >= self._limit:
            self._missed = True
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(None)
            return
        self._queue.put_nowait(item)

    async def get(self) -> Applied | None:
        """The next item, or None: some were dropped; read the database after what you have."""
        item = await self._queue.get()
        if self._ended is not None:
            raise self._ended
        if item is None:
            self._missed = False
        return item


class Hub:
    """Wakes the streams that watch an order. A subscription gets every Applied of its order
    committed after it subscribed (or None when its reader fell behind); streams subscribe before
    they read the database, and skip what they already read by event id."""

    def __init__(self, limit: int = SUBSCRIBER_BACKLOG) -> None:
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._limit = limit
        self._changed = asyncio.Event()

    @contextlib.asynccontextmanager
    async def subscribe(self, order_id: str) -> AsyncIterator[Subscription]:
        subscription = Subscription(self._limit)
        self._subscriptions.setdefault(order_id, set()).add(subscription)
        try:
            yield subscription
        finally:
            subscriptions = self._subscriptions.get(order_id)
            if subscriptions is not None:
                subscriptions.discard(subscription)
                if not subscriptions:
                    del self._subscriptions[order_id]

    def publish(self, applied: list[Applied]) -> None:
        for item in applied:
            for subscription in self._subscriptions.get(item.event.order_id, ()):
                subscription.put(item)
        if applied:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    def end_all(self, error: Callable[[], Exception]) -> None:
        """Ends every subscription with `error`(): what they follow is no longer ingested here."""
        for subscriptions in self._subscriptions.values():
            for subscription in subscriptions:
                subscription.end(error())

    async def changed(self) -> None:
        """Returns once something is published after the call: views of many orders (the web
        view's table) read them again then, however many changed."""
        await self._changed.wait()


class ReadAhead:
    """WatchEvents responses read ahead of the applier, at most `limit` bytes (one response more
    than fits is taken when the buffer is empty). The reader's end comes after what it read."""

    def __init__(self, limit: int = READ_AHEAD_BYTES) -> None:
        self._limit = limit
        self._items: collections.deque[tuple[controller_pb2.WatchEventsResponse, int]] = collections.deque()
        self._bytes = 0
        self._events = 0
        self._ended = False
        self._error: BaseException | None = None
        self._changed = asyncio.Condition()

    @property
    def events(self) -> int:
        """Events read and not taken yet."""
        return self._events

    async def put(self, response: controller_pb2.WatchEventsResponse) -> None:
        size = response.ByteSize()
        async with self._changed:
            await self._changed.wait_for(lambda: self._bytes < self._limit)
            self._items.append((response, size))
            self._bytes += size
            self._events += len(response.events)
            self._changed.notify_all()

    async def end(self, error: BaseException | None = None) -> None:
        """The stream ended (with `error`): `take` returns what is buffered first."""
        async with self._changed:
            self._ended, self._error = True, error
            self._changed.notify_all()

    async def take(self, max_events: int, max_bytes: int) -> list[controller_pb2.WatchEventsResponse]:
        """What is buffered, within the bounds; waits for one response. [] when the stream ended
        normally; raises its error once everything before it was taken."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._items or self._ended)
            taken: list[controller_pb2.WatchEventsResponse] = []
            events = size = 0
            while self._items:
                response, n = self._items[0]
                if taken and (events + len(response.events) > max_events or size + n > max_bytes):
                    break
                self._items.popleft()
                taken.append(response)
                events += len(response.events)
                size += n
            self._bytes -= size
            self._events -= events
            self._changed.notify_all()
            if not taken and self._error is not None:
                raise self._error
            return taken

    async def fill(self, responses: AsyncIterable[controller_pb2.WatchEventsResponse]) -> None:
        """Reads the stream into the buffer until it ends (the reader task)."""
        try:
            async for response in responses:
                await self.put(response)
        except asyncio.CancelledError:
            if not rpc.channel_closed_under_us():
                raise  # the applier is done with the stream
            # The link followed the cluster to another node and closed the channel under the
            # stream: the applier raises this in its own task, where Ingestion handles it.
            await self.end(asyncio.CancelledError())
        except Exception as e:
            await self.end(e)
        else:
            await self.end()


class Ingestion:
    """Follows one controller's events forever (until cancelled), at its active node."""

    def __init__(
        self,
        link: ControllerLink,
        store: Store,
        hub: Hub,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_connected: Callable[[], None] = lambda: None,
    ) -> None:
        self.link = link
        self.store = store
        self.hub = hub
        self.clock = clock
        # Called when a stream from the controller is up: pending deployments need not wait.
        self.on_connected = on_connected
        self.released_until = 0
        self.read_ahead = ReadAhead()  # of the stream followed now
        self._last_release = 0.0
        self._release_due = 0
        self._release_now = False  # idle, or enough held since the last release
        self._release_wanted = asyncio.Event()
        self._events_since_release = 0
        self._output_since_release = 0
        self._behind_since: float | None = None  # when the controller was first found behind JOC
        self._behind_reported = False

    async def run(self) -> None:
        releaser = asyncio.create_task(self._releaser(), name=f"release-{self.link.id}")
        try:
            await self._run()
        finally:
            releaser.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await releaser

    async def _run(self) -> None:
        backoff = BACKOFF_START
        failures = 0
        while True:
            address = self.link.address
            try:
                async for _ in self._follow():
                    if failures:
                        log.info(
                            "following events of controller %s at %s again", self.link.id, self.link.address
                        )
                    failures = 0
                    backoff = BACKOFF_START
            except asyncio.CancelledError:
                if not rpc.channel_closed_under_us():
                    raise
                # A call on the same link followed the cluster to another node and closed the
                # channel of this stream: follow too.
                log.info(
                    "controller %s: event stream from %s closed; following node %s",
                    self.link.id,
                    address,
                    self.link.address,
                )
                if self.link.address != address:
                    continue
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    if await self._resync(e):
                        continue
                else:
                    failures += 1
                    # Say it once per outage, not every retry.
                    level = logging.WARNING if failures == 1 else logging.DEBUG
                    log.log(
                        level,
                        "cannot follow events of controller %s at %s (%s: %s); retrying",
                        self.link.id,
                        address,
                        e.code().name,
                        (e.details() or "").splitlines()[0] if e.details() else "",
                    )
                    self.link.follow(e, address)
            except Exception:
                failures += 1
                log.exception("event ingestion from controller %s failed; retrying", self.link.id)
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _follow(self) -> AsyncIterator[None]:
        """One WatchEvents stream; yields after each batch of responses that was handled."""
        cursor = await asyncio.to_thread(self.store.cursor, self.link.id)
        request = controller_pb2.WatchEventsRequest(after=cursor, heartbeat_seconds=HEARTBEAT_SECONDS)
        call = self.link.stub.WatchEvents(request)
        self.read_ahead = ReadAhead()
        reader = asyncio.create_task(self.read_ahead.fill(call), name=f"events-{self.link.id}-reader")
        try:
            first = True
            while responses := await self.read_ahead.take(BATCH_EVENTS, BATCH_BYTES):
                if first:
                    first = False
                    self._behind_since, self._behind_reported = None, False
                    self.on_connected()
                events = [e for response in responses for e in response.events]
                if events:
                    applied = await asyncio.to_thread(
                        self.store.apply_events, self.link.id, events, self.clock()
                    )
                    self.hub.publish(applied)
                    cursor = max(cursor, max(e.id for e in events))
                    self._events_since_release += len(events)
                    self._output_since_release += sum(output_bytes(e) for e in events)
                self._release(cursor, idle=not events)
                yield None
        finally:
            reader.cancel()
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    def _release(self, until: int, idle: bool) -> None:
        """Asks the releaser to release until `until`: at once when idle or when much is held,
        else once the interval since the last release is over."""
        self._release_due = max(self._release_due, until)
        self._release_now = (
            idle
            or self._events_since_release >= RELEASE_EVENTS
            or self._output_since_release >= RELEASE_BYTES
        )
        self._release_wanted.set()

    async def _releaser(self) -> None:
        """Sends releases in the background of reading, one at a time."""
        while True:
            await self._release_wanted.wait()
            self._release_wanted.clear()
            while self._release_due > self.released_until:
                wait = RELEASE_INTERVAL - (time.monotonic() - self._last_release)
                if wait > 0 and not self._release_now:
                    # Held back, not dropped: sent when the interval is over, sooner if it gets urgent.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._release_wanted.wait(), wait)
                    self._release_wanted.clear()
                    continue
                if not await self._send_release(self._release_due):
                    break  # the next response or heartbeat tries again

    async def _send_release(self, until: int) -> bool:
        self._last_release = time.monotonic()
        self._release_now = False
        self._events_since_release = 0
        self._output_since_release = 0
        try:
            await self.link.call("ReleaseEvents", controller_pb2.ReleaseEventsRequest(until_id=until))
        except grpc.aio.AioRpcError as e:
            log.debug("ReleaseEvents(%d) on controller %s failed: %s", until, self.link.id, e.code().name)
            return False
        self.released_until = max(self.released_until, until)
        return True

    async def _snapshot(self) -> tuple[int, list[order_pb2.Order]]:
        """The controller's orders as of one event id, in parts (they may be more than fit into
        one message)."""
        event_id, orders = 0, []
        async for part in self.link.stub.StreamSnapshot(
            controller_pb2.StreamSnapshotRequest(), timeout=SNAPSHOT_TIMEOUT
        ):
            event_id = part.event_id
            orders.extend(part.orders)
        return event_id, orders

    async def _resync(self, e: grpc.aio.AioRpcError) -> bool:
        """WatchEvents refused JOC's cursor: the events after it were released before JOC stored
        them (JOC's database restored from an old backup, or a new JOC at a controller that ran
        before). JOC rebuilds its view of the controller's orders from the controller's snapshot
        and watches after the snapshot's event id. False when it could not (retry later)."""
        try:
            event_id, orders = await self._snapshot()
        except grpc.aio.AioRpcError as e2:
            if e2.code() == grpc.StatusCode.UNIMPLEMENTED:
                await self._skip_released(e)  # a controller without snapshots
                return True
            log.warning(
                "controller %s refused JOC's event cursor (%s) and its snapshot failed (%s); retrying",
                self.link.id,
                e.details(),
                e2.code().name,
            )
            return False
        try:
            done = await asyncio.to_thread(self.store.resync, self.link.id, event_id, orders, self.clock())
        except ControllerBehind as behind:
            # Not JOC's to repair: moving the cursor back would apply other events under ids JOC
            # has stored. A node active since a moment may still be catching up: JOC tries again,
            # and calls it an error once it lasts.
            now = time.monotonic()
            if self._behind_since is None:
                self._behind_since = now
                log.warning("%s (or it is catching up after a fail-over); waiting", behind)
            elif now - self._behind_since > BEHIND_ERROR_AFTER and not self._behind_reported:
                self._behind_reported = True
                log.error("%s; JOC does not follow its events until that is sorted out", behind)
            await asyncio.sleep(BACKOFF_MAX)
            return False
        self.hub.publish(done.applied)
        summary = (
            f"{len(done.taken)} orders taken from it, {len(done.left_unseen)} left the controller while"
            f" JOC was away (how they ended is unknown){_ids(done.left_unseen)}, {len(done.gone)} ended"
            " orders deleted meanwhile"
        )
        log.warning(
            "controller %s had released events after %d that JOC never stored (%s); JOC resynchronised"
            " from the controller's snapshot at event %d: %s",
            self.link.id,
            done.previous_cursor,
            e.details(),
            done.event_id,
            summary,
        )
        await asyncio.to_thread(
            self.store.audit,
            SYSTEM_ACCOUNT,
            "resync",
            f"controller {self.link.id} from its snapshot at event {done.event_id} (JOC had events"
            f" until {done.previous_cursor}): {summary}",
            "events released before JOC stored them",
            self.clock(),
        )
        return True

    async def _skip_released(self, e: grpc.aio.AioRpcError) -> None:
        """The controller dropped events JOC never stored and has no snapshot to offer. Nothing
        recovers them here; JOC continues after the controller's oldest kept event."""
        cursor = await asyncio.to_thread(self.store.cursor, self.link.id)
        try:
            overview = await self.link.call("GetOverview", controller_pb2.GetOverviewRequest())
        except grpc.aio.AioRpcError as e2:
            log.warning("controller %s: GetOverview failed (%s); retrying", self.link.id, e2.code().name)
            await asyncio.sleep(BACKOFF_MAX)
            return
        log.error(
            "EVENTS LOST: controller %s released events after %d that JOC never stored (%s); "
            "continuing from event %d; orders changed meanwhile may be stale in JOC",
            self.link.id,
            cursor,
            e.details(),
            overview.released_until_id,
        )
        if overview.released_until_id > cursor:
            await asyncio.to_thread(self.store.set_cursor, self.link.id, overview.released_until_id)
        else:
            # The controller contradicts itself; don't spin.
            await asyncio.sleep(BACKOFF_MAX)


def _ids(order_ids: list[str], shown: int = 20) -> str:
    if not order_ids:
        return ""
    more = f" and {len(order_ids) - shown} more" if len(order_ids) > shown else ""
    return f" ({', '.join(order_ids[:shown])}{more})"
