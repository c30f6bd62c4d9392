"""Controller and director cores driven together in memory: the exact events of an order's life."""

from __future__ import annotations

import copy

import pytest

from controller_svc.core import ENDED_ORDER_RETENTION_MS, ControllerCore, ControllerState, WorkKey
from director_svc.core import DirectorCore, DirectorState
from gen.ostinato.common.v1 import events_pb2, items_pb2
from gen.ostinato.controller.v1 import controller_pb2
from gen.ostinato.subagent.v1 import subagent_pb2
from ostinato.errors import InvalidArgument, NotFound
from ostinato.journal import snapshot
from ostinato.workflow.model import canonical_json, parse_workflow
from ostinato.workflow.values import parse_cli_value

T0 = 1_700_000_000_000

WORKFLOW = """{
  "instructions": [{"execute": {"jobName": "first"}}, {"execute": {"jobName": "second"}}],
  "jobs": {
    "first": {"agent": "agent-1", "processLimit": 10, "defaultArguments": {"greeting": {"string": "hi"}},
              "executable": {"shellScript": {"script": "echo $GREETING",
              "env": {"GREETING": "$greeting"}}}},
    "second": {"agent": "agent-1", "executable": {"shellScript": {"script": "exit 0"}}}
  }
}"""


def kinds(events: list[events_pb2.Event]) -> list[str]:
    return [str(e.WhichOneof("kind")) for e in events]


def signed(json_text: str, path: str = "/wf", version: str = "v1") -> items_pb2.SignedItem:
    wf = parse_workflow(json_text, path)
    wf.version_id = version
    return items_pb2.SignedItem(
        type=items_pb2.ITEM_TYPE_WORKFLOW, path=path, version_id=version, json=canonical_json(wf)
    )


def exited(seq: int, key: str, rc: int = 0, signal: int = 0) -> subagent_pb2.SessionResponse:
    return subagent_pb2.SessionResponse(
        seq=seq, process_exited=subagent_pb2.ProcessExited(process_key=key, return_code=rc, signal=signal)
    )


def output(seq: int, key: str, text: str) -> subagent_pb2.SessionResponse:
    return subagent_pb2.SessionResponse(
        seq=seq,
        process_output=subagent_pb2.ProcessOutput(
            process_key=key, stream=subagent_pb2.OUTPUT_STREAM_STDOUT, chunk=text
        ),
    )


@pytest.fixture
def cores() -> tuple[ControllerCore, DirectorCore]:
    controller = ControllerCore(ControllerState(), frozenset({"agent-1"}))
    director = DirectorCore(DirectorState(), "agent-1", ["s1", "s2"])
    return controller, director


def add(controller: ControllerCore, order_id: str = "o1", **args: str) -> list[events_pb2.Event]:
    new = controller_pb2.NewOrder(id=order_id, workflow_path="/wf")
    for k, v in args.items():
        new.arguments[k].CopyFrom(parse_cli_value(v))
    events, _ = controller.add_orders([new], T0)
    return events


def test_order_runs_through_both_cores(cores: tuple[ControllerCore, DirectorCore]) -> None:
    controller, director = cores
    assert kinds(controller.deploy([signed(WORKFLOW)], T0)) == ["item_deployed"]
    assert controller.deploy([signed(WORKFLOW)], T0) == []  # same version again: nothing

    assert kinds(add(controller, greeting="hello")) == ["order_added", "order_attachable"]
    assert controller.orders_to_attach("agent-1", controller.state.last_event_id)[0].id == "o1"

    director.attach_items([controller.state.signed_items[("/wf", "v1")]], T0)
    welcome_events = director.subagent_welcome("s1", subagent_pb2.Welcome(run_id="r1"), T0, set())
    assert kinds(welcome_events) == ["subagent_messages_observed"]
    attach = director.attach_orders([controller.state.orders["o1"]], T0, available={"s1"})
    assert kinds(attach) == ["order_attached", "order_started", "order_processing_started"]
    assert director.attach_orders([controller.state.orders["o1"]], T0, {"s1"}) == []  # idempotent

    spec = director.processes_to_start("s1", director.state.last_event_id)[0]
    assert spec.env["GREETING"] == "hello" and spec.env["OSTINATO_ORDER_ID"] == "o1"
    assert spec.process_key == "o1@0#0"

    first = director.subagent_messages(
        "s1", "r1", [output(1, spec.process_key, "hello\n"), exited(2, spec.process_key)], T0, {"s1"}
    )
    assert kinds(first) == [
        "order_std_written",
        "order_processed",
        "order_moved",
        "order_processing_started",
        "subagent_messages_observed",
    ]
    # The same messages again (a resend after reconnect) change nothing.
    assert director.subagent_messages("s1", "r1", [exited(2, spec.process_key)], T0, {"s1"}) == []

    key2 = director.state.orders["o1"].processing.process_key
    second = director.subagent_messages("s1", "r1", [exited(3, key2)], T0, {"s1"})
    assert kinds(second) == [
        "order_processed",
        "order_moved",
        "order_detachable",
        "subagent_messages_observed",
    ]
    assert director.orders_detachable(director.state.last_event_id) == ["o1"]

    agent_log = list(director.state.log.after(0, director.state.last_event_id))
    mirrored = controller.on_agent_events("agent-1", agent_log, T0)
    assert kinds(mirrored) == [
        "item_attached",  # the agent journaled the workflow: its deployment is complete there
        "order_attached",
        "order_started",
        "order_processing_started",
        "order_std_written",
        "order_processed",
        "order_moved",
        "order_processing_started",
        "order_processed",
        "order_moved",
        "order_detachable",
        "agent_events_observed",
    ]
    assert controller.orders_to_detach("agent-1", controller.state.last_event_id) == ["o1"]

    detached = director.detach_orders(["o1"], T0)
    assert kinds(detached) == ["order_detached"] and "o1" not in director.state.orders
    final = controller.on_agent_events("agent-1", detached, T0)
    assert kinds(final) == ["order_detached", "order_finished", "order_deleted", "agent_events_observed"]
    assert controller.state.orders == {}
    # Agent events already observed are not applied twice.
    assert controller.on_agent_events("agent-1", detached, T0) == []


def test_failed_job_fails_order_at_controller(cores: tuple[ControllerCore, DirectorCore]) -> None:
    controller, director = cores
    controller.deploy([signed(WORKFLOW)], T0)
    add(controller)
    director.attach_items([controller.state.signed_items[("/wf", "v1")]], T0)
    director.subagent_welcome("s1", subagent_pb2.Welcome(run_id="r1"), T0, set())
    director.attach_orders([controller.state.orders["o1"]], T0, {"s1"})
    key = director.state.orders["o1"].processing.process_key
    events = director.subagent_messages("s1", "r1", [exited(1, key, rc=3)], T0, {"s1"})
    assert kinds(events) == ["order_processed", "order_detachable", "subagent_messages_observed"]
    assert events[0].order_processed.outcome.return_code == 3
    mirrored = controller.on_agent_events("agent-1", director.state.log.after(0, 10**9), T0)
    detached = director.detach_orders(["o1"], T0)
    final = controller.on_agent_events("agent-1", detached, T0)
    assert kinds(final) == ["order_detached", "order_failed", "agent_events_observed"]
    assert mirrored  # the failed order stays at the controller, to be resumed or cancelled
    assert controller.state.orders["o1"].state == 8  # FAILED


def test_restarted_subagent_disrupts_lost_process_but_resends_unsent(
    cores: tuple[ControllerCore, DirectorCore],
) -> None:
    controller, director = cores
    controller.deploy([signed(WORKFLOW)], T0)
    add(controller, "o1")
    add(controller, "o2")
    director.attach_items([controller.state.signed_items[("/wf", "v1")]], T0)
    director.subagent_welcome("s1", subagent_pb2.Welcome(run_id="r1"), T0, set())
    director.attach_orders([controller.state.orders["o1"], controller.state.orders["o2"]], T0, {"s1"})
    k1 = director.state.orders["o1"].processing.process_key
    # Same run, o1's start known to the subagent, o2's never arrived: o2's is sent again.
    assert (
        director.subagent_welcome("s1", subagent_pb2.Welcome(run_id="r1", known_process_keys=[k1]), T0, set())
        == []
    )
    to_send = {s.process_key for s in director.processes_to_start("s1", director.state.last_event_id)} - {k1}
    assert to_send == {director.state.orders["o2"].processing.process_key}
    # Another run: both processes are lost, and neither runs a second time.
    events = director.subagent_welcome("s1", subagent_pb2.Welcome(run_id="r2"), T0, set())
    assert director.processes_to_start("s1", director.state.last_event_id) == []
    assert kinds(events) == [
        "order_processed",
        "order_detachable",
        "order_processed",
        "order_detachable",
        "subagent_messages_observed",
    ]
    assert events[0].order_processed.outcome.kind == 4  # DISRUPTED


def test_round_robin_over_available_subagents(cores: tuple[ControllerCore, DirectorCore]) -> None:
    controller, director = cores
    controller.deploy([signed(WORKFLOW)], T0)
    director.attach_items([controller.state.signed_items[("/wf", "v1")]], T0)
    for i in range(4):
        add(controller, f"o{i}")
    director.attach_orders([controller.state.orders[f"o{i}"] for i in range(4)], T0, {"s1", "s2"})
    picked = [director.state.orders[f"o{i}"].processing.subagent_id for i in range(4)]
    assert picked == ["s1", "s2", "s1", "s2"]


def test_no_subagent_keeps_order_ready_until_one_comes(cores: tuple[ControllerCore, DirectorCore]) -> None:
    controller, director = cores
    controller.deploy([signed(WORKFLOW)], T0)
    director.attach_items([controller.state.signed_items[("/wf", "v1")]], T0)
    add(controller)
    assert kinds(director.attach_orders([controller.state.orders["o1"]], T0, set())) == [
        "order_attached",
        "order_started",
    ]
    assert kinds(director.wake(T0, {"s2"})) == ["order_processing_started"]
    assert director.state.orders["o1"].processing.subagent_id == "s2"


def test_scheduled_order_starts_at_its_time_on_the_agent(cores: tuple[ControllerCore, DirectorCore]) -> None:
    controller, director = cores
    controller.deploy([signed(WORKFLOW)], T0)
    director.attach_items([controller.state.signed_items[("/wf", "v1")]], T0)
    new = controller_pb2.NewOrder(id="later", workflow_path="/wf")
    new.scheduled_for.FromMilliseconds(T0 + 60_000)
    events, _ = controller.add_orders([new], T0)
    assert kinds(events) == ["order_added", "order_attachable"]
    assert kinds(director.attach_orders([controller.state.orders["later"]], T0, {"s1"})) == ["order_attached"]
    assert director.next_wake_ms() == T0 + 60_000
    assert director.wake(T0 + 59_999, {"s1"}) == []
    assert kinds(director.wake(T0 + 60_000, {"s1"})) == ["order_started", "order_processing_started"]


def test_bad_input_named(cores: tuple[ControllerCore, DirectorCore]) -> None:
    controller, _ = cores
    with pytest.raises(NotFound, match="orders\\[0\\].workflow_path: unknown workflow '/nope'"):
        controller.add_orders([controller_pb2.NewOrder(id="x", workflow_path="/nope")], T0)
    other_agent = WORKFLOW.replace('"agent-1"', '"agent-9"')
    with pytest.raises(InvalidArgument, match="unknown agent\\(s\\) agent-9"):
        controller.deploy([signed(other_agent)], T0)
    assert controller.state.last_event_id == 0  # nothing journaled for rejected input


def test_replaying_the_journal_rebuilds_the_same_state(cores: tuple[ControllerCore, DirectorCore]) -> None:
    controller, director = cores
    controller.deploy([signed(WORKFLOW)], T0)
    for i in range(3):
        add(controller, f"o{i}")
    replayed = ControllerState()
    for e in controller.state.log.after(0, 10**9):
        replayed.apply(copy.deepcopy(e))
    assert replayed.orders == controller.state.orders
    assert replayed.current_version == controller.state.current_version


def test_agent_work_keys_each_piece_as_of_when_it_was_chosen(
    cores: tuple[ControllerCore, DirectorCore],
) -> None:
    """A driver awaits between choosing and recording what it sent. If the order moves on in
    between (here: its whole run at the agent is mirrored back), the attach must still be keyed
    by the event id it was chosen at, or the detach that follows looks sent already (the
    orders that stayed detachable after a controller restart)."""
    controller, director = cores
    controller.deploy([signed(WORKFLOW)], T0)
    add(controller)
    sent: set[WorkKey] = set()
    work = controller.agent_work("agent-1", controller.state.last_event_id, sent)
    assert [(key[0], key[1]) for key, _ in work.attach] == [("attach", "o1")] and not work.detach

    # While the attach is on its way, the agent's whole run of the order comes back.
    director.attach_items([controller.state.signed_items[("/wf", "v1")]], T0)
    director.subagent_welcome("s1", subagent_pb2.Welcome(run_id="r1"), T0, set())
    director.attach_orders([o for _, o in work.attach], T0, available={"s1"})
    for seq in (1, 2):
        key = director.state.orders["o1"].processing.process_key
        director.subagent_messages("s1", "r1", [exited(seq, key)], T0, {"s1"})
    controller.on_agent_events("agent-1", list(director.state.log.after(0, director.state.last_event_id)), T0)
    sent |= {key for key, _ in work.attach}

    later = controller.agent_work("agent-1", controller.state.last_event_id, sent)
    assert [i for _, i in later.detach] == ["o1"] and not later.attach
    assert controller.stale_keys(sent) == {key for key, _ in work.attach}


def test_an_order_id_that_ended_is_not_added_again_within_the_retention() -> None:
    """JOC repeats AddOrders when a fail-over swallowed the answer; by then the order may have
    run and ended. The repeat must not run it a second time."""
    controller = ControllerCore(ControllerState(), frozenset({"agent-1"}))
    # The condition is false, so the order ends at the controller without going to an agent.
    skipped = '{"instructions": [{"ifElse": {"condition": "false", "then": {"instructions": []}}}]}'
    controller.deploy([signed(skipped, "/empty")], T0)

    def add_at(order_id: str, at_ms: int) -> tuple[list[str], bool]:
        new = controller_pb2.NewOrder(id=order_id, workflow_path="/empty")
        events, [added] = controller.add_orders([new], at_ms)
        return kinds(events), added.existed

    assert add_at("o1", T0) == (
        ["order_added", "order_started", "order_moved", "order_finished", "order_deleted"],
        False,
    )
    assert "o1" not in controller.state.orders
    assert add_at("o1", T0 + 1000) == ([], True)

    # Forgotten once the retention has passed (the next order that ends expires it).
    later = T0 + ENDED_ORDER_RETENTION_MS + 1
    add_at("o2", later)
    assert "o1" not in controller.state.ended_orders and "o2" in controller.state.ended_orders
    assert add_at("o1", later)[1] is False

    # Kept in snapshots, so a restarted or new node remembers the same ids.
    restored = snapshot.loads(snapshot.dumps(controller.state), ControllerState)
    assert restored.ended_orders == controller.state.ended_orders
    assert list(restored.ended_expiry) == list(controller.state.ended_expiry)
