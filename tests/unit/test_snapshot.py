"""Snapshots of controller and director state: explicit, complete and refusing what they cannot hold."""

from __future__ import annotations

import pytest

from controller_svc.core import ControllerState
from director_svc.core import DirectorState
from ostinato.journal import snapshot
from tests.unit.sim import HANG, Result, Sim
from tests.unit.test_instructions import ex, job

WORKFLOW = {
    "instructions": [
        ex("a"),
        {"lock": {"lockPath": "/db", "count": 1, "block": {"instructions": [ex("b")]}}},
        {
            "tryCatch": {
                "maxTries": 3,
                "retryDelays": ["1s"],
                "try": {"instructions": [ex("c")]},
                "catch": {"instructions": [{"retry": {}}]},
            }
        },
    ],
    "jobs": {"a": job(), "b": job(), "c": job()},
}


def hanging_c(spec):  # type: ignore[no-untyped-def]
    return Result(rc=HANG) if spec.job_name == "c" else Result(stdout="out\n")


def busy_sim() -> Sim:
    """Orders in every kind of place: holding and queued for a lock, processing, released events."""
    sim = Sim(script=hanging_c)
    sim.deploy(WORKFLOW, locks={"/db": 1})
    for i in range(5):
        sim.add(f"o{i}")
    sim.controller.state.log.release(3)
    return sim


def restored(sim: Sim) -> Sim:
    """The same simulation, its states replaced by what their snapshots restore."""
    c = sim.controller
    c.state = snapshot.loads(snapshot.dumps(c.state), ControllerState)
    for d in sim.directors.values():
        d.state = snapshot.loads(snapshot.dumps(d.state), DirectorState)
    return sim


def test_a_snapshot_restores_an_equal_state() -> None:
    sim = busy_sim()
    for state, new in [
        (sim.controller.state, ControllerState),
        (sim.directors["agent-1"].state, DirectorState),
    ]:
        data = snapshot.dumps(state)
        again = snapshot.loads(data, new)
        assert snapshot.dumps(again) == data
        assert again.last_event_id == state.last_event_id
        assert again.orders == state.orders
    assert sim.controller.state.log.released_until == 3
    assert len(sim.controller.state.log.events) == sim.controller.state.last_event_id - 3


def test_a_restored_state_goes_on_exactly_as_the_original() -> None:
    original, copy = busy_sim(), restored(busy_sim())
    for sim in (original, copy):
        for spec in list(sim.running.values()):
            sim.finish(spec.process_key, Result())
        sim.advance(2_000)
        for spec in list(sim.running.values()):
            sim.finish(spec.process_key, Result())
    assert [o for o in original.controller.state.orders] == []
    assert original.jobs() == copy.jobs()
    assert [e.SerializeToString() for e in original.controller.state.log.events] == [
        e.SerializeToString() for e in copy.controller.state.log.events
    ]


def test_released_events_are_not_in_the_snapshot() -> None:
    sim = busy_sim()
    state = sim.controller.state
    before = len(snapshot.dumps(state))
    state.log.release(state.last_event_id)
    assert len(snapshot.dumps(state)) < before
    assert snapshot.loads(snapshot.dumps(state), ControllerState).log.events == type(state.log.events)()


def test_a_snapshot_of_another_state_or_with_unknown_values_is_refused() -> None:
    data = snapshot.dumps(ControllerState())
    with pytest.raises(snapshot.SnapshotError, match="expected 'DirectorState'"):
        snapshot.loads(data, DirectorState)
    state = ControllerState()
    state.agent_observed["x"] = object()  # type: ignore[assignment]
    with pytest.raises(snapshot.SnapshotError, match="cannot snapshot a object"):
        snapshot.dumps(state)


def test_orders_waiting_for_their_time_are_kept_as_bytes_and_survive_a_snapshot() -> None:
    """A daily plan holds days of orders: those that wait for their start are not protobuf
    objects (1.7 KB each in Python) but their bytes, in both cores and in snapshots."""
    sim = Sim()
    sim.deploy({"instructions": [ex("a")], "jobs": {"a": job()}})
    tomorrow = sim.now + 86_400_000
    for i in range(3):
        sim.add(f"held{i}", at=tomorrow)
    sim.add("now")
    for state in (sim.controller.state, sim.directors["agent-1"].state):
        assert set(state.orders.kept) == {"held0", "held1", "held2"}
        assert state.orders["held1"].scheduled_for.ToMilliseconds() == tomorrow
        again = snapshot.loads(snapshot.dumps(state), type(state))
        assert set(again.orders.kept) == set(state.orders.kept) and again.orders == state.orders
    sim.advance(86_400_000)
    assert "held0" not in sim.controller.state.orders  # ran, ended and went
    assert sim.jobs() == ["now:a", "held0:a", "held1:a", "held2:a"]


def test_a_snapshot_of_a_version_that_held_orders_in_a_dict_is_taken_in() -> None:
    state = busy_sim().controller.state
    data = snapshot.encode(state)
    orders = {"$d": [[k, snapshot._encode(v, {})] for k, v in state.orders.items()]}
    data["attributes"]["$d"] = [[k, orders if k == "orders" else v] for k, v in data["attributes"]["$d"]]
    restored = snapshot.decode(data, ControllerState)
    assert restored.orders == state.orders and len(restored.orders.live) == len(state.orders)
