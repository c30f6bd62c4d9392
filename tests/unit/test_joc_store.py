"""JOC's store on a real SQLite file: inventory, deployments, and the order projection fed with a
synthetic controller event stream."""

from __future__ import annotations

import json
import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from gen.ostinato.common.v1 import events_pb2, items_pb2, order_pb2, workflow_pb2
from gen.ostinato.joc.v1 import joc_pb2
from joc_svc import auth, migrations, naming, schema
from joc_svc.projection import Projected, replay
from joc_svc.schema import metadata
from joc_svc.store import DeploymentRow, OrderFilter, Store
from joc_svc.store.audit import AuditEntry
from ostinato.errors import AlreadyExists, InvalidArgument, NotFound
from ostinato.ids import new_order_id

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
WF = items_pb2.ITEM_TYPE_WORKFLOW
JR = items_pb2.ITEM_TYPE_JOB_RESOURCE


@pytest.fixture
def store(tmp_path: Path):
    # OSTINATO_TEST_DB_URL runs these on another database, e.g. postgresql+psycopg://...; its
    # tables are dropped before and after each test.
    url = os.environ.get("OSTINATO_TEST_DB_URL") or f"sqlite:///{tmp_path}/joc.db"
    if not url.startswith("sqlite"):
        drop_everything(url)
    s = Store(url)
    yield s
    s.close()
    if not url.startswith("sqlite"):
        drop_everything(url)


def drop_everything(url: str) -> None:
    engine = sa.create_engine(url)
    metadata.drop_all(engine)
    migrations.version_table.drop(engine, checkfirst=True)
    engine.dispose()


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
    assert store.add_orders([(placeholder, T0)], "main") == [True]
    assert store.add_orders([(placeholder, T0)], "main") == [False]  # same id again: nothing twice
    assert store.list_orders(state=order_pb2.ORDER_STATE_FRESH)[0].order.id == "o2"
    store.apply_events("main", order_stream("o2")[:4], T0)
    row = store.get_order("o2")
    assert row.order.workflow_version_id == "v1"  # OrderAdded replaced the placeholder's order
    assert row.order.state == order_pb2.ORDER_STATE_PROCESSING
    assert row.added_at == T0  # when JOC accepted it
    # Events that got in before AddOrder recorded its row: the placeholder does not overwrite them.
    store.apply_events("main", order_stream("o3", start=5)[:2], T0)
    fresh = order_pb2.Order(id="o3", state=order_pb2.ORDER_STATE_FRESH)
    assert store.add_orders([(fresh, T0)], "main") == [False]
    assert store.get_order("o3").order.state == order_pb2.ORDER_STATE_READY


def interleaved(prefix: str, orders: int = 30, in_flight: int = 7) -> list[events_pb2.Event]:
    """The events of `orders` orders, `in_flight` at a time, interleaved as a controller journals
    them (ids from 1), with an agent's item confirmation and an event about no order among them."""
    rng = random.Random(5)
    waiting = [order_stream(f"{prefix}{i}") for i in range(orders)]
    active: list[list[events_pb2.Event]] = []
    events: list[events_pb2.Event] = []
    while waiting or active:
        while len(active) < in_flight and waiting:
            active.append(waiting.pop(0))
        stream = rng.choice(active)
        events.append(stream.pop(0))
        if not stream:
            active.remove(stream)
        if len(events) == 40:
            attached = events_pb2.ItemAttached(agent="agent-1", path="/w", version_id="v1")
            stray = events_pb2.ItemDeleted(path="/x")
            events += [event(0, "", item_attached=attached), event(0, "", item_deleted=stray)]
    for i, e in enumerate(events, 1):
        e.id = i
    return events


def test_a_batch_of_many_orders_applies_as_its_events_one_by_one(store: Store) -> None:
    # The same controller history twice, under two controllers and order id prefixes: once in
    # one batch, once an event at a time; a few orders known beforehand from AddOrder.
    for prefix in ("b", "s"):
        store.add_orders(
            [(order_pb2.Order(id=f"{prefix}{i}", state=order_pb2.ORDER_STATE_FRESH), T0) for i in (0, 5)],
            prefix,
        )
    batch = interleaved("b")
    applied_batch = store.apply_events("b", batch, T0)
    applied_single = [a for e in interleaved("s") for a in store.apply_events("s", [e], T0)]

    assert [(a.event.id, a.projected) for a in applied_batch] == [
        (a.event.id, _renamed(a.projected, "b")) for a in applied_single
    ]
    assert len(applied_batch) == len(batch) - 2  # all but the item confirmation and the stray event
    assert store.cursor("b") == store.cursor("s") == len(batch)
    rows = {r.order.id: r for r in store.list_orders()}
    assert len(rows) == 60
    for i in range(30):
        b, s = rows[f"b{i}"], rows[f"s{i}"]
        assert (b.order, b.added_at, b.updated_at, b.deleted) == (
            _renamed(s.projected, "b").order,
            s.added_at,
            s.updated_at,
            s.deleted,
        )
        assert store.order_events(f"b{i}") == [_renamed_event(e, "b") for e in store.order_events(f"s{i}")]
        assert store.order_logs(f"b{i}") == store.order_logs(f"s{i}")
    assert rows["b0"].added_at == T0  # the AddOrder row's time stays
    with store.engine.connect() as conn:
        confirmations = conn.execute(sa.select(schema.deployment_agents.c.controller_id)).scalars().all()
    assert sorted(confirmations) == ["b", "s"]
    # Again: nothing twice.
    assert store.apply_events("b", batch, T0) == []


def _renamed(projected: Projected, prefix: str) -> Projected:
    if projected.order is None:
        return projected
    order = order_pb2.Order()
    order.CopyFrom(projected.order)
    order.id = prefix + order.id[1:]
    return Projected(order, projected.deleted)


def _renamed_event(e: events_pb2.Event, prefix: str) -> events_pb2.Event:
    renamed = events_pb2.Event()
    renamed.CopyFrom(e)
    renamed.order_id = prefix + e.order_id[1:]
    if renamed.HasField("order_added"):
        renamed.order_added.order.id = renamed.order_id
    return renamed


def test_orders_added_together_are_recorded_in_one_go(store: Store) -> None:
    store.apply_events("main", order_stream("known")[:2], T0)
    fresh = [
        order_pb2.Order(id=i, workflow_path="/w", state=order_pb2.ORDER_STATE_FRESH)
        for i in ("a", "known", "b")
    ]
    audit = [AuditEntry("alice", "add order", f"{o.id} /w on main", "why", T0) for o in fresh]
    at = [T0 + timedelta(seconds=i) for i in range(3)]
    assert store.add_orders(list(zip(fresh, at, strict=True)), "main", audit) == [True, False, True]
    assert store.get_order("a").added_at == T0 and store.get_order("b").added_at == T0 + timedelta(seconds=2)
    assert store.get_order("known").order.state == order_pb2.ORDER_STATE_READY  # its events came first
    assert [e.object for e in store.audit_entries()] == ["b /w on main", "known /w on main", "a /w on main"]


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
    store.add_orders([(b, T0 + timedelta(days=1))], "main")
    assert [r.order.id for r in store.list_orders()] == ["o3", "o2", "o1"]  # newest first
    assert [r.order.id for r in store.list_orders(order_pb2.ORDER_STATE_FINISHED)] == ["o1"]
    assert [r.order.id for r in store.list_orders(workflow_path="/w")] == ["o2", "o1"]
    assert len(store.list_orders(limit=2)) == 2
    with pytest.raises(NotFound, match="order_id: no order nope"):
        store.get_order("nope")


def test_order_pages_counts_late_and_started(store: Store) -> None:
    store.apply_events("main", order_stream("a/1", start=1), T0)  # finished, started at T0+2s
    store.apply_events("main", order_stream("a/2", start=11)[:4], T0)  # processing
    fresh = [
        # due an hour ago: late; due in an hour; and one without a time added two minutes ago
        order_pb2.Order(id="b/late", workflow_path="/b/x", state=order_pb2.ORDER_STATE_FRESH),
        order_pb2.Order(id="b/later", workflow_path="/b/x", state=order_pb2.ORDER_STATE_FRESH),
        order_pb2.Order(id="c/now", workflow_path="/c", state=order_pb2.ORDER_STATE_FRESH),
    ]
    now = T0 + timedelta(hours=2)
    fresh[0].scheduled_for.FromDatetime(now - timedelta(hours=1))
    fresh[1].scheduled_for.FromDatetime(now + timedelta(hours=1))
    store.add_orders([(fresh[0], T0), (fresh[1], T0 + timedelta(minutes=1))], "main")
    store.add_orders([(fresh[2], now - timedelta(minutes=2))], "main")

    page = store.page_orders(OrderFilter(), 0, 2, now)
    assert [r.order.id for r in page.rows] == ["c/now", "b/later"]  # newest first
    assert page.total == 5 and page.late == 2
    assert page.counts == {"FINISHED": 1, "PROCESSING": 1, "FRESH": 3}
    assert [r.order.id for r in store.page_orders(OrderFilter(), 2, 2, now).rows] == ["a/2", "a/1"]
    assert [r.order.id for r in store.page_orders(OrderFilter(), 4, 2, now).rows] == ["b/late"]

    late = store.page_orders(OrderFilter(late=True), 0, 10, now)
    assert [r.order.id for r in late.rows] == ["c/now", "b/late"] and late.total == 2
    folder = store.page_orders(OrderFilter(workflow="/b/"), 0, 10, now)
    assert [r.order.id for r in folder.rows] == ["b/later", "b/late"]
    assert folder.counts == {"FRESH": 2} and folder.late == 1
    state = store.page_orders(OrderFilter(state="FINISHED", workflow="/w"), 0, 10, now)
    assert [r.order.id for r in state.rows] == ["a/1"] and state.total == 1
    assert state.counts == {"FINISHED": 1, "PROCESSING": 1}  # the state filter aside
    assert [r.order.id for r in store.page_orders(OrderFilter(text="/2"), 0, 10, now).rows] == ["a/2"]
    assert store.page_orders(OrderFilter(text="%"), 0, 10, now).total == 0  # no wildcards

    assert store.started_times(["a/1", "a/2", "b/late", "nope"]) == {
        "a/1": T0 + timedelta(seconds=2),
        "a/2": T0 + timedelta(seconds=12),
    }


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
    assert new_order_id(T0, "0123456789") == "2025-03-01#0123456789"
    assert naming.enum_value(order_pb2.OrderState, "finished") == order_pb2.ORDER_STATE_FINISHED
    assert naming.enum_word(items_pb2.ItemType, JR) == "JOB_RESOURCE"
    for bad in ["", "/", "a/b", "/a//b", "/a/../b", "/a/"]:
        with pytest.raises(InvalidArgument, match="path"):
            naming.check_path(bad)
    assert naming.check_folder("/a/") == "/a"


# ---- schema migrations


def columns(engine: sa.Engine) -> dict[str, set[str]]:
    inspector = sa.inspect(engine)
    return {t: {c["name"] for c in inspector.get_columns(t)} for t in inspector.get_table_names()}


def test_migrations_make_the_schema_the_code_uses(store: Store) -> None:
    assert store.schema_versions[1] == migrations.LATEST
    expected = {t.name: {c.name for c in t.columns} for t in metadata.sorted_tables}
    expected[migrations.version_table.name] = {"version"}
    assert columns(store.engine) == expected
    assert migrations.migrate(store.engine) == (migrations.LATEST, migrations.LATEST)  # nothing to do


def test_a_database_of_the_first_joc_is_upgraded_with_its_data(tmp_path: Path) -> None:
    url = os.environ.get("OSTINATO_TEST_DB_URL") or f"sqlite:///{tmp_path}/old.db"
    if not url.startswith("sqlite"):
        drop_everything(url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # as the first JOC made it: tables, no schema_version
        migrations.MIGRATIONS[0](conn)
        conn.execute(
            sa.text(
                "INSERT INTO deployments (path, type, version_id, controller_id, status, message, account,"
                " requested_at) VALUES ('/w', 'WORKFLOW', 'v1', 'main', 'DEPLOYED', '', 'me', :at)"
            ),
            {"at": T0},
        )
    engine.dispose()
    store = Store(url)
    try:
        assert store.schema_versions == (1, migrations.LATEST)
        [row] = store.list_deployments("/w")
        assert (row.version_id, row.status, row.pending, row.attempts, row.signer) == (
            "v1",
            joc_pb2.DEPLOYMENT_STATUS_DEPLOYED,
            False,
            0,
            "",
        )
    finally:
        store.close()
        if not url.startswith("sqlite"):
            drop_everything(url)


# ---- asynchronous deployment, moves, releases, accounts


def item(path: str, version: str, type: int = WF) -> items_pb2.SignedItem:
    return items_pb2.SignedItem(type=type, path=path, version_id=version, json=f'{{"path": "{path}"}}')  # type: ignore[arg-type]


def test_pending_deliveries(store: Store) -> None:
    store.put_object("/w", WF, "{}", T0)
    rows = store.record_pending([(item("/w", "v1"), "CN=root")], ["a", "b"], "me", T0)
    assert [(r.controller_id, r.pending, r.status, r.signer) for r in rows] == [
        ("a", True, joc_pb2.DEPLOYMENT_STATUS_NOT_DEPLOYED, "CN=root"),
        ("b", True, joc_pb2.DEPLOYMENT_STATUS_NOT_DEPLOYED, "CN=root"),
    ]
    [(row, delivered)] = store.pending_deliveries("a")
    assert row.id == rows[0].id and delivered == item("/w", "v1")
    assert store.pending_controllers() == {"a", "b"}
    store.mark_attempted([rows[0].id], "controller a is unreachable")
    store.mark_delivered([rows[0].id], T0 + timedelta(seconds=3))
    store.mark_rejected(rows[1].id, "bad signature")
    a, b = store.deployments_by_id([rows[0].id, rows[1].id])
    assert (a.status, a.pending, a.attempts, a.message, a.confirmed_at) == (
        joc_pb2.DEPLOYMENT_STATUS_DEPLOYED,
        False,
        2,
        "",
        T0 + timedelta(seconds=3),
    )
    assert (b.status, b.pending, b.message) == (
        joc_pb2.DEPLOYMENT_STATUS_NOT_DEPLOYED,
        False,
        "bad signature",
    )
    assert store.pending_deliveries("a") == [] and store.get_object("/w").deployed_version_id == "v1"
    # Delivered again later (a repeated mark changes nothing).
    store.mark_delivered([rows[1].id], T0)
    assert store.deployments_by_id([rows[1].id])[0].status == joc_pb2.DEPLOYMENT_STATUS_NOT_DEPLOYED

    # Redeploy: the version last deployed to a controller, as delivered.
    store.record_pending([(item("/w", "v2"), "")], ["a"], "me", T0)
    assert [i.version_id for i, _ in store.versions_deployed_to("a", "/")] == ["v1"]
    store.mark_delivered([r.id for r, _ in store.pending_deliveries("a")], T0)
    assert [(i.version_id, s) for i, s in store.versions_deployed_to("a", "/")] == [("v2", "")]
    assert store.versions_deployed_to("b", "/") == []
    # A version is one JSON text for good.
    changed = item("/w", "v1")
    changed.json = '{"path": "/w", "x": 1}'
    with pytest.raises(InvalidArgument, match="other content"):
        store.record_pending([(changed, "")], ["a"], "me", T0)

    # The agent's confirmation arrives as a controller event.
    attached = events_pb2.Event(
        id=1, item_attached=events_pb2.ItemAttached(agent="agent-1", path="/w", version_id="v2")
    )
    store.apply_events("a", [attached], T0)
    store.apply_events("a", [attached], T0)  # repeated: once
    latest = store.list_deployments("/w", controller_id="a", limit=1)[0]
    assert latest.version_id == "v2" and [a for a, _ in latest.agents] == ["agent-1"]
    assert store.list_deployments(pending_only=True) == []


def draft(path: str, resources: list[str] | None = None) -> str:
    from joc_svc import inventory

    value = {
        "instructions": [{"execute": {"jobName": "j"}}],
        "jobs": {"j": {"agent": "a", "executable": {"shellScript": {"script": "true"}}}},
        "jobResourcePaths": resources or [],
    }
    return inventory.canonical_draft(WF, json.dumps(value), path)


def test_move_follows_references_and_release(store: Store) -> None:
    store.put_object("/r/env", JR, '{"variables": {}}', T0)
    store.put_object("/w/a", WF, draft("/w/a", ["/r/env"]), T0)
    store.put_object("/w/b", WF, draft("/w/b"), T0)
    store.put_object("/p/daily", items_pb2.ITEM_TYPE_SCHEDULE, '{"workflowPath": "/w/a"}', T0)
    store.record_deployments(
        [DeploymentRow("/w/a", WF, "v1", "main", joc_pb2.DEPLOYMENT_STATUS_DEPLOYED, "", "me", T0, T0)]
    )
    [moved] = store.move("/r/env", 0, "/r/environment", T0)
    assert moved.path == "/r/environment"
    assert json.loads(store.get_object("/w/a").json)["jobResourcePaths"] == ["/r/environment"]
    moved_folder = store.move("/w", 0, "/flows", T0)
    assert [m.path for m in moved_folder] == ["/flows/a", "/flows/b"]
    assert all(m.deployed_version_id == "" for m in moved_folder)
    assert json.loads(moved_folder[0].json)["path"] == "/flows/a"  # the path inside follows too
    assert '"/flows/a"' in store.get_object("/p/daily").json
    with pytest.raises(AlreadyExists, match="/flows/b"):
        store.move("/flows/a", WF, "/flows/b", T0)
    with pytest.raises(NotFound):
        store.move("/nothing", 0, "/else", T0)
    [released] = store.release([store.get_object("/p/daily")], "me", T0)
    assert released.released_at == T0
    assert {r.path for r in store.remove_folder("/flows")} == {"/flows/a", "/flows/b"}
    assert store.object_keys() == {(JR, "/r/environment"), (items_pb2.ITEM_TYPE_SCHEDULE, "/p/daily")}


def test_accounts(store: Store) -> None:
    accounts = auth.AccountStore(store)
    token = accounts.ensure_root(T0)
    assert token and accounts.ensure_root(T0) is None
    assert accounts.by_token(token).name == "root"  # type: ignore[union-attr]
    row = accounts.put("alice", [joc_pb2.ROLE_VIEWER, joc_pb2.ROLE_DEPLOYER], T0)
    assert row.roles == (joc_pb2.ROLE_DEPLOYER, joc_pb2.ROLE_VIEWER)
    alice = accounts.add_token("alice", T0)
    assert accounts.by_token(alice).name == "alice" and accounts.one("alice").token_count == 1  # type: ignore[union-attr]
    assert accounts.by_token("ost_guess") is None
    with pytest.raises(InvalidArgument, match="account name"):
        accounts.put("a b", [joc_pb2.ROLE_VIEWER], T0)
    accounts.remove("alice")
    assert accounts.by_token(alice) is None
    with pytest.raises(InvalidArgument, match="root"):
        accounts.remove("root")
    # Only hashes are stored.
    with store.engine.connect() as conn:
        stored = {r.token_hash for r in conn.execute(sa.select(auth.account_tokens))}
    assert token not in stored and auth.hash_token(token) in stored


def test_audit_filters(store: Store) -> None:
    store.audit("alice", "deploy", "/a", "", T0)
    store.audit("bob", "put", "/b", "", T0)
    store.audit("alice", "put", "/c", "why", T0)
    assert [a.object for a in store.audit_entries(account="alice")] == ["/c", "/a"]
    assert [a.object for a in store.audit_entries(action="put")] == ["/c", "/b"]
    assert [a.object for a in store.audit_entries(limit=1)] == ["/c"]
