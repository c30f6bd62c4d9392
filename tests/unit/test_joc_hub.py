"""JOC's hub of order watchers: a slow reader is not buffered for without end."""

from __future__ import annotations

import asyncio

from gen.ostinato.common.v1 import events_pb2
from joc_svc.events import Hub
from joc_svc.projection import Projected
from joc_svc.store import Applied


def applied(event_id: int, order_id: str = "o") -> Applied:
    return Applied(events_pb2.Event(id=event_id, order_id=order_id), Projected(None))


async def test_a_reader_that_falls_behind_is_told_once_and_then_gets_what_comes_next() -> None:
    hub = Hub(limit=3)
    async with hub.subscribe("o") as slow, hub.subscribe("o") as fast:
        hub.publish([applied(1), applied(2)])
        assert [(await fast.get()).event.id for _ in range(2)] == [1, 2]  # type: ignore[union-attr]
        hub.publish([applied(3), applied(4, "other")])
        assert (await fast.get()).event.id == 3  # type: ignore[union-attr]
        hub.publish([applied(5), applied(6), applied(7)])  # slow holds 1, 2, 3: full at 5
        assert [(await fast.get()).event.id for _ in range(3)] == [5, 6, 7]  # type: ignore[union-attr]
        assert await slow.get() is None  # read the database after what you have
        hub.publish([applied(8)])
        assert (await slow.get()).event.id == 8  # type: ignore[union-attr]
        assert (await fast.get()).event.id == 8  # type: ignore[union-attr]
    assert hub._subscriptions == {}  # gone with their readers


async def test_views_of_all_orders_wake_on_each_publication() -> None:
    hub = Hub()
    first = asyncio.create_task(hub.changed())
    await asyncio.sleep(0)
    hub.publish([])
    await asyncio.sleep(0)
    assert not first.done()  # nothing applied: nothing changed
    hub.publish([applied(1, "a")])
    await asyncio.wait_for(first, 1)
    second = asyncio.create_task(hub.changed())
    await asyncio.sleep(0)
    assert not second.done()  # only what comes after the call wakes it
    hub.publish([applied(2, "b")])
    await asyncio.wait_for(second, 1)
