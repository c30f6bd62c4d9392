"""JOC's daily plan without a controller: the decisions (catch-up, diff, followed states), the
store's tables on a real SQLite file, the settings, the CLI's month calendar and `[dailyplan]`."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from gen.ostinato.common.v1 import order_pb2
from joc_svc.dailyplan import PlanSettings, catch_up, date_range, diff
from joc_svc.store import Store
from joc_svc.store.plan import Mode, PlanRecord, PlanRow, PlanState, followed
from ostinato.cli.plan import month_calendar
from ostinato.errors import InvalidArgument
from ostinato.topology import Topology, TopologyConfig

NOW = datetime(2026, 3, 29, 12, 0, tzinfo=UTC)
DAY = date(2026, 3, 29)


def row(order_id: str, at: datetime, schedule: str = "/s", workflow: str = "/w", **kw: object) -> PlanRow:
    values: dict = {
        "order_id": order_id,
        "controller_id": "c",
        "plan_date": at.date(),
        "schedule_path": schedule,
        "workflow_path": workflow,
        "order_name": "n",
        "scheduled_for": at,
        "submission": 0,
        **kw,
    }
    return PlanRow(**values)


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def test_catch_up_submits_one_start_per_schedule_within_the_window() -> None:
    overdue = [
        row("a1", NOW - minutes(50), "/a"),
        row("a2", NOW - minutes(20), "/a"),
        row("a3", NOW - minutes(10), "/a", workflow="/w1"),
        row("a3b", NOW - minutes(10), "/a", workflow="/w2"),  # the same start, another workflow
        row("b1", NOW - minutes(90), "/b"),  # older than the window
    ]
    submit, missed = catch_up(overdue, NOW, 3600)
    assert [r.order_id for r in submit] == ["a3", "a3b"]
    assert [r.order_id for r in missed] == ["a1", "a2", "b1"]
    assert catch_up(overdue, NOW, 0) == ([], overdue)  # no window: everything is missed


def test_diff_by_order_id() -> None:
    existing = [row("x", NOW), row("y", NOW)]
    planned = [row("y", NOW), row("z", NOW)]
    added, removed = diff(existing, planned)
    assert [r.order_id for r in added] == ["z"] and [r.order_id for r in removed] == ["x"]


def test_followed_states_and_late() -> None:
    submitted = row("o", NOW - timedelta(seconds=61), state=PlanState.SUBMITTED)
    assert followed(submitted, "FINISHED", NOW) == (PlanState.FINISHED, False)
    assert followed(submitted, "CANCELLED", NOW) == (PlanState.CANCELLED, False)
    assert followed(submitted, "FRESH", NOW) == (PlanState.SUBMITTED, True)  # not started 60 s after
    assert followed(submitted, None, NOW) == (PlanState.SUBMITTED, True)
    assert followed(submitted, "PROCESSING", NOW) == (PlanState.SUBMITTED, False)
    on_time = row("o", NOW - timedelta(seconds=59), state=PlanState.SUBMITTED)
    assert followed(on_time, "FRESH", NOW) == (PlanState.SUBMITTED, False)
    failed = row("o", NOW, state=PlanState.FAILED)
    assert followed(failed, "FINISHED", NOW) == (PlanState.FINISHED, False)  # resumed, then finished
    planned = row("o", NOW - minutes(5))
    assert followed(planned, None, NOW) == (PlanState.PLANNED, False)  # only submitted orders are late


@pytest.fixture
def store(tmp_path: Path):
    s = Store(f"sqlite:///{tmp_path}/joc.db")
    yield s
    s.close()


def record(day: date, schedule: str, mode: Mode, number: int = 0) -> PlanRecord:
    return PlanRecord("c", day, schedule, number, mode, "2026f", NOW)


def test_a_plan_is_written_once_and_submitted_by_its_records_mode(store: Store) -> None:
    later = NOW + timedelta(days=1)
    rows = [
        row("auto-today", NOW + minutes(1), "/auto"),
        row("auto-tomorrow", later, "/auto"),
        row("now-tomorrow", later, "/now"),
        row("held-today", NOW + minutes(1), "/held"),
    ]
    records = [
        record(DAY, "/auto", Mode.AUTO),
        record(DAY + timedelta(days=1), "/auto", Mode.AUTO),
        record(DAY + timedelta(days=1), "/now", Mode.NOW),
        record(DAY, "/held", Mode.HELD),
    ]
    assert store.write_plan(records, rows) == 4
    assert store.write_plan(records, rows) == 0  # planning twice changes nothing
    assert set(store.plan_records("c", DAY, DAY + timedelta(days=1))) == {
        (r.plan_date, r.schedule_path) for r in records
    }

    def due(submit_before: date | None) -> list[str]:
        return [r.order_id for r in store.rows_to_submit("c", submit_before, NOW, None)]

    assert due(DAY + timedelta(days=1)) == ["auto-today", "now-tomorrow"]
    assert due(DAY + timedelta(days=2)) == ["auto-today", "auto-tomorrow", "now-tomorrow"]
    assert due(None) == ["now-tomorrow"]  # the plan is off: only what was asked for
    store.mark_refused([("now-tomorrow", "unknown workflow")], NOW)
    assert due(None) == []  # refused lately: offered again after a while
    assert [r.order_id for r in store.rows_to_submit("c", None, NOW + minutes(2), None)] == ["now-tomorrow"]
    store.mark_submitted([("auto-today", "v1")], NOW)
    store.mark_missed(["auto-tomorrow"])
    assert due(DAY + timedelta(days=2)) == []  # submitted, missed, refused lately
    [submitted] = store.plan_rows("c", states=[PlanState.SUBMITTED])
    assert (submitted.order_id, submitted.workflow_version_id, submitted.submitted_at) == (
        "auto-today",
        "v1",
        NOW,
    )

    listed = {r.order_id: r for r in store.list_plan(None, None, "", "", NOW + minutes(5))}
    assert listed["auto-today"].late and listed["auto-today"].tz_version == "2026f"
    assert listed["auto-tomorrow"].missed
    assert store.follow(NOW + minutes(5)) == 1  # late is recorded
    assert store.plan_rows("c", states=[PlanState.SUBMITTED])[0].late

    assert store.delete_planned("c", DAY, DAY + timedelta(days=1), "/held") == {DAY: 1}
    assert "held-today" not in {r.order_id for r in store.plan_rows("c")}
    assert (DAY, "/held") in store.plan_records("c", DAY, DAY)  # the record stays: not planned again


def test_replan_replaces_rows_and_records_in_one_go(store: Store) -> None:
    store.write_plan(
        [record(DAY, "/s", Mode.AUTO)], [row("old", NOW + minutes(1)), row("gone", NOW + minutes(2))]
    )
    store.replan([record(DAY, "/s", Mode.HELD, number=1)], ["old"], ["gone"], [row("new", NOW + minutes(1))])
    states = {r.order_id: r.state for r in store.plan_rows("c")}
    assert states == {"new": PlanState.PLANNED, "gone": PlanState.CANCELLED}
    [kept] = store.plan_records("c", DAY, DAY).values()
    assert (kept.number, kept.mode) == (1, Mode.HELD)


def test_a_missed_order_the_controller_has_all_the_same_is_recorded_submitted(store: Store) -> None:
    """JOC went down between submitting and recording, and came back before its orders
    projection had the order: it was recorded missed, until the projection shows it."""
    store.write_plan([record(DAY, "/s", Mode.AUTO)], [row("lost", NOW - minutes(5))])
    store.mark_missed(["lost"])
    assert store.follow(NOW) == 0
    order = order_pb2.Order(
        id="lost", workflow_path="/w", workflow_version_id="v7", state=order_pb2.ORDER_STATE_FRESH
    )
    store.add_orders([(order, NOW)], "c")
    assert store.follow(NOW) == 1
    [found] = store.plan_rows("c")
    assert (found.state, found.missed, found.workflow_version_id) == (PlanState.SUBMITTED, False, "v7")


def test_settings_name_the_field() -> None:
    with pytest.raises(InvalidArgument, match="time_zone: unknown time zone 'Mars/Base'"):
        PlanSettings(time_zone="Mars/Base")
    with pytest.raises(InvalidArgument, match="days_ahead_submit"):
        PlanSettings(days_ahead_plan=2, days_ahead_submit=3)
    with pytest.raises(InvalidArgument, match="period_begin"):
        PlanSettings(period_begin="25:00")
    with pytest.raises(InvalidArgument, match="to_date: 2026-03-01 is before from_date"):
        date_range("2026-03-02", "2026-03-01")
    assert date_range("2026-03-02", "") == (date(2026, 3, 2), date(2026, 3, 2))


def test_month_calendar_marks_the_days_with_starts() -> None:
    lines = month_calendar(2026, 2, {date(2026, 2, 2): 1, date(2026, 2, 28): 48})
    assert lines[0].strip() == "February 2026"
    assert lines[1].split() == ["Mo", "Tu", "We", "Th", "Fr", "Sa", "Su"]
    assert lines[2].split() == ["1"]  # February 2026 begins on a Sunday
    assert "[1]  2" in lines[3] and "[48] 28" in lines[-1]


def test_dailyplan_section_of_the_topology_config(tmp_path: Path) -> None:
    config_file = tmp_path / "ostinato.toml"
    config_file.write_text(
        '[dailyplan]\ntime_zone = "Europe/Berlin"\ndays_ahead_submit = 1\n'
        "catch_up_seconds = 600\nenabled = false\n"
    )
    config = TopologyConfig.from_toml(config_file)
    args = Topology(tmp_path / "data", config)._joc_args("joc")
    assert args[args.index("--plan-time-zone") + 1] == "Europe/Berlin"
    assert args[args.index("--plan-submit-days-ahead") + 1] == "1"
    assert args[args.index("--plan-catch-up") + 1] == "600"
    assert "--no-daily-plan" in args
    config_file.write_text("[dailyplan]\nzone = 'UTC'\n")
    with pytest.raises(ValueError, match=r"\[dailyplan\] zone: unknown"):
        TopologyConfig.from_toml(config_file)
