"""JOC's pure inventory rules (drafts per type, references, deployable JSON, imports) and the
permission table of its RPCs."""

from __future__ import annotations

import json

import pytest

from gen.ostinato.common.v1 import items_pb2
from gen.ostinato.joc.v1 import joc_pb2
from joc_svc import auth, inventory
from ostinato.errors import InvalidArgument

T = items_pb2
WF = T.ITEM_TYPE_WORKFLOW


def wf(resources: list[str] | None = None, inline: list[str] | None = None) -> str:
    job = {"agent": "a", "executable": {"shellScript": {"script": "true"}}}
    value = {
        "instructions": [{"execute": {"jobName": "j"}}]
        + ([{"execute": {"job": {**job, "jobResourcePaths": inline}}}] if inline else []),
        "jobs": {"j": {**job, "jobResourcePaths": resources or []}},
    }
    return json.dumps(value)


def test_drafts_per_type() -> None:
    text = inventory.canonical_draft(WF, wf(["/r"]), "/w")
    assert json.loads(text)["path"] == "/w" and "versionId" not in json.loads(text)
    assert inventory.canonical_draft(T.ITEM_TYPE_LOCK, '{"limit": 2, "path": "/x"}', "/l") == '{"limit": 2}'
    jr = inventory.canonical_draft(T.ITEM_TYPE_JOB_RESOURCE, '{"variables": {"b": "1", "a": "$x"}}', "/r")
    assert jr == '{"variables": {"a": "$x", "b": "1"}}'
    bad = [
        (T.ITEM_TYPE_LOCK, '{"limit": 0}', "limit: a lock needs a limit of at least 1"),
        (T.ITEM_TYPE_LOCK, '{"limt": 1}', 'no field named "limt"'),
        (T.ITEM_TYPE_JOB_RESOURCE, '{"variables": {"a": 1}}', "variables"),
        (T.ITEM_TYPE_JOB_RESOURCE, '{"env": {"A": "1 +"}}', "env.A"),
        (T.ITEM_TYPE_FILE_ORDER_SOURCE, '{"agent": "a", "directory": "/in"}', "workflowPath: missing"),
        (
            T.ITEM_TYPE_FILE_ORDER_SOURCE,
            '{"workflowPath": "w", "agent": "a", "directory": "/in"}',
            "workflowPath",
        ),
        (T.ITEM_TYPE_SCHEDULE, "{}", "workflowPath: missing"),
        (T.ITEM_TYPE_SCHEDULE, '{"workflowPath": "/w", "calendars": [{"x": 1}]}', "calendars[0]"),
        (T.ITEM_TYPE_CALENDAR, '{"type": "SOMETIMES"}', "type: 'SOMETIMES' is not WORKINGDAYSCALENDAR"),
        (T.ITEM_TYPE_SUBAGENT_CLUSTER, '{"agent": "a", "subagents": []}', "subagents: missing"),
        (
            T.ITEM_TYPE_SUBAGENT_CLUSTER,
            '{"agent": "a", "subagents": [{"subagentId": "s"}, {"subagentId": "s"}]}',
            "subagents[1].subagentId: 's' given twice",
        ),
        (T.ITEM_TYPE_SUBAGENT_CLUSTER, '{"agent": "a", "schedulingMode": "SOMETIMES"}', "schedulingMode"),
        (T.ITEM_TYPE_NOTICE_BOARD, "[]", "json: must be a JSON object"),
        (T.ITEM_TYPE_UNSPECIFIED, "{}", "type: give the object's type"),
    ]
    for item_type, text, message in bad:
        with pytest.raises(InvalidArgument) as info:
            inventory.canonical_draft(item_type, text, "/x")
        assert message in str(info.value), (item_type, text, str(info.value))


def test_references_problems_and_moves() -> None:
    workflow = inventory.canonical_draft(WF, wf(["/r/a", "b"], inline=["/r/gone"]), "/w")
    schedule = '{"calendars": [{"calendarPath": "/c"}], "workflowPaths": ["/w", "/w2"]}'
    refs = inventory.references(WF, workflow)
    assert {(r.field, r.path) for r in refs} == {
        ("jobs.j.jobResourcePaths[0]", "/r/a"),
        ("jobs.j.jobResourcePaths[1]", "b"),
        ("instructions[1].execute.job.jobResourcePaths[0]", "/r/gone"),
    }
    existing = {(T.ITEM_TYPE_JOB_RESOURCE, "/r/a"), (WF, "/w"), (T.ITEM_TYPE_CALENDAR, "/c")}
    found = inventory.problems(
        [("/w", WF, workflow), ("/s", T.ITEM_TYPE_SCHEDULE, schedule)], lambda t, p: (t, p) in existing
    )
    assert [str(p) for p in found] == [
        "workflow /w: instructions[1].execute.job.jobResourcePaths[0]:"
        " no job resource /r/gone in the inventory",
        "workflow /w: jobs.j.jobResourcePaths[1]: 'b' is not an absolute path",
        "schedule /s: workflowPaths[1]: no workflow /w2 in the inventory",
    ]
    with pytest.raises(InvalidArgument, match="schedule /s: workflowPaths"):
        inventory.check_problems(found)

    moved = {(T.ITEM_TYPE_JOB_RESOURCE, "/r/a"): "/res/a", (WF, "/w"): "/flows/w"}
    rewritten = inventory.rewrite_references(WF, workflow, moved, "/w")
    assert rewritten is not None and json.loads(rewritten)["jobs"]["j"]["jobResourcePaths"] == ["/res/a", "b"]
    schedule2 = inventory.rewrite_references(T.ITEM_TYPE_SCHEDULE, schedule, moved, "/s")
    assert schedule2 is not None and json.loads(schedule2)["workflowPaths"] == ["/flows/w", "/w2"]
    assert inventory.rewrite_references(T.ITEM_TYPE_SCHEDULE, schedule, {}, "/s") is None
    # A workflow named like the moved job resource is not one.
    assert inventory.rewrite_references(WF, workflow, {(WF, "/r/a"): "/x"}, "/w") is None


def test_calendars_and_schedules_follow_the_daily_plan_rules() -> None:
    cal, sched = T.ITEM_TYPE_CALENDAR, T.ITEM_TYPE_SCHEDULE
    bad = [
        (
            cal,
            '{"includes": {"monthdays": [{"days": [1, 2, 32]}]}}',
            "includes.monthdays[0].days[2]: 32 is not a day",
        ),
        (
            sched,
            '{"workflowPaths": ["/w"], "calendars": [{"calendarPath": "/c", "timeZone": "Europe/Berln"}]}',
            "calendars[0].timeZone: unknown time zone 'Europe/Berln'",
        ),
        (
            sched,
            '{"workflowPaths": ["/w"], "nonWorkingDayCalendars": [{"calendarPath": "c"}]}',
            "nonWorkingDayCalendars[0].calendarPath: 'c' is not an absolute object path",
        ),
    ]
    for item_type, text, message in bad:
        with pytest.raises(InvalidArgument) as info:
            inventory.canonical_draft(item_type, text, "/x")
        assert message in str(info.value), str(info.value)
    holidays = '{"type": "NONWORKINGDAYSCALENDAR", "includes": {"holidays": [{"dates": ["2026-12-25"]}]}}'
    assert json.loads(inventory.canonical_draft(cal, holidays, "/h"))["type"] == "NONWORKINGDAYSCALENDAR"

    schedule = '{"workflowPath": "/w", "nonWorkingDayCalendars": [{"calendarPath": "/h"}]}'
    assert [(r.field, r.path) for r in inventory.references(sched, schedule)] == [
        ("workflowPath", "/w"),
        ("nonWorkingDayCalendars[0].calendarPath", "/h"),
    ]
    assert [str(p) for p in inventory.problems([("/s", sched, schedule)], lambda t, p: p == "/w")] == [
        "schedule /s: nonWorkingDayCalendars[0].calendarPath: no calendar /h in the inventory"
    ]
    moved = inventory.rewrite_references(sched, schedule, {(cal, "/h"): "/cal/h"}, "/s")
    assert moved is not None and json.loads(moved)["nonWorkingDayCalendars"] == [{"calendarPath": "/cal/h"}]
    # A draft stored under older rules is refused when it is released.
    stale = '{"workflowPath": "/w", "cycle": "SOMETIMES"}'
    assert [str(p) for p in inventory.problems([("/s", sched, stale)], lambda t, p: True)] == [
        "schedule /s: cycle: 'SOMETIMES' is not one of ELAPSED or WALL"
    ]


def test_deployable_and_imported() -> None:
    workflow = inventory.deployable(WF, "/w", inventory.canonical_draft(WF, wf(), "/w"), "v9")
    assert json.loads(workflow.json)["versionId"] == "v9" and workflow.version_id == "v9"
    resource = inventory.deployable(T.ITEM_TYPE_JOB_RESOURCE, "/r", '{"env": {"A": "1"}}', "v9")
    assert resource.json == '{"env": {"A": "1"}, "path": "/r"}'  # no versionId: the proto has none

    item, draft = inventory.imported(workflow, "items[0]", "new")
    assert item.version_id == "v9" and "versionId" not in json.loads(draft)
    item, _ = inventory.imported(
        items_pb2.SignedItem(type=T.ITEM_TYPE_JOB_RESOURCE, path="/r", json=resource.json), "items[0]", "new"
    )
    assert item.version_id == "new"
    elsewhere = items_pb2.SignedItem(type=WF, path="/other", json=workflow.json)
    with pytest.raises(InvalidArgument, match="the JSON names path '/w', the archive '/other'"):
        inventory.imported(elsewhere, "items[0]", "new")
    calendar = items_pb2.SignedItem(type=T.ITEM_TYPE_CALENDAR, path="/c", json="{}")
    with pytest.raises(InvalidArgument, match="calendar objects are not deployed"):
        inventory.imported(calendar, "items[0]", "new")
    assert "released" in inventory.not_deployable_reason(T.ITEM_TYPE_SCHEDULE)
    assert (
        inventory.not_deployable_reason(T.ITEM_TYPE_NOTICE_BOARD)
        == "notice_board objects cannot be deployed yet"
    )


def test_every_rpc_has_a_permission_and_roles_grant_them() -> None:
    methods = {
        f"{service.name}.{method.name}"
        for service in joc_pb2.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert methods == set(auth.METHODS)
    P = auth.Permission
    assert auth.permissions_of([joc_pb2.ROLE_VIEWER]) == {P.VIEW, P.ANY}
    assert auth.permissions_of([joc_pb2.ROLE_EDITOR, joc_pb2.ROLE_OPERATOR]) == {
        P.VIEW,
        P.EDIT,
        P.ORDERS,
        P.ANY,
    }
    assert auth.permissions_of([joc_pb2.ROLE_ADMIN]) == set(P)
    caller = auth.Caller("bob", "bob", auth.permissions_of([joc_pb2.ROLE_VIEWER]))
    with pytest.raises(auth.PermissionDenied, match="account bob may not deploy"):
        caller.require(P.DEPLOY)
    token = auth.new_token()
    assert token.startswith("ost_") and len(auth.hash_token(token)) == 64 and auth.new_token() != token
