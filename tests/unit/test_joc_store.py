"""JOC's store on a real SQLite file: inventory, deployments, and the order projection fed with a
synthetic controller event stream."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from gen.ostinato.common.v1 import events_pb2, items_pb2, order_pb2, workflow_pb2
from gen.ostinato.joc.v1 import joc_pb2
from joc_svc import naming
from joc_svc.projection import Projected, replay
from joc_svc.store import DeploymentRow, Store, metadata
from ostinato.errors import InvalidArgument, NotFound

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
WF = items_pb2.ITEM_TYPE_WORKFLOW
JR = items_pb2.ITEM_TYPE_JOB_RESOURCE


@pytest.fixture
def store(tmp_path: Path):
    # OSTINATO_TEST_DB_URL runs these on another database, e.g. postgresql+psycopg://...; its
    # tables are dropped before and after each test.
    url = os.environ.get("OSTINATO_TEST_DB_URL") or f"sqlite:///{tmp_path}/joc.db"
    if not url.startswith("sqlite"):
        engine = sa.create_engine(url)
        metadata.drop_all(engine)
        engine.dispose()
    s = Store(url)
    yield s
    if not url.startswith("sqlite"):
        metadata.drop_all(s.engine)
    s.close()


def event(id: int, order_id: str = "o1", **kind: object) -> events_pb2.Event:
    e = events_pb2.Event(id=id, order_id=order_id, **kind)  # type: ignore[arg-type]
    e.timestamp.FromDatetime(T0 + timedelta(seconds=id))
    return e


def order_stream(order_id: str = "o1", start: int = 1) -> list[events_pb2.Event]:
    """An order's life as a controller journals it: ids start..start+9."""
    added = order_pb2.Order(
        id=order_id, workflow_path="/w", workflow_version_id="v1", state=order_pb2.ORDER_STATE_FRESH
    )
    ok = workflow_pb2.Outcome(kind=workflow_pb2.OUTCOME_KIND_SUCCEEDED)
    kinds = [
        {"order_added": events_pb2.OrderAdded(order=added)},
        {"order_started": events_pb2.OrderStarted()},
        {"order_attachable": events_pb2.OrderAttachable(agent="agent-1")},
        {
            "order_processing_started": events_pb2.OrderProcessingStarted(
                processing=order_pb2.Processing(subagent_id="s1")
            )
        },
        {
            "order_std_written": events_pb2.OrderStdWritten(
                stream=events_pb2.STD_STREAM_STDOUT, chunk="hello\n"
            )
        },
        {
            "order_std_written": events_pb2.OrderStdWritten(
                stream=events_pb2.STD_STREAM_STDERR, chunk="warn\n"
            )
        },
        {"order_processed": events_pb2.OrderProcessed(outcome=ok)},
        {"order_moved": events_pb2.OrderMoved(to=order_pb2.Position(nr=1))},
        {"order_finished": events_pb2.OrderFinished(outcome=ok)},
        {"order_deleted": events_pb2.OrderDeleted()},
    ]
    return [event(start + i, order_id, **k) for i, k in enumerate(kinds)]


def test_inventory_crud(store: Store) -> None:
    row = store.put_object("/a/hello", WF, '{"v":1}', T0)
    assert (row.path, row.type, row.json, row.modified_at, row.deployed_version_id) == (
        "/a/hello",
        WF,
        '{"v":1}',
        T0,
        "",
    )
    store.put_object("/a/hello", WF, '{"v":2}', T0 + timedelta(1))
    assert store.get_object("/a/hello").json == '{"v":2}'
    assert store.get_object("/a/hello", WF).modified_at == T0 + timedelta(1)
    store.put_object("/a/hello", JR, "{}", T0)
    with pytest.raises(InvalidArgument, match="type"):
        store.get_object("/a/hello")  # two types at one path: the caller must say which
    assert store.remove_object("/a/hello", JR).type == JR
    assert store.get_object("/a/hello").type == WF
    store.remove_object("/a/hello")
    with pytest.raises(NotFound, match="/a/hello"):
        store.get_object("/a/hello")
    with pytest.raises(NotFound, match="/a/hello"):
        store.remove_object("/a/hello")


def test_folders(store: Store) -> None:
    for path in ["/a/x", "/a/b/y", "/a/b/c/z", "/c/z", "/a_b/w", "/ab"]:
        store.put_object(path, WF, "{}", T0)
    store.put_object("/a/r", JR, "{}", T0)

    def paths(folder: str, recursive: bool, type: int = 0) -> list[str]:
        return [r.path for r in store.list_objects(folder, recursive, type)]

    assert paths("/a", False) == ["/a/r", "/a/x"]
    assert paths("/a/", True) == ["/a/b/c/z", "/a/b/y", "/a/r", "/a/x"]
    assert paths("/a", True, JR) == ["/a/r"]
    assert paths("/", False) == ["/ab"]
    assert len(paths("/", True)) == 7
    assert paths("/a_b", False) == ["/a_b/w"]  # LIKE wildcards in names are literal
    assert paths("/nothing", True) == []
    with pytest.raises(InvalidArgument, match="folder"):
        store.list_objects("relative", True)

    assert [r.path for r in store.objects_to_deploy(["/a/b", "/c/z", "/a/b/y"])] == [
        "/a/b/c/z",
        "/a/b/y",
        "/c/z",
    ]
    assert len(store.objects_to_deploy(["/"])) == 7
    with pytest.raises(NotFound, match="/missing"):
        store.objects_to_deploy(["/a/x", "/missing"])


def test_deployments(store: Store) -> None:
    store.put_object("/w", WF, "{}", T0)
    rows = store.record_deployments(
        [
            DeploymentRow("/w", WF, "v1", "main", joc_pb2.DEPLOYMENT_STATUS_DEPLOYED, "", "me", T0, T0),
            DeploymentRow(
                "/w", WF, "v1", "other", joc_pb2.DEPLOYMENT_STATUS_NOT_DEPLOYED, "down", "me", T0, None
            ),
        ]
    )
    assert [(r.controller_id, r.status, r.message, r.confirmed_at) for r in rows] == [
        ("main", joc_pb2.DEPLOYMENT_STATUS_DEPLOYED, "", T0),
        ("other", joc_pb2.DEPLOYMENT_STATUS_NOT_DEPLOYED, "down", None),
    ]
    assert rows[0].id < rows[1].id
    assert store.get_object("/w").deployed_version_id == "v1"
    assert [r.id for r in store.list_deployments("/w")] == [rows[1].id, rows[0].id]
    assert len(store.list_deployments(limit=1)) == 1
    assert store.list_deployments("/other") == []


def test_event_projection_applies_each_event_once(store: Store) -> None:
    stream = order_stream()
    unrelated = events_pb2.Event(id=11, item_deleted=events_pb2.ItemDeleted(path="/x"))

    first = store.apply_events("main", stream[:5], T0)
    assert [a.event.id for a in first] == [1, 2, 3, 4, 5]
    # Each watcher update is a snapshot of its moment, not one shared mutated order.
    assert [naming.enum_word(order_pb2.OrderState, a.projected.order.state) for a in first] == [
        "FRESH",
        "READY",
        "READY",
        "PROCESSING",
        "PROCESSING",
    ]
    assert store.cursor("main") == 5
    assert store.get_order("o1").order.state == order_pb2.ORDER_STATE_PROCESSING

    # A resumed stream repeats events: only ids after the cursor count.
    again = store.apply_events("main", [*stream[2:], unrelated], T0)
    assert [a.event.id for a in again] == [6, 7, 8, 9, 10]
    assert store.apply_events("main", stream, T0) == []
    assert store.cursor("main") == 11  # events about no order still advance the cursor

    row = store.get_order("o1")
    assert row.deleted and row.order.state == order_pb2.ORDER_STATE_FINISHED
    assert row.order.position.nr == 1 and len(row.order.historic_outcomes) == 1
    assert row.added_at == T0 + timedelta(seconds=1)
    assert row.updated_at == T0 + timedelta(seconds=10)
    assert [e.id for e in store.order_events("o1")] == [1, 2, 3, 4, 7, 8, 9, 10]  # output excluded
    logs = store.order_logs("o1")
    assert [(r.seq, r.stream, r.chunk) for r in logs] == [
        (5, events_pb2.STD_STREAM_STDOUT, "hello\n"),
        (6, events_pb2.STD_STREAM_STDERR, "warn\n"),
    ]
    assert [r.seq for r in store.order_logs("o1", after_seq=5)] == [6]
    row, history = store.order_history("o1")
    assert [e.id for e in history] == list(range(1, 11))
    assert history[4].order_std_written.chunk == "hello\n"

    # Cursors are per controller.
    assert store.cursor("other") == 0


def test_placeholder_then_events(store: Store) -> None:
    placeholder = order_pb2.Order(id="o2", workflow_path="/w", state=order_pb2.ORDER_STATE_FRESH)
    assert store.add_order(placeholder, "main", T0)
    assert not store.add_order(placeholder, "main", T0)  # same id again: nothing twice
    assert store.list_orders(state=order_pb2.ORDER_STATE_FRESH)[0].order.id == "o2"
    store.apply_events("main", order_stream("o2")[:4], T0)
    row = store.get_order("o2")
    assert row.order.workflow_version_id == "v1"  # OrderAdded replaced the placeholder's order
    assert row.order.state == order_pb2.ORDER_STATE_PROCESSING
    assert row.added_at == T0  # when JOC accepted it
    # Events that got in before AddOrder recorded its row: the placeholder does not overwrite them.
    store.apply_events("main", order_stream("o3", start=5)[:2], T0)
    assert not store.add_order(order_pb2.Order(id="o3", state=order_pb2.ORDER_STATE_FRESH), "main", T0)
    assert store.get_order("o3").order.state == order_pb2.ORDER_STATE_READY


def test_event_that_does_not_apply_does_not_wedge_ingestion(store: Store) -> None:
    # An order JOC never saw added (its OrderAdded was released before JOC stored it).
    stray = event(1, "ghost", order_moved=events_pb2.OrderMoved(to=order_pb2.Position(nr=3)))
    applied = store.apply_events("main", [stray, *order_stream("o4", start=2)[:2]], T0)
    assert [a.event.id for a in applied] == [1, 2, 3]
    assert applied[0].projected.order is None
    assert store.cursor("main") == 3
    assert [e.id for e in store.order_events("ghost")] == [1]
    with pytest.raises(NotFound, match="ghost"):
        store.get_order("ghost")


def test_list_orders_filters(store: Store) -> None:
    store.apply_events("main", order_stream("o1", start=1), T0)
    store.apply_events("main", order_stream("o2", start=11)[:4], T0)
    b = order_pb2.Order(id="o3", workflow_path="/b", state=order_pb2.ORDER_STATE_FRESH)
    store.add_order(b, "main", T0 + timedelta(days=1))
    assert [r.order.id for r in store.list_orders()] == ["o3", "o2", "o1"]  # newest first
    assert [r.order.id for r in store.list_orders(order_pb2.ORDER_STATE_FINISHED)] == ["o1"]
    assert [r.order.id for r in store.list_orders(workflow_path="/w")] == ["o2", "o1"]
    assert len(store.list_orders(limit=2)) == 2
    with pytest.raises(NotFound, match="order_id: no order nope"):
        store.get_order("nope")


def test_replay_for_watchers() -> None:
    stream = order_stream()
    replayed = list(replay(stream, Projected(None)))
    # Ends with the event that ended the order; OrderDeleted after it is not shown.
    assert [e.id for e, _ in replayed] == list(range(1, 10))
    assert replayed[-1][1].order.state == order_pb2.ORDER_STATE_FINISHED
    assert replayed[0][1].order.state == order_pb2.ORDER_STATE_FRESH
    # The start was missed: each event comes with the order as last known.
    latest = Projected(order_pb2.Order(id="o1", state=order_pb2.ORDER_STATE_FINISHED), deleted=True)
    assert [p for _, p in replay(stream[3:], latest)] == [latest] * 7


def test_audit(store: Store) -> None:
    store.audit("alice", "put", "workflow /w", "because", T0)
    store.audit("bob", "deploy", "/w", "", T0)
    assert [(a.account, a.action, a.object, a.reason, a.at) for a in store.audit_entries()] == [
        ("bob", "deploy", "/w", "", T0),
        ("alice", "put", "workflow /w", "because", T0),
    ]


def test_naming() -> None:
    assert naming.new_version_id(T0, "abcdef") == "20250301T120000Z-abcdef"
    assert len(naming.new_version_id(T0)) == len("20250301T120000Z-abcdef")
    assert naming.new_order_id(T0, "0123456789") == "2025-03-01#0123456789"
    assert naming.enum_value(order_pb2.OrderState, "finished") == order_pb2.ORDER_STATE_FINISHED
    assert naming.enum_word(items_pb2.ItemType, JR) == "JOB_RESOURCE"
    for bad in ["", "/", "a/b", "/a//b", "/a/../b", "/a/"]:
        with pytest.raises(InvalidArgument, match="path"):
            naming.check_path(bad)
    assert naming.check_folder("/a/") == "/a"
