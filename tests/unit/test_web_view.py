"""The web view's pure parts: a workflow's graph and an order's marks on it, the wording and
arrangement of pages (orders, arguments, the month calendar, the inventory tree), and the
server-sent events' format."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from itertools import combinations

import pytest
from google.protobuf import json_format

from gen.ostinato.common.v1 import order_pb2, workflow_pb2
from gen.ostinato.joc.v1 import joc_pb2
from joc_svc.store import DeploymentRow, OrderRow
from joc_svc.web import graph, present
from joc_svc.web.server import sse
from ostinato.errors import InvalidArgument
from ostinato.workflow import positions

JOB = {"execute": {"jobName": "j"}}
WORKFLOW = {
    "instructions": [
        JOB,
        {
            "fork": {
                "branches": [
                    {"id": "a", "block": {"instructions": [JOB, JOB]}},
                    {
                        "id": "b",
                        "block": {
                            "instructions": [
                                {
                                    "tryCatch": {
                                        "try": {"instructions": [JOB]},
                                        "catch": {"instructions": [{"retry": {}}]},
                                    }
                                }
                            ]
                        },
                    },
                ]
            }
        },
        {
            "ifElse": {
                "condition": "$x == 1",
                "then": {"instructions": [{"prompt": {"question": "go on with a long question?"}}]},
            }
        },
    ],
    "jobs": {"j": {"agent": "agent-1", "executable": {"shellScript": {"script": "true"}}}},
}


def workflow() -> workflow_pb2.Workflow:
    return json_format.ParseDict(WORKFLOW, workflow_pb2.Workflow())


def test_every_instruction_has_a_box_keyed_by_its_position() -> None:
    drawn = graph.layout(workflow())
    boxes = {n.key: n for n in drawn.nodes if n.kind != "join"}
    assert set(boxes) == {
        "0",
        "1",
        "1/fork+a:0",
        "1/fork+a:1",
        "1/fork+b:0",
        "1/fork+b:0/try:0",
        "1/fork+b:0/catch:0",
        "2",
        "2/then:0",
        "3",
    }
    assert boxes["3"].kind == "end" and boxes["2/then:0"].label.endswith("…")  # cut to fit
    assert boxes["2/then:0"].detail == "ask: go on with a long question?"
    assert boxes["1"].detail == "fork into a, b"
    assert sum(n.kind == "join" for n in drawn.nodes) == 3  # fork, try/catch, if/else
    # Branches side by side, below their instruction, within the picture; no box overlaps another.
    assert boxes["1/fork+a:0"].x < boxes["1/fork+b:0"].x and boxes["1/fork+a:0"].y > boxes["1"].y
    assert boxes["1/fork+a:1"].y > boxes["1/fork+a:0"].y
    for a, b in combinations(drawn.nodes, 2):
        apart = a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + a.h <= b.y or b.y + b.h <= a.y
        assert apart, (a, b)
    for n in drawn.nodes:
        assert 0 <= n.x and n.x + n.w <= drawn.width and 0 <= n.y and n.y + n.h <= drawn.height
    # Edges run downwards, labelled with the branch they enter.
    assert {e.label for e in drawn.edges} >= {"a", "b", "try", "catch", "then", "else"}
    for e in drawn.edges:
        assert e.points[0][1] <= e.points[-1][1]


def test_an_order_s_position_and_outcomes_mark_the_boxes() -> None:
    order = order_pb2.Order(position=positions.parse_text("1/fork+b:0/try+2:0"))
    failed = workflow_pb2.Outcome(kind=workflow_pb2.OUTCOME_KIND_FAILED, return_code=1)
    ok = workflow_pb2.Outcome(kind=workflow_pb2.OUTCOME_KIND_SUCCEEDED)
    order.historic_outcomes.add(position=positions.parse_text("0"), outcome=ok)
    order.historic_outcomes.add(position=positions.parse_text("1/fork+b:0/try+1:0"), outcome=failed)
    assert graph.key(order.position) == "1/fork+b:0/try:0"  # whichever try it is
    assert graph.marks(order) == {"0": "succeeded", "1/fork+b:0/try:0": "failed current"}
    drawn = {n.key for n in graph.layout(workflow()).nodes}
    assert set(graph.marks(order)) <= drawn


def test_an_empty_workflow_is_its_end() -> None:
    drawn = graph.layout(workflow_pb2.Workflow())
    assert [(n.key, n.kind) for n in drawn.nodes] == [("0", "end")] and drawn.edges == ()


def row(order: order_pb2.Order, added: datetime, deleted: bool = False) -> OrderRow:
    return OrderRow(order, "controller", added, added, deleted)


def test_order_lines_say_what_the_table_shows() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    due = order_pb2.Order(id="o1", workflow_path="/w", state=order_pb2.ORDER_STATE_FRESH)
    due.scheduled_for.FromDatetime(now - timedelta(minutes=2))
    line = present.order_line(row(due, now - timedelta(hours=1)), None, now)
    assert (line.state, line.state_class, line.late, line.scheduled, line.started) == (
        "fresh",
        "fresh",
        True,
        "2026-03-01T11:58:00Z",
        "",
    )
    assert not present.order_line(row(due, now - timedelta(hours=1), deleted=True), None, now).late
    soon = order_pb2.Order(id="o2", state=order_pb2.ORDER_STATE_FRESH)  # at once, added just now
    assert not present.order_line(row(soon, now - timedelta(seconds=30)), None, now).late
    child = order_pb2.Order(id="o|a", parent_id="o", state=order_pb2.ORDER_STATE_READY)
    assert present.order_line(row(child, now, deleted=True), None, now).state == "ready (joined)"
    assert present.order_line(row(due, now, deleted=True), None, now).state == "fresh (deleted)"
    running = order_pb2.Order(
        id="o3", state=order_pb2.ORDER_STATE_PROCESSING, position=positions.parse_text("1/then:0")
    )
    line = present.order_line(row(running, now), now - timedelta(seconds=5), now)
    assert (line.state, line.position, line.started, line.late) == (
        "processing",
        "1/then:0",
        "2026-03-01T11:59:55Z",
        False,
    )


def test_arguments_of_the_add_order_form() -> None:
    found = present.parse_arguments("name=web\n\ncount = 3\nflag=true\ntext=a=b\n")
    assert {k: json_format.MessageToDict(v) for k, v in found.items()} == {
        "name": {"string": "web"},
        "count": {"number": "3"},
        "flag": {"boolean": True},
        "text": {"string": "a=b"},
    }
    with pytest.raises(InvalidArgument, match="arguments: line 2: expected NAME=VALUE, got 'oops'"):
        present.parse_arguments("a=1\noops")


def test_month_grid_weeks_from_monday() -> None:
    weeks = present.month_grid(2026, 2, {date(2026, 2, 3): 4}, today=date(2026, 2, 10))
    # February 2026 begins on a Sunday and ends on a Saturday: five weeks, Monday first.
    assert [len(w) for w in weeks] == [7, 7, 7, 7, 7]
    assert weeks[0][0].day == date(2026, 1, 26) and not weeks[0][0].in_month
    assert weeks[0][6].day == date(2026, 2, 1) and weeks[0][6].in_month
    assert [d.starts for d in weeks[1]][1] == 4 and weeks[2][1].today
    assert present.shift_month(2026, 1, -1) == "2025-12" and present.shift_month(2026, 12, 1) == "2027-01"
    assert present.parse_month("", date(2026, 5, 3)) == (2026, 5)
    with pytest.raises(InvalidArgument, match="month: '2026-13' is not a month YYYY-MM"):
        present.parse_month("2026-13", date(2026, 5, 3))


def test_projections_and_plan_counts() -> None:
    answer = joc_pb2.PlanProjectionsResponse(
        schedules=[
            joc_pb2.ScheduleProjection(
                schedule_path="/a", dates=[joc_pb2.PlanDateCount(plan_date="2026-02-03", count=2)]
            ),
            joc_pb2.ScheduleProjection(
                schedule_path="/b", dates=[joc_pb2.PlanDateCount(plan_date="2026-02-03", count=1)]
            ),
        ]
    )
    assert present.projection_counts(answer) == {date(2026, 2, 3): 3}
    planned = [
        joc_pb2.PlannedOrder(state=joc_pb2.PLANNED_ORDER_STATE_SUBMITTED, late=True),
        joc_pb2.PlannedOrder(state=joc_pb2.PLANNED_ORDER_STATE_FINISHED),
        joc_pb2.PlannedOrder(state=joc_pb2.PLANNED_ORDER_STATE_FINISHED),
    ]
    assert present.plan_counts(planned) == {
        "planned": 0,
        "submitted": 1,
        "finished": 2,
        "failed": 0,
        "cancelled": 0,
        "late": 1,
    }


def test_inventory_folders_and_versions() -> None:
    folders = present.folders(["/hello", "/app/daily/close", "/app/env", "/b/x"])
    assert [(f.path, f.name, f.depth) for f in folders] == [
        ("/", "/", 0),
        ("/app", "app", 1),
        ("/app/daily", "daily", 2),
        ("/b", "b", 1),
    ]
    assert present.in_folder("/app/env", "/app") and not present.in_folder("/app/daily/close", "/app")
    assert present.in_folder("/hello", "/")
    t = datetime(2026, 1, 1, tzinfo=UTC)
    deployed, refused = joc_pb2.DEPLOYMENT_STATUS_DEPLOYED, joc_pb2.DEPLOYMENT_STATUS_NOT_DEPLOYED
    rows = [  # newest first, as listed
        DeploymentRow("/w", 1, "v3", "prod", refused, "bad", "root", t, None),
        DeploymentRow("/w", 1, "v2", "prod", deployed, "", "root", t, t),
        DeploymentRow("/w", 1, "v2", "dev", deployed, "", "root", t, t),
        DeploymentRow("/w", 1, "v1", "prod", deployed, "", "root", t, t),
    ]
    assert {c: r.version_id for c, r in present.current_versions(rows).items()} == {"prod": "v2", "dev": "v2"}


def test_server_sent_events_carry_each_line() -> None:
    assert sse("detail", "<p>\n</p>") == b"event: detail\ndata: <p>\ndata: </p>\n\n"
    assert sse("changed", "") == b"event: changed\ndata: \n\n"
    assert json.loads(b"".join(sse("chunk", json.dumps({"text": "a\nb"})).split(b"data: ")[1:]).strip()) == {
        "text": "a\nb"
    }
