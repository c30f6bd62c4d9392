"""Metrics from committed events, google.rpc details of errors, structured log lines."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from google.rpc import error_details_pb2
from prometheus_client.metrics import MetricWrapperBase

from gen.ostinato.common.v1 import events_pb2
from ostinato import logs, metrics, rpc
from ostinato.errors import InvalidArgument, NotActive, NotFound
from ostinato.journal.state import JournaledState
from tests.unit.sim import HANG, Result, Sim

README = Path(__file__).resolve().parents[2] / "README.md"


def sample(metric: MetricWrapperBase, suffix: str = "", **labels: str) -> float:
    for family in metric.collect():
        for s in family.samples:
            if s.name == family.name + suffix and s.labels == labels:
                return float(s.value)
    return 0.0


class Fed:
    """Hands a node's committed events to NodeMetrics, as the node's commit hook does."""

    def __init__(self, state: JournaledState) -> None:
        self.state = state
        self.seen = 0
        self.node = metrics.NodeMetrics()
        self.node.activated(state)

    def commit(self) -> None:
        events = self.state.log.after(self.seen, self.state.last_event_id)
        if events:
            self.seen = events[-1].id
            self.node.committed(events, self.state)


def test_orders_by_state_transitions_and_job_durations_follow_committed_events() -> None:
    sim = Sim(script=lambda spec: Result(rc=HANG))
    sim.deploy({"instructions": [{"execute": {"jobName": "work"}}], "jobs": {"work": _job()}}, path="/m")
    controller = Fed(sim.controller.state)  # one node per process: the gauges are the process's
    finished_before = sample(metrics.ORDER_TRANSITIONS, "_total", event="order_finished")
    sim.add("a", path="/m")
    sim.add("b", path="/m")
    sim.run()
    controller.commit()
    assert sample(metrics.ORDERS, state="processing") == 2
    durations_before = sample(
        metrics.JOB_DURATION, "_count", workflow="/m", job_name="work", outcome="succeeded"
    )

    sim.advance(1500)
    for key in list(sim.running):
        sim.finish(key, Result(rc=0))
    controller.commit()
    assert sample(metrics.ORDERS, state="processing") == 0
    assert sample(metrics.ORDERS, state="finished") == 0  # ended orders leave the controller
    assert sample(metrics.ORDER_TRANSITIONS, "_total", event="order_finished") == finished_before + 2
    assert (
        sample(metrics.JOB_DURATION, "_count", workflow="/m", job_name="work", outcome="succeeded")
        == durations_before + 2
    )
    assert sample(metrics.EVENTS_UNRELEASED) == sim.controller.state.log.last_id - (
        sim.controller.state.log.released_until
    )

    sim.add("c", path="/m")
    sim.run()
    controller.commit()
    assert sample(metrics.ORDERS, state="processing") == 1
    controller.node.deactivated()  # a passive node holds no orders: sums over nodes stay right
    assert sample(metrics.ORDERS, state="processing") == 0


def test_node_metrics_count_the_orders_of_the_state_a_node_starts_from() -> None:
    sim = Sim(script=lambda spec: Result(rc=HANG))
    sim.deploy({"instructions": [{"execute": {"jobName": "work"}}], "jobs": {"work": _job()}}, path="/m")
    sim.add("later", path="/m", at=sim.now + 3_600_000)
    sim.add("now", path="/m")
    sim.run()
    Fed(sim.controller.state)
    assert sample(metrics.ORDERS, state="fresh") == 1  # kept as bytes until its time
    assert sample(metrics.ORDERS, state="processing") == 1


def test_daily_plan_counts_take_known_states_only() -> None:
    before = sample(metrics.DAILY_PLAN_ORDERS, "_total", state="late")
    metrics.daily_plan_orders("late", 3)
    assert sample(metrics.DAILY_PLAN_ORDERS, "_total", state="late") == before + 3
    try:
        metrics.daily_plan_orders("lost")
    except ValueError as e:
        assert "planned" in str(e)
    else:
        raise AssertionError("an unknown daily plan state was counted")


def test_errors_carry_a_reason_and_the_field_as_google_rpc_details() -> None:
    status = rpc.status_details(InvalidArgument("unknown job 'b'", field="instructions[0].execute.jobName"))
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info) and status.details[1].Unpack(bad)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "INVALID_ARGUMENT",
        "ostinato",
        {"field": "instructions[0].execute.jobName"},
    )
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("instructions[0].execute.jobName", "unknown job 'b'")
    ]
    assert status.code == 3 and status.message == "instructions[0].execute.jobName: unknown job 'b'"

    passive = rpc.status_details(NotActive("node b is not active", active_address="127.0.0.1:4444"))
    assert len(passive.details) == 1 and passive.details[0].Unpack(info)
    assert (info.reason, info.metadata["active_address"]) == ("NOT_ACTIVE", "127.0.0.1:4444")
    assert passive.code == 14
    assert rpc.status_details(NotFound("no order x")).details[0].Unpack(info) and info.reason == "NOT_FOUND"


def test_json_log_lines_carry_the_order_fields() -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    record = logging.LogRecord(
        "ostinato.orders", logging.INFO, __file__, 1, "order %s: %s", ("o1", "finished"), None
    )
    for key, value in logs.about_order("o1", "/wf", "j", traceparent, agent="agent-1").items():
        setattr(record, key, value)
    line = json.loads(logs.JsonFormatter("controller").format(record))
    assert line["message"] == "order o1: finished"
    assert {k: line[k] for k in ("service", "order_id", "workflow", "job", "agent", "trace_id")} == {
        "service": "controller",
        "order_id": "o1",
        "workflow": "/wf",
        "job": "j",
        "agent": "agent-1",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    }
    assert logs.about_order("o2") == {"order_id": "o2"}  # no empty fields
    assert logs.trace_id_of("garbage") == ""


def test_readme_lists_every_metric_and_only_those() -> None:
    text = README.read_text()
    section = text[text.index("## Metrics") :]
    section = section[: section.index("\n## ", 1)]
    listed = set(re.findall(r"`(ostinato_[a-z_]+)`", section))
    defined = set()
    for group in metrics.GROUPS.values():
        for metric in group:
            family = next(iter(metric.describe()))
            defined.add(family.name + ("_total" if family.type == "counter" else ""))
    assert listed == defined


def _job() -> dict:
    return {"agent": "agent-1", "executable": {"shellScript": {"script": "true"}}, "processLimit": 2}


def test_journal_events_without_an_order_change_no_order_metric() -> None:
    before = sample(metrics.ORDER_TRANSITIONS, "_total", event="events_released")
    state = Sim().controller.state
    fed = Fed(state)
    state.emit(0, events_released=events_pb2.EventsReleased(until_id=0))
    fed.commit()
    assert sample(metrics.ORDER_TRANSITIONS, "_total", event="events_released") == before
