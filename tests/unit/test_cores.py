"""Controller and director cores driven together in memory: the exact events of an order's life."""

from __future__ import annotations

import copy

import pytest

from controller_svc import core as c
from controller_svc.core import ENDED_ORDER_RETENTION_MS, ControllerCore, ControllerState
from director_svc import core as d
from director_svc.core import DirectorCore, DirectorState
from gen.ostinato.common.v1 import events_pb2, items_pb2, order_pb2
from ostinato.errors import InvalidArgument, NotFound
from ostinato.journal import snapshot
from ostinato.process import Exited, Output, Started, Stream
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


def exited(key: str, rc: int = 0, signal: int = 0) -> Exited:
    return Exited(key, return_code=rc, signal=signal)


def output(key: str, text: str) -> Output:
    return Output(key, Stream.STDOUT, text)


def messages(subagent: str, run: str, *numbered: tuple[int, Exited | Output]) -> d.SubagentMessages:
    return d.SubagentMessages(subagent, run, tuple(numbered))


@pytest.fixture
def cores() -> tuple[ControllerCore, DirectorCore]:
    controller = ControllerCore(ControllerState(), frozenset({"agent-1"}))
    director = DirectorCore(DirectorState(), "agent-1", ["s1", "s2"])
    return controller, director


def add(controller: ControllerCore, order_id: str = "o1", **args: str) -> list[events_pb2.Event]:
    new = c.NewOrder(order_id, "/wf", arguments={k: parse_cli_value(v) for k, v in args.items()})
    return controller.handle(c.AddOrders((new,)), T0)


def deploy(controller: ControllerCore, *items: items_pb2.SignedItem) -> list[events_pb2.Event]:
    return controller.handle(c.Deploy(items), T0)


def attach(director: DirectorCore, controller: ControllerCore, *order_ids: str) -> list[events_pb2.Event]:
    orders = tuple(controller.state.orders[i] for i in order_ids)
    return director.handle(d.AttachOrders(orders), T0)


def welcome(
    director: DirectorCore, subagent: str, run: str, known: frozenset[str] = frozenset()
) -> list[events_pb2.Event]:
    return director.handle(d.SubagentWelcomed(subagent, run, known), T0)


def mirror(controller: ControllerCore, events: list[events_pb2.Event]) -> list[events_pb2.Event]:
    return controller.handle(c.AgentEvents("agent-1", tuple(events)), T0)


def mirror_all(controller: ControllerCore, director: DirectorCore) -> None:
    """Every agent event the controller has not seen, in watch-sized batches."""
    while batch := director.state.log.after(controller.state.agent_observed.get("agent-1", 0), ALL):
        mirror(controller, batch)


ALL = 10**9
PROCESSING = order_pb2.ORDER_STATE_PROCESSING


def test_order_runs_through_both_cores(cores: tuple[ControllerCore, DirectorCore]) -> None:
    controller, director = cores
    assert kinds(deploy(controller, signed(WORKFLOW))) == ["item_deployed"]
    assert deploy(controller, signed(WORKFLOW)) == []  # same version again: nothing

    controller.agent_session("agent-1")
    added = add(controller, greeting="hello")
    assert kinds(added) == ["order_added", "order_attachable"]
    # Work only once the events that call for it are committed, and each piece once.
    assert not controller.agent_work("agent-1", added[0].id)
    work = controller.agent_work("agent-1", added[-1].id)
    assert [o.id for o in work.attach] == ["o1"] and not work.commands and not work.detach
    assert not controller.agent_work("agent-1", ALL)

    director.handle(d.AttachItems((controller.state.signed_items[("/wf", "v1")],)), T0)
    assert kinds(welcome(director, "s1", "r1")) == ["subagent_messages_observed"]
    attached = director.handle(d.AttachOrders(tuple(work.attach)), T0)
    assert kinds(attached) == ["order_attached", "order_started", "order_processing_started"]
    assert director.handle(d.AttachOrders(tuple(work.attach)), T0) == []  # idempotent

    assert not director.subagent_work("s1", attached[-2].id)  # the start is not committed yet
    [spec] = director.subagent_work("s1", attached[-1].id).starts
    assert spec.env["GREETING"] == "hello" and spec.env["OSTINATO_ORDER_ID"] == "o1"
    assert spec.process_key == "o1@0#0"
    assert not director.subagent_work("s1", ALL)  # handed out once

    first = director.handle(
        messages("s1", "r1", (1, output(spec.process_key, "hello\n")), (2, exited(spec.process_key))), T0
    )
    assert kinds(first) == [
        "order_std_written",
        "order_processed",
        "order_moved",
        "order_processing_started",
        "subagent_messages_observed",
    ]
    # The same messages again (a resend after reconnect) change nothing.
    assert director.handle(messages("s1", "r1", (2, exited(spec.process_key))), T0) == []

    key2 = director.state.orders["o1"].processing.process_key
    second = director.handle(messages("s1", "r1", (3, exited(key2))), T0)
    assert kinds(second) == [
        "order_processed",
        "order_moved",
        "order_detachable",
        "subagent_messages_observed",
    ]

    agent_log = list(director.state.log.after(0, director.state.last_event_id))
    mirrored = mirror(controller, agent_log)
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
    assert controller.agent_work("agent-1", ALL).detach == ["o1"]

    detached = director.handle(d.DetachOrders(("o1",)), T0)
    assert kinds(detached) == ["order_detached"] and "o1" not in director.state.orders
    final = mirror(controller, detached)
    assert kinds(final) == ["order_detached", "order_finished", "order_deleted", "agent_events_observed"]
    assert len(controller.state.orders) == 0
    # Agent events already observed are not applied twice.
    assert mirror(controller, detached) == []


def test_a_process_start_alone_is_not_journaled(cores: tuple[ControllerCore, DirectorCore]) -> None:
    """The director journals what subagents report only when it changes something: a start is
    acknowledged without a journal entry; the exit that follows records the seq past both."""
    controller, director = cores
    deploy(controller, signed(WORKFLOW))
    add(controller)
    director.handle(d.AttachItems((controller.state.signed_items[("/wf", "v1")],)), T0)
    welcome(director, "s1", "r1")
    attach(director, controller, "o1")
    key = director.state.orders["o1"].processing.process_key
    assert director.handle(messages("s1", "r1", (1, Started(key, 4242))), T0) == []
    events = director.handle(messages("s1", "r1", (2, exited(key))), T0)
    assert events[-1].subagent_messages_observed.until_seq == 2
    assert director.handle(messages("s1", "r1", (1, Started(key, 4242)), (2, exited(key))), T0) == []


def test_failed_job_fails_order_at_controller(cores: tuple[ControllerCore, DirectorCore]) -> None:
    controller, director = cores
    deploy(controller, signed(WORKFLOW))
    add(controller)
    director.handle(d.AttachItems((controller.state.signed_items[("/wf", "v1")],)), T0)
    welcome(director, "s1", "r1")
    attach(director, controller, "o1")
    key = director.state.orders["o1"].processing.process_key
    events = director.handle(messages("s1", "r1", (1, exited(key, rc=3))), T0)
    assert kinds(events) == ["order_processed", "order_detachable", "subagent_messages_observed"]
    assert events[0].order_processed.outcome.return_code == 3
    mirrored = mirror(controller, director.state.log.after(0, ALL))
    detached = director.handle(d.DetachOrders(("o1",)), T0)
    final = mirror(controller, detached)
    assert kinds(final) == ["order_detached", "order_failed", "agent_events_observed"]
    assert mirrored  # the failed order stays at the controller, to be resumed or cancelled
    assert controller.state.orders["o1"].state == 8  # FAILED


def test_restarted_subagent_disrupts_lost_process_but_resends_unsent(
    cores: tuple[ControllerCore, DirectorCore],
) -> None:
    controller, director = cores
    deploy(controller, signed(WORKFLOW))
    add(controller, "o1")
    add(controller, "o2")
    director.handle(d.AttachItems((controller.state.signed_items[("/wf", "v1")],)), T0)
    welcome(director, "s1", "r1")
    attach(director, controller, "o1", "o2")
    k1, k2 = (director.state.orders[o].processing.process_key for o in ("o1", "o2"))
    assert {s.process_key for s in director.subagent_work("s1", ALL).starts} == {k1, k2}
    # Same run, o1's start known to the subagent, o2's never arrived: o2's is sent again.
    assert welcome(director, "s1", "r1", known=frozenset({k1})) == []
    assert [s.process_key for s in director.subagent_work("s1", ALL).starts] == [k2]
    # Another run: both processes are lost, and neither runs a second time.
    events = welcome(director, "s1", "r2")
    assert director.subagent_work("s1", ALL) == d.SubagentWork()
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
    deploy(controller, signed(WORKFLOW))
    director.handle(d.AttachItems((controller.state.signed_items[("/wf", "v1")],)), T0)
    welcome(director, "s1", "r1")
    welcome(director, "s2", "r2")
    for i in range(4):
        add(controller, f"o{i}")
    attach(director, controller, *(f"o{i}" for i in range(4)))
    picked = [director.state.orders[f"o{i}"].processing.subagent_id for i in range(4)]
    assert picked == ["s1", "s2", "s1", "s2"]


def test_no_subagent_keeps_order_ready_until_one_comes(cores: tuple[ControllerCore, DirectorCore]) -> None:
    controller, director = cores
    deploy(controller, signed(WORKFLOW))
    director.handle(d.AttachItems((controller.state.signed_items[("/wf", "v1")],)), T0)
    add(controller)
    assert kinds(attach(director, controller, "o1")) == ["order_attached", "order_started"]
    assert director.handle(d.Tick(), T0) == []
    assert kinds(welcome(director, "s2", "r2")) == ["subagent_messages_observed", "order_processing_started"]
    assert director.state.orders["o1"].processing.subagent_id == "s2"


def test_orders_wait_for_a_process_slot_first_come_first_served(
    cores: tuple[ControllerCore, DirectorCore],
) -> None:
    controller, director = cores
    one_at_a_time = WORKFLOW.replace('"processLimit": 10', '"processLimit": 1')
    deploy(controller, signed(one_at_a_time))
    director.handle(d.AttachItems((controller.state.signed_items[("/wf", "v1")],)), T0)
    welcome(director, "s1", "r1")
    for i in range(4):
        add(controller, f"o{i}")
    attach(director, controller, "o0", "o1", "o2", "o3")
    processing = [o for o in ("o0", "o1", "o2", "o3") if director.state.orders[o].state == PROCESSING]
    assert processing == ["o0"]  # PROCESSING; the others wait, ready
    # o2 is cancelled while waiting: it leaves the queue, and o1, o3 start in turn.
    director.handle(d.CommandOrders((c.commands_pb2.OrderCommand(order_id="o2", cancel={}),)), T0)
    started = []
    for seq in range(1, 4):
        running = next(
            o
            for o in director.state.orders.values()
            if o.state == PROCESSING and o.processing.process_key.startswith(o.id + "@0#")
        )
        started.append(running.id)
        director.handle(messages("s1", "r1", (seq, exited(running.processing.process_key))), T0)
    assert started == ["o0", "o1", "o3"]


def test_scheduled_order_starts_at_its_time_on_the_agent(cores: tuple[ControllerCore, DirectorCore]) -> None:
    controller, director = cores
    deploy(controller, signed(WORKFLOW))
    director.handle(d.AttachItems((controller.state.signed_items[("/wf", "v1")],)), T0)
    welcome(director, "s1", "r1")
    events = controller.handle(c.AddOrders((c.NewOrder("later", "/wf", scheduled_for_ms=T0 + 60_000),)), T0)
    assert kinds(events) == ["order_added", "order_attachable"]
    assert kinds(attach(director, controller, "later")) == ["order_attached"]
    assert director.next_wake_ms() == T0 + 60_000
    assert director.handle(d.Tick(), T0 + 59_999) == []
    assert kinds(director.handle(d.Tick(), T0 + 60_000)) == ["order_started", "order_processing_started"]
    assert director.next_wake_ms() is None


def test_a_stimulus_visits_only_the_orders_it_concerns(
    cores: tuple[ControllerCore, DirectorCore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-order cost must not grow with the orders held: with 2,000 orders waiting for
    tomorrow, one order's job ending steps that order alone, at either core."""
    controller, director = cores
    deploy(controller, signed(WORKFLOW))
    director.handle(d.AttachItems((controller.state.signed_items[("/wf", "v1")],)), T0)
    welcome(director, "s1", "r1")
    tomorrow = T0 + 86_400_000
    held = tuple(c.NewOrder(f"h{i}", "/wf", scheduled_for_ms=tomorrow) for i in range(2000))
    controller.handle(c.AddOrders(held), T0)
    director.handle(d.AttachOrders(tuple(controller.agent_work("agent-1", ALL).attach)), T0)
    add(controller, "now")
    attach(director, controller, "now")
    mirror_all(controller, director)
    stepped: list[str] = []
    for module in (c, d):
        real = module.step
        monkeypatch.setattr(
            module, "step", lambda order, *a, real=real: stepped.append(order.id) or real(order, *a)
        )
    key = director.state.orders["now"].processing.process_key
    events = director.handle(messages("s1", "r1", (1, exited(key))), T0)
    mirror(controller, events)
    director.handle(d.Tick(), T0 + 1000)
    controller.handle(c.Tick(), T0 + 1000)
    assert set(stepped) == {"now"}
    assert director.next_wake_ms() == tomorrow  # the held orders wait at the agent
    assert controller.next_wake_ms() is None


def test_bad_input_named(cores: tuple[ControllerCore, DirectorCore]) -> None:
    controller, _ = cores
    with pytest.raises(NotFound, match="orders\\[0\\].workflow_path: unknown workflow '/nope'"):
        controller.handle(c.AddOrders((c.NewOrder("x", "/nope"),)), T0)
    other_agent = WORKFLOW.replace('"agent-1"', '"agent-9"')
    with pytest.raises(InvalidArgument, match="unknown agent\\(s\\) agent-9"):
        deploy(controller, signed(other_agent))
    assert controller.state.last_event_id == 0  # nothing journaled for rejected input


def test_replaying_the_journal_rebuilds_the_same_state(cores: tuple[ControllerCore, DirectorCore]) -> None:
    controller, director = cores
    deploy(controller, signed(WORKFLOW))
    for i in range(3):
        add(controller, f"o{i}")
    replayed = ControllerState()
    for e in controller.state.log.after(0, 10**9):
        replayed.apply(copy.deepcopy(e))
    assert replayed.orders == controller.state.orders
    assert replayed.current_version == controller.state.current_version


def test_agent_work_is_handed_out_as_of_the_event_that_called_for_it(
    cores: tuple[ControllerCore, DirectorCore],
) -> None:
    """A driver awaits between taking work and sending it. If the order moves on in between
    (here: its whole run at the agent is mirrored back), the detach that follows must still be
    handed out (the orders that stayed detachable after a controller restart); and a new session
    hands out again whatever is pending, once."""
    controller, director = cores
    deploy(controller, signed(WORKFLOW))
    controller.agent_session("agent-1")
    add(controller)
    work = controller.agent_work("agent-1", controller.state.last_event_id)
    assert [o.id for o in work.attach] == ["o1"] and not work.detach

    # While the attach is on its way, the agent's whole run of the order comes back.
    director.handle(d.AttachItems((controller.state.signed_items[("/wf", "v1")],)), T0)
    welcome(director, "s1", "r1")
    director.handle(d.AttachOrders(tuple(work.attach)), T0)
    for seq in (1, 2):
        key = director.state.orders["o1"].processing.process_key
        director.handle(messages("s1", "r1", (seq, exited(key))), T0)
    mirror(controller, list(director.state.log.after(0, director.state.last_event_id)))

    later = controller.agent_work("agent-1", controller.state.last_event_id)
    assert later.detach == ["o1"] and not later.attach
    assert not controller.agent_work("agent-1", ALL)
    controller.agent_session("agent-1")  # the session broke: the detach goes out again
    assert controller.agent_work("agent-1", ALL).detach == ["o1"]


def test_commands_go_to_the_agent_when_marks_change_not_with_every_event(
    cores: tuple[ControllerCore, DirectorCore],
) -> None:
    controller, director = cores
    deploy(controller, signed(WORKFLOW))
    director.handle(d.AttachItems((controller.state.signed_items[("/wf", "v1")],)), T0)
    welcome(director, "s1", "r1")
    controller.agent_session("agent-1")
    add(controller)
    director.handle(d.AttachOrders(tuple(controller.agent_work("agent-1", ALL).attach)), T0)
    mirror(controller, director.state.log.after(0, ALL))
    controller.handle(c.CommandOrder(c.commands_pb2.OrderCommand(order_id="o1", cancel={"kill": True})), T0)
    [command] = controller.agent_work("agent-1", ALL).commands
    assert command.order_id == "o1" and command.cancel.kill
    # The job's output mirrored meanwhile does not send the command again.
    key = director.state.orders["o1"].processing.process_key
    mirror(controller, director.handle(messages("s1", "r1", (1, output(key, "x"))), T0))
    assert not controller.agent_work("agent-1", ALL)
    results = director.command_results(d.CommandOrders((command,)))
    kills = director.handle(d.CommandOrders((command,)), T0)
    assert [r.error for r in results] == [""] and kinds(kills) == ["order_marked", "order_kill_requested"]
    work = director.subagent_work("s1", ALL)  # the start was never taken here: it goes first
    assert [s.process_key for s in work.starts] == [key] and work.kills == (key,)


def test_an_order_id_that_ended_is_not_added_again_within_the_retention() -> None:
    """JOC repeats AddOrders when a fail-over swallowed the answer; by then the order may have
    run and ended. The repeat must not run it a second time."""
    controller = ControllerCore(ControllerState(), frozenset({"agent-1"}))
    # The condition is false, so the order ends at the controller without going to an agent.
    skipped = '{"instructions": [{"ifElse": {"condition": "false", "then": {"instructions": []}}}]}'
    deploy(controller, signed(skipped, "/empty"))

    def add_at(order_id: str, at_ms: int) -> tuple[list[str], bool]:
        stimulus = c.AddOrders((c.NewOrder(order_id, "/empty"),))
        events = controller.handle(stimulus, at_ms)
        [added] = controller.added(stimulus, events)
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


WORKFLOW_V2 = WORKFLOW.replace("echo $GREETING", "echo v2 $GREETING")


def transfer(
    controller: ControllerCore, *order_ids: str, from_ms: int | None = None
) -> list[events_pb2.Event]:
    return controller.handle(c.TransferOrders("/wf", order_ids, from_ms=from_ms), T0)


def test_transfer_moves_a_fresh_order_held_here_at_once() -> None:
    """An order whose first instruction is the controller's waits here: it moves at once, and
    the version it leaves is forgotten once no order uses it."""
    controller = ControllerCore(ControllerState(), frozenset({"agent-1"}))
    prompt_first = '{"instructions": [{"prompt": {"question": "go?"}}]}'
    deploy(controller, signed(prompt_first, "/wf", "v1"))
    controller.handle(c.AddOrders((c.NewOrder("later", "/wf", scheduled_for_ms=T0 + 60_000),)), T0)
    deploy(controller, signed(prompt_first, "/wf", "v2"))
    events = transfer(controller, "later", "unknown")
    assert kinds(events) == ["order_transferred"]
    assert events[0].order_transferred.workflow_version_id == "v2"
    assert controller.transferred(c.TransferOrders("/wf", ("later",)), events) == ("v2", ["later"])
    assert controller.state.orders["later"].workflow_version_id == "v2"
    assert ("/wf", "v1") not in controller.state.workflows  # no order uses it any more
    assert transfer(controller, "later") == []  # at that version already
    assert controller.next_wake_ms() == T0 + 60_000  # still waits for its time
    assert kinds(controller.handle(c.Tick(), T0 + 60_000)) == ["order_started", "order_prompted"]


def test_transfer_of_orders_at_the_agent_is_carried_out_there(
    cores: tuple[ControllerCore, DirectorCore],
) -> None:
    """Fresh orders attached to the agent are marked; the command reaches the agent with the
    new version, the agent moves them (the controller mirrors it), and they start at their time
    with the new version's job. An order scheduled before `from` is left alone."""
    controller, director = cores
    deploy(controller, signed(WORKFLOW))
    director.handle(d.AttachItems((controller.state.signed_items[("/wf", "v1")],)), T0)
    welcome(director, "s1", "r1")
    controller.agent_session("agent-1")
    added = controller.handle(
        c.AddOrders(
            (
                c.NewOrder("early", "/wf", scheduled_for_ms=T0 + 10_000),
                c.NewOrder("late", "/wf", scheduled_for_ms=T0 + 60_000),
            )
        ),
        T0,
    )
    director.handle(d.AttachOrders(tuple(controller.agent_work("agent-1", added[-1].id).attach)), T0)
    mirror_all(controller, director)
    deploy(controller, signed(WORKFLOW_V2, version="v2"))

    marked = transfer(controller, "early", "late", from_ms=T0 + 30_000)
    assert kinds(marked) == ["order_marked"] and marked[0].order_id == "late"
    assert controller.state.orders["late"].workflow_version_id == "v1"  # until the agent moves it
    work = controller.agent_work("agent-1", ALL)
    assert [(cmd.order_id, cmd.transfer.workflow_version_id) for cmd in work.commands] == [("late", "v2")]
    assert work.versions == {("/wf", "v2")}

    director.handle(d.AttachItems((controller.state.signed_items[("/wf", "v2")],)), T0)
    moved = director.handle(d.CommandOrders(tuple(work.commands)), T0)
    assert kinds(moved) == ["order_transferred"]
    assert director.state.orders["late"].workflow_version_id == "v2"
    assert director.next_wake_ms() == T0 + 10_000
    assert kinds(mirror(controller, moved)) == ["order_transferred", "agent_events_observed"]
    late = controller.state.orders["late"]
    assert late.workflow_version_id == "v2" and not late.marks
    assert not controller.agent_work("agent-1", ALL)  # nothing pending any more

    director.handle(d.Tick(), T0 + 60_000)
    [early, late_spec] = sorted(
        director.subagent_work("s1", ALL).starts + director.subagent_work("s2", ALL).starts,
        key=lambda s: s.order_id,
    )
    assert "echo $GREETING" in early.executable.shell_script.script
    assert "echo v2 $GREETING" in late_spec.executable.shell_script.script


def test_an_order_that_started_before_the_agent_got_the_transfer_keeps_its_version(
    cores: tuple[ControllerCore, DirectorCore],
) -> None:
    controller, director = cores
    deploy(controller, signed(WORKFLOW))
    director.handle(d.AttachItems((controller.state.signed_items[("/wf", "v1")],)), T0)
    welcome(director, "s1", "r1")
    controller.agent_session("agent-1")
    controller.handle(c.AddOrders((c.NewOrder("o1", "/wf", scheduled_for_ms=T0 + 1000),)), T0)
    director.handle(d.AttachOrders(tuple(controller.agent_work("agent-1", ALL).attach)), T0)
    mirror_all(controller, director)
    deploy(controller, signed(WORKFLOW_V2, version="v2"))
    assert kinds(transfer(controller, "o1")) == ["order_marked"]
    work = controller.agent_work("agent-1", ALL)

    started = director.handle(d.Tick(), T0 + 1000)  # the order's time came first
    assert kinds(started) == ["order_started", "order_processing_started"]
    director.handle(d.AttachItems((controller.state.signed_items[("/wf", "v2")],)), T0)
    kept = director.handle(d.CommandOrders(tuple(work.commands)), T0 + 1001)
    assert kinds(kept) == ["order_marked"] and not kept[0].order_marked.marks
    assert director.state.orders["o1"].workflow_version_id == "v1"
    mirror_all(controller, director)
    order = controller.state.orders["o1"]
    assert order.workflow_version_id == "v1" and not order.marks
    assert not controller.agent_work("agent-1", ALL).commands


def test_transfer_is_refused_for_an_unknown_version_and_never_a_user_command(
    cores: tuple[ControllerCore, DirectorCore],
) -> None:
    controller, _ = cores
    deploy(controller, signed(WORKFLOW))
    add(controller)
    with pytest.raises(NotFound, match="workflow_path: unknown workflow version v9 of '/wf'"):
        controller.handle(c.TransferOrders("/wf", ("o1",), to_version_id="v9"), T0)
    command = c.commands_pb2.OrderCommand(order_id="o1", transfer={"workflow_version_id": "v1"})
    with pytest.raises(InvalidArgument, match="TransferOrders"):
        controller.handle(c.CommandOrder(command), T0)
