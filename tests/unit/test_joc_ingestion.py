"""JOC's side of a controller, batched: event ingestion that reads ahead and applies what arrived in
one transaction, releases that never hold up reading, and AddOrder calls coalesced into one
controller call each. Against a scripted controller on a real gRPC server (port 0) and a real
SQLite store."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from pathlib import Path

import grpc
import pytest

from gen.ostinato.common.v1 import events_pb2, order_pb2
from gen.ostinato.controller.v1 import controller_pb2, controller_pb2_grpc
from joc_svc import events as ingestion
from joc_svc.controllers import ControllerLink
from joc_svc.events import Hub, Ingestion, ReadAhead
from joc_svc.order_batcher import OrderBatcher
from joc_svc.store import Applied, Store
from joc_svc.store.audit import AuditEntry
from ostinato import rpc, tls
from ostinato.errors import NotFound, Unavailable
from tests.integration.support import eventually
from tests.unit.test_joc_store import T0, order_stream


@pytest.fixture(autouse=True)
def plain_text() -> None:
    """A fake controller on loopback, in plain text: what is tested here is JOC's side of the
    stream (TLS has tests of its own)."""
    tls.use(tls.INSECURE)


class Controller(controller_pb2_grpc.ControllerServiceServicer):
    """What JOC sees of a controller: a journal of events sent one per WatchEvents response, and
    AddOrders that refuses a whole request for one unknown workflow, as the real one does."""

    def __init__(self) -> None:
        self.events: list[events_pb2.Event] = []
        self.changed = asyncio.Condition()
        self.releases: list[int] = []  # until ids, as asked (before the gate)
        self.release_gate = asyncio.Event()
        self.release_gate.set()
        self.add_calls: list[list[str]] = []  # order ids of each AddOrders request
        self.add_gate = asyncio.Event()
        self.add_gate.set()
        self.orders: dict[str, str] = {}  # id -> workflow path, added once each

    async def append(self, events: Iterable[events_pb2.Event]) -> None:
        async with self.changed:
            self.events += events
            self.changed.notify_all()

    async def WatchEvents(self, request, context):  # type: ignore[no-untyped-def]
        after = request.after
        while True:
            async with self.changed:
                await self.changed.wait_for(lambda seen=after: self.events and self.events[-1].id > seen)
                fresh = [e for e in self.events if e.id > after]
            for event in fresh:
                yield controller_pb2.WatchEventsResponse(events=[event])
                after = event.id

    async def ReleaseEvents(self, request, context):  # type: ignore[no-untyped-def]
        self.releases.append(request.until_id)
        await self.release_gate.wait()
        return controller_pb2.ReleaseEventsResponse()

    async def AddOrders(self, request, context):  # type: ignore[no-untyped-def]
        self.add_calls.append([o.id for o in request.orders])
        await self.add_gate.wait()
        for i, new in enumerate(request.orders):
            if new.workflow_path != "/w":
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"orders[{i}].workflow_path: unknown workflow {new.workflow_path!r}",
                )
        added = []
        for new in request.orders:
            added.append(
                controller_pb2.AddedOrder(id=new.id, workflow_version_id="v1", existed=new.id in self.orders)
            )
            self.orders.setdefault(new.id, new.workflow_path)
        return controller_pb2.AddOrdersResponse(orders=added)


class HeldStore(Store):
    """A store whose first apply_events waits for `go`; it records the size of every batch."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.batches: list[int] = []
        self.go = threading.Event()

    def apply_events(
        self, controller_id: str, events: Iterable[events_pb2.Event], now: datetime
    ) -> list[Applied]:
        events = list(events)
        self.batches.append(len(events))
        if len(self.batches) == 1:
            self.go.wait(timeout=30)
        return super().apply_events(controller_id, events, now)


@pytest.fixture
async def controller() -> AsyncIterator[tuple[Controller, str]]:
    fake = Controller()
    server = await rpc.start_server(
        "127.0.0.1:0",
        [
            (
                controller_pb2_grpc.add_ControllerServiceServicer_to_server,
                fake,
                rpc.service_name(controller_pb2, "ControllerService"),
            )
        ],
    )
    yield fake, server.address
    fake.release_gate.set()
    fake.add_gate.set()
    await server.stop(0)


@pytest.fixture
def store(tmp_path: Path) -> Iterable[HeldStore]:
    s = HeldStore(f"sqlite:///{tmp_path}/joc.db")
    s.go.set()
    yield s
    s.close()


def orders_events(count: int, start: int = 1) -> list[events_pb2.Event]:
    """`count` orders' whole lives one after another, ids from `start`."""
    return [e for i in range(count) for e in order_stream(f"o{start + 10 * i}", start + 10 * i)]


@contextlib.asynccontextmanager
async def following(link: ControllerLink, store: Store) -> AsyncIterator[Ingestion]:
    follower = Ingestion(link, store, Hub())
    task = asyncio.create_task(follower.run())
    try:
        yield follower
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await link.close()


# ---- reading ahead


def response(*ids: int, chunk: str = "") -> controller_pb2.WatchEventsResponse:
    return controller_pb2.WatchEventsResponse(
        events=[
            events_pb2.Event(id=i, order_id="o", order_std_written=events_pb2.OrderStdWritten(chunk=chunk))
            for i in ids
        ]
    )


async def test_read_ahead_hands_over_what_is_buffered_within_its_bounds() -> None:
    buffer = ReadAhead(limit=10_000)
    for r in (response(1, 2), response(3), response(), response(4, 5, 6)):
        await buffer.put(r)
    assert buffer.events == 6
    assert [[e.id for e in r.events] for r in await buffer.take(3, 10_000)] == [[1, 2], [3], []]
    assert [len(r.events) for r in await buffer.take(1, 10_000)] == [3]  # one response at least
    await buffer.put(response(7, chunk="x" * 600))
    await buffer.put(response(8, chunk="x" * 600))
    assert [[e.id for e in r.events] for r in await buffer.take(100, 1000)] == [[7]]  # bytes bound
    assert buffer.events == 1


async def test_read_ahead_holds_the_reader_back_when_full_and_ends_after_what_it_read() -> None:
    buffer = ReadAhead(limit=1000)
    await buffer.put(response(1, chunk="x" * 2000))  # larger than the bound: taken alone
    second = asyncio.create_task(buffer.put(response(2)))
    await asyncio.sleep(0)
    assert not second.done()  # full: the reader waits, and gRPC holds the controller back
    assert [r.events[0].id for r in await buffer.take(100, 100_000)] == [1]
    await second
    await buffer.end(ValueError("stream broke"))
    assert [r.events[0].id for r in await buffer.take(100, 100_000)] == [2]
    with pytest.raises(ValueError, match="stream broke"):
        await buffer.take(100, 100_000)
    ended = ReadAhead()
    await ended.end()
    assert await ended.take(100, 100) == []


# ---- ingestion


async def test_what_arrives_while_a_batch_is_stored_goes_in_one_transaction(
    controller: tuple[Controller, str], store: HeldStore
) -> None:
    fake, address = controller
    store.go.clear()
    await fake.append(orders_events(20))  # 200 events, one per response
    async with following(ControllerLink("c", address), store) as follower:
        await eventually(lambda: store.batches, what="the first batch")
        # The first batch is held in the database: the reader goes on reading.
        await eventually(lambda: follower.read_ahead.events == 200 - store.batches[0], what="the read-ahead")
        store.go.set()
        await eventually(lambda: store.cursor("c") == 200, what="all events stored")
        assert len(store.batches) == 2 and sum(store.batches) == 200, store.batches
        assert len(store.list_orders(order_pb2.ORDER_STATE_FINISHED)) == 20
        assert [e.id for e in store.order_events("o191")] == [191, 192, 193, 194, 197, 198, 199, 200]
        await eventually(lambda: follower.released_until == 200, what="the release")


async def test_reading_goes_on_while_a_release_is_under_way(
    controller: tuple[Controller, str], store: HeldStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, address = controller
    monkeypatch.setattr(ingestion, "RELEASE_INTERVAL", 0.3)
    fake.release_gate.clear()  # the controller is slow to release
    await fake.append(orders_events(1))
    async with following(ControllerLink("c", address), store) as follower:
        await eventually(lambda: fake.releases, what="a release")
        first = fake.releases[0]
        for wave in range(1, 6):
            await fake.append(orders_events(1, start=1 + 10 * wave))
            await eventually(lambda n=10 * (wave + 1): store.cursor("c") == n, what=f"wave {wave} stored")
        assert fake.releases == [first] and follower.released_until == 0  # still under way
        fake.release_gate.set()
        await eventually(lambda: follower.released_until == 60, what="the release of everything")
        assert fake.releases[-1] == 60 and len(fake.releases) <= 3


async def test_releases_are_throttled_while_events_flow(
    controller: tuple[Controller, str], store: HeldStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, address = controller
    monkeypatch.setattr(ingestion, "RELEASE_INTERVAL", 0.5)
    async with following(ControllerLink("c", address), store) as follower:
        started = time.monotonic()
        for wave in range(20):
            await fake.append(orders_events(1, start=1 + 10 * wave))
            await eventually(lambda n=10 * (wave + 1): store.cursor("c") == n, what=f"wave {wave} stored")
        elapsed = time.monotonic() - started
        # One at once, then at most one per interval.
        assert len(fake.releases) <= 2 + elapsed / 0.5, (fake.releases, elapsed)
        await eventually(lambda: follower.released_until == 200, what="the last release")


# ---- AddOrder coalescing


def new_order(order_id: str, workflow_path: str = "/w") -> controller_pb2.NewOrder:
    return controller_pb2.NewOrder(id=order_id, workflow_path=workflow_path)


async def add(
    batcher: OrderBatcher, link: ControllerLink, order_id: str, workflow_path: str = "/w"
) -> controller_pb2.AddedOrder:
    audit = AuditEntry("alice", "add order", f"{order_id} {workflow_path} on {link.id}", "", T0)
    return await batcher.add(link, new_order(order_id, workflow_path), T0, audit, timeout=10)


async def held_first_call(fake: Controller, batcher: OrderBatcher, link: ControllerLink) -> asyncio.Task:
    """A first order whose AddOrders call the controller holds: what comes next waits for it."""
    fake.add_gate.clear()
    first = asyncio.create_task(add(batcher, link, "first"))
    await eventually(lambda: fake.add_calls, what="the first call")
    return first


async def test_concurrent_orders_go_to_the_controller_in_one_call_and_one_transaction(
    controller: tuple[Controller, str], store: HeldStore
) -> None:
    fake, address = controller
    link = ControllerLink("c", address)
    batcher = OrderBatcher(store)
    first = await held_first_call(fake, batcher, link)
    callers = [asyncio.create_task(add(batcher, link, f"o{i}")) for i in range(20)]
    await eventually(lambda: batcher.waiting("c") == 20, what="20 callers waiting")
    fake.add_gate.set()
    answers = await asyncio.gather(first, *callers)
    assert fake.add_calls == [["first"], [f"o{i}" for i in range(20)]]
    assert [(a.id, a.workflow_version_id, a.existed) for a in answers] == [
        (i, "v1", False) for i in ["first", *(f"o{i}" for i in range(20))]
    ]
    rows = store.list_orders()
    assert len(rows) == 21 and {r.order.state for r in rows} == {order_pb2.ORDER_STATE_FRESH}
    assert {r.order.workflow_version_id for r in rows} == {"v1"}
    assert len(store.audit_entries(limit=100)) == 21
    await link.close()


async def test_a_bad_order_fails_alone_and_the_others_of_its_batch_are_added(
    controller: tuple[Controller, str], store: HeldStore
) -> None:
    fake, address = controller
    link = ControllerLink("c", address)
    batcher = OrderBatcher(store)
    first = await held_first_call(fake, batcher, link)
    paths = ["/w", "/w", "/nope", "/w", "/w", "/gone", "/w", "/w"]
    callers = [asyncio.create_task(add(batcher, link, f"o{i}", p)) for i, p in enumerate(paths)]
    await eventually(lambda: batcher.waiting("c") == len(paths), what="the callers waiting")
    fake.add_gate.set()
    await first
    answers = await asyncio.gather(*callers, return_exceptions=True)
    for i, (path, answer) in enumerate(zip(paths, answers, strict=True)):
        if path == "/w":
            assert isinstance(answer, controller_pb2.AddedOrder) and answer.id == f"o{i}", answer
        else:
            # As if it had come alone.
            assert isinstance(answer, NotFound), answer
            assert str(answer) == f"orders[0].workflow_path: unknown workflow {path!r}"
    good = {f"o{i}" for i, p in enumerate(paths) if p == "/w"}
    assert set(fake.orders) == {"first", *good}
    assert {r.order.id for r in store.list_orders()} == {"first", *good}
    assert fake.add_calls[1] == [f"o{i}" for i in range(8)]
    assert len(fake.add_calls) <= 1 + 2 * 8  # halving: a few calls, not one per order
    await link.close()


async def test_a_second_call_for_the_same_order_goes_in_the_next_batch(
    controller: tuple[Controller, str], store: HeldStore
) -> None:
    fake, address = controller
    link = ControllerLink("c", address)
    batcher = OrderBatcher(store)
    first = await held_first_call(fake, batcher, link)
    callers = [asyncio.create_task(add(batcher, link, i)) for i in ("dup", "x", "dup")]
    await eventually(lambda: batcher.waiting("c") == 3, what="the callers waiting")
    fake.add_gate.set()
    await first
    answers = await asyncio.gather(*callers)
    assert fake.add_calls == [["first"], ["dup", "x"], ["dup"]]
    assert [(a.id, a.existed) for a in answers] == [("dup", False), ("x", False), ("dup", True)]
    await link.close()


async def test_a_caller_gone_before_its_batch_is_not_sent(
    controller: tuple[Controller, str], store: HeldStore
) -> None:
    fake, address = controller
    link = ControllerLink("c", address)
    batcher = OrderBatcher(store)
    first = await held_first_call(fake, batcher, link)
    gone = asyncio.create_task(add(batcher, link, "gone"))
    stays = asyncio.create_task(add(batcher, link, "stays"))
    await eventually(lambda: batcher.waiting("c") == 2, what="the callers waiting")
    gone.cancel()
    fake.add_gate.set()
    await first
    assert (await stays).id == "stays"
    assert fake.add_calls == [["first"], ["stays"]]
    await link.close()


async def test_every_caller_hears_that_the_controller_is_unreachable(store: HeldStore) -> None:
    link = ControllerLink("c", "127.0.0.1:1")
    batcher = OrderBatcher(store)
    answers = await asyncio.gather(*(add(batcher, link, f"o{i}") for i in range(3)), return_exceptions=True)
    assert all(isinstance(a, Unavailable) and "controller c at 127.0.0.1:1" in str(a) for a in answers), (
        answers
    )
    assert store.list_orders() == []
    await link.close()
