"""JOC and controller clusters: resynchronisation from a controller's snapshot (on a real SQLite
store), the replay watchers get across it, and ControllerLink following the active node (against
in-process gRPC servers on port 0)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from gen.ostinato.common.v1 import events_pb2, order_pb2, workflow_pb2
from gen.ostinato.controller.v1 import controller_pb2, controller_pb2_grpc
from joc_svc.controllers import ControllerLink, parse_controller_arg
from joc_svc.projection import Projected, replay
from joc_svc.store import ControllerBehind, Store
from ostinato import pki, rpc, tls
from ostinato.errors import NotActive
from ostinato.launch import free_port

# The store fixture runs these on SQLite, or on the database OSTINATO_TEST_DB_URL names.
from tests.unit.test_joc_store import T0, event, order_stream, store  # noqa: F401 (fixture)

S = order_pb2.OrderState


def order(order_id: str, state: int, nr: int = 0) -> order_pb2.Order:
    return order_pb2.Order(
        id=order_id,
        workflow_path="/w",
        workflow_version_id="v1",
        state=state,  # type: ignore[arg-type]
        position=order_pb2.Position(nr=nr),
    )


def test_resync_takes_the_snapshot_and_marks_what_left(store: Store) -> None:  # noqa: F811
    store.apply_events("main", order_stream("kept", start=1)[:4], T0)  # processing
    store.apply_events("main", order_stream("left", start=11)[:4], T0)  # processing
    store.apply_events("main", order_stream("ended", start=21)[:9], T0)  # finished, not yet deleted
    store.apply_events("main", order_stream("gone", start=31), T0)  # finished and deleted
    store.apply_events("main", order_stream("same", start=41)[:1], T0)  # fresh
    store.apply_events("other", order_stream("elsewhere", start=1)[:4], T0)
    same = store.get_order("same")
    assert store.cursor("main") == 41

    kept = order("kept", S.ORDER_STATE_WAITING, nr=1)
    later = T0 + timedelta(hours=1)
    done = store.resync("main", 100, [kept, order("new", S.ORDER_STATE_FRESH), same.order], later)

    assert (done.event_id, done.previous_cursor) == (100, 41)
    assert done.taken == ["kept", "new"] and done.left_unseen == ["left"] and done.gone == ["ended"]
    assert store.cursor("main") == 100 and store.cursor("other") == 4
    row = store.get_order("kept")
    assert row.order == kept and not row.deleted and row.resynced_at_event == 100
    assert row.updated_at == later and row.added_at == T0 + timedelta(seconds=1)
    row = store.get_order("new")
    assert row.order.state == S.ORDER_STATE_FRESH and row.resynced_at_event == 100 and row.added_at == later
    row = store.get_order("left")
    assert row.order.state == S.ORDER_STATE_UNSPECIFIED and row.order.position.nr == 0
    assert row.deleted and row.left_unseen_state == S.ORDER_STATE_PROCESSING and row.resynced_at_event == 100
    row = store.get_order("ended")
    assert row.order.state == S.ORDER_STATE_FINISHED and row.deleted and row.left_unseen_state is None
    assert store.get_order("same") == same  # unchanged: not touched
    assert store.get_order("gone").updated_at == T0 + timedelta(seconds=40)
    assert store.get_order("elsewhere").order.state == S.ORDER_STATE_PROCESSING
    # Listing by state finds an order that left under none of the states it may have ended in.
    assert [r.order.id for r in store.list_orders(S.ORDER_STATE_PROCESSING)] == ["elsewhere"]
    # Watchers learn of every changed order: an event without kind at the snapshot's id.
    assert [(a.event.id, a.event.order_id, a.event.WhichOneof("kind")) for a in done.applied] == [
        (100, "kept", None),
        (100, "new", None),
        (100, "ended", None),
        (100, "left", None),
    ]
    assert [a.projected.deleted for a in done.applied] == [False, False, True, True]

    # Events up to the snapshot's id are in it already; later ones apply once, as ever.
    moved = event(101, "kept", order_moved=events_pb2.OrderMoved(to=order_pb2.Position(nr=2)))
    stale = event(99, "kept", order_moved=events_pb2.OrderMoved(to=order_pb2.Position(nr=7)))
    applied = store.apply_events("main", [stale, moved], later)
    assert [a.event.id for a in applied] == [101]
    assert store.get_order("kept").order.position.nr == 2
    assert store.apply_events("main", [moved], later) == []
    assert [e.id for e in store.order_events("kept")] == [1, 2, 3, 4, 101]

    # A second resync keeps where the history's first gap is.
    store.resync("main", 120, [order("kept", S.ORDER_STATE_READY, nr=2)], later)
    assert store.get_order("kept").resynced_at_event == 100
    assert store.get_order("new").left_unseen_state == S.ORDER_STATE_FRESH


def test_an_order_marked_left_that_has_events_after_all_is_no_longer_marked(store: Store) -> None:  # noqa: F811
    # JOC's AddOrder recorded the order after the snapshot was taken: its events come after it.
    store.add_orders([(order("late", S.ORDER_STATE_FRESH), T0)], "main")
    done = store.resync("main", 10, [], T0)
    assert done.left_unseen == ["late"] and store.get_order("late").deleted
    store.apply_events("main", order_stream("late", start=11)[:2], T0)
    row = store.get_order("late")
    assert row.order.state == S.ORDER_STATE_READY and not row.deleted and row.left_unseen_state is None


def test_resync_never_moves_the_cursor_back(store: Store) -> None:  # noqa: F811
    store.apply_events("main", order_stream("o1", start=1)[:4], T0)
    with pytest.raises(ControllerBehind, match="snapshot is at event 2, before event 4"):
        store.resync("main", 2, [], T0)
    assert store.cursor("main") == 4 and store.get_order("o1").order.state == S.ORDER_STATE_PROCESSING


def test_replay_across_a_resync() -> None:
    stream = order_stream()  # ids 1..10
    latest = Projected(order("o1", S.ORDER_STATE_FINISHED), deleted=True)
    # JOC stored the start, missed 5..7, took the order from a snapshot at 7, then stored 8..10.
    stored = [e for e in stream if not 5 <= e.id <= 7]
    replayed = list(replay(stored, latest, resynced_at=7))
    assert [(e.id, e.WhichOneof("kind")) for e, _ in replayed] == [
        (1, "order_added"),
        (2, "order_started"),
        (3, "order_attachable"),
        (4, "order_processing_started"),
        (7, None),
        (8, "order_moved"),
        (9, "order_finished"),
        (10, "order_deleted"),
    ]
    assert [p.order.state for _, p in replayed[:4]] == [S.ORDER_STATE_FRESH] + [S.ORDER_STATE_READY] * 2 + [
        S.ORDER_STATE_PROCESSING
    ]
    assert [p for _, p in replayed[4:]] == [latest] * 4
    # Nothing stored after the snapshot: the marker ends the replay with the order as it is.
    left = Projected(order("o1", S.ORDER_STATE_UNSPECIFIED), deleted=True)
    replayed = list(replay(stream[:4], left, resynced_at=50))
    assert [e.id for e, _ in replayed] == [1, 2, 3, 4, 50] and replayed[-1] == (replayed[-1][0], left)
    assert replayed[-1][0].order_id == "o1"


def test_replay_goes_on_after_a_failed_order_was_resumed() -> None:
    failed = workflow_pb2.Outcome(kind=workflow_pb2.OUTCOME_KIND_FAILED, return_code=1)
    stream = order_stream()[:4] + [
        event(5, order_processed=events_pb2.OrderProcessed(outcome=failed)),
        event(6, order_failed=events_pb2.OrderFailed(outcome=failed)),
        event(7, order_resumed=events_pb2.OrderResumed()),
    ]
    replayed = list(replay(stream, Projected(None)))
    assert [e.id for e, _ in replayed] == [1, 2, 3, 4, 5, 6, 7]
    assert replayed[5][1].order.state == S.ORDER_STATE_FAILED
    assert replayed[6][1].order.state != S.ORDER_STATE_FAILED


def test_parse_controller_arg() -> None:
    assert parse_controller_arg("main=127.0.0.1:1") == ("main", ["127.0.0.1:1"])
    assert parse_controller_arg(" main = a:1, b:2 ,") == ("main", ["a:1", "b:2"])
    for bad in ("main", "=a:1", "main=", "main=a:1,b", "main=a:x", "main=:1"):
        with pytest.raises(ValueError, match="ID=HOST:PORT"):
            parse_controller_arg(bad)


# ---- following the active node


class Node(controller_pb2_grpc.ControllerServiceServicer):
    """A controller node that is active, or passive naming `active` (None: no active node yet)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.passive_for = 0  # calls answered as passive before it is active
        self.active = ""
        self.calls = 0

    def guard(self, method: str) -> None:
        self.calls += 1
        if self.passive_for:
            self.passive_for -= 1
            raise NotActive(f"node {self.name} is passive", self.active)

    async def GetOverview(self, request, context):  # type: ignore[no-untyped-def]
        return controller_pb2.GetOverviewResponse(controller_id=self.name)


@pytest.fixture(scope="module", autouse=True)
def mutual_tls(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The nodes here and JOC's link to them speak mutual TLS, as everywhere: one process, one
    certificate, accepted by the nodes."""
    directory: Path = tmp_path_factory.mktemp("pki")
    pki.init(directory)
    issued = pki.issue(directory, "joc", ["127.0.0.1"])
    tls.use(tls.Security(issued.cert, issued.key, directory / pki.CA_CERT, (issued.subject,)))


@pytest.fixture
async def nodes() -> AsyncIterator[Callable[[str], tuple[Node, str]]]:
    servers: list[rpc.Server] = []

    async def start(name: str, address: str = "127.0.0.1:0") -> tuple[Node, str]:
        node = Node(name)
        server = await rpc.start_server(
            address,
            [
                (
                    controller_pb2_grpc.add_ControllerServiceServicer_to_server,
                    node,
                    rpc.service_name(controller_pb2, "ControllerService"),
                )
            ],
            guard=node.guard,
        )
        servers.append(server)
        return node, server.address

    yield start  # type: ignore[misc]
    for server in servers:
        await server.stop(0)


async def overview(link: ControllerLink, timeout: float = 5.0) -> str:
    response = await link.call("GetOverview", controller_pb2.GetOverviewRequest(), timeout)
    return str(response.controller_id)


async def test_a_call_follows_the_active_node_a_passive_one_names(nodes) -> None:  # type: ignore[no-untyped-def]
    a, a_address = await nodes("a")
    b, b_address = await nodes("b")
    a.passive_for, a.active = 100, b_address
    link = ControllerLink("c", [a_address, b_address])
    try:
        assert await overview(link) == "b" and link.address == b_address
        assert await overview(link) == "b" and a.calls == 1  # it stays there
    finally:
        await link.close()


async def test_a_call_moves_on_from_an_unreachable_node(nodes) -> None:  # type: ignore[no-untyped-def]
    _, b_address = await nodes("b")
    link = ControllerLink("c", ["127.0.0.1:1", b_address])
    try:
        assert await overview(link) == "b"
    finally:
        await link.close()


async def test_a_call_waits_out_an_election_within_its_deadline(nodes) -> None:  # type: ignore[no-untyped-def]
    a, a_address = await nodes("a")
    a.passive_for = 3  # no active node for three answers, then a is elected
    link = ControllerLink("c", [a_address])
    try:
        assert await overview(link) == "a" and a.calls == 4
        a.passive_for = 1000
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await overview(link, timeout=0.5)
        # What the node said, not a bare timeout.
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "passive" in (info.value.details() or "")
        assert 0.4 < time.monotonic() - started < 5
    finally:
        await link.close()


async def test_a_call_waits_for_a_node_that_restarts(nodes) -> None:  # type: ignore[no-untyped-def]
    # Nothing listens at first (a single node restarting, or every node of a cluster): the call
    # keeps trying until one answers, within its deadline.
    address = f"127.0.0.1:{free_port()}"
    link = ControllerLink("c", [address])
    try:
        call = asyncio.create_task(overview(link, timeout=10))
        await asyncio.sleep(1.5)
        assert not call.done()
        await nodes("a", address)
        assert await call == "a"
    finally:
        await link.close()


async def test_a_call_gives_up_before_its_deadline_when_no_node_answers_for_long() -> None:
    link = ControllerLink("c", ["127.0.0.1:1", "127.0.0.1:2"])
    try:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await overview(link, timeout=20)
        took = time.monotonic() - started
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert rpc.CLUSTER_DOWN_AFTER <= took < rpc.CLUSTER_DOWN_AFTER + 3
        error = link.error(info.value)
        assert "controller c at 127.0.0.1:" in str(error) and "(nodes 127.0.0.1:1, 127.0.0.1:2)" in str(error)
    finally:
        await link.close()
    single = ControllerLink("c", "127.0.0.1:1")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await overview(single)
        assert str(single.error(info.value)).startswith("controller c at 127.0.0.1:1 is unreachable")
    finally:
        await single.close()


def test_the_cli_tells_orders_jocs_view_of_which_is_incomplete() -> None:
    from gen.ostinato.joc.v1 import joc_pb2
    from ostinato.cli.render import describe, summary_state

    marker = events_pb2.Event(id=7, order_id="o1")
    assert describe(marker, order("o1", S.ORDER_STATE_WAITING)) == (
        "o1 taken from the controller's snapshot (JOC missed events of it)"
    )
    left = order("o1", S.ORDER_STATE_UNSPECIFIED)
    assert describe(marker, left) == "o1 left the controller while JOC was away (how it ended is unknown)"
    summary = joc_pb2.OrderSummary(order=left, left_unseen=True, last_seen_state=S.ORDER_STATE_PROCESSING)
    assert summary_state(summary) == "unknown (left unseen, was processing)"
    assert summary_state(joc_pb2.OrderSummary(order=order("o2", S.ORDER_STATE_FRESH))) == "fresh"
