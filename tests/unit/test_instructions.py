"""Every instruction and command through the controller and director cores (tests/unit/sim.py),
with the controller's events for each order asserted exactly."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from controller_svc.core import AddOrders, ControllerState, NewOrder
from director_svc.core import DirectorState
from gen.ostinato.common.v1 import commands_pb2, order_pb2
from ostinato.workflow.positions import parse_text
from ostinato.workflow.values import to_value
from tests.unit.sim import HANG, T0, Result, Sim

S = order_pb2.OrderState

ATTACH = ["order_attachable", "order_attached"]
RUN = ["order_processing_started", "order_processed", "order_moved"]
BACK = ["order_detachable", "order_detached"]


def job(agent: str = "agent-1", limit: int = 100, **env: str) -> dict:
    return {
        "agent": agent,
        "processLimit": limit,
        "executable": {"shellScript": {"script": "true", "env": env}},
    }


def ex(name: str, label: str = "") -> dict:
    instruction: dict = {"execute": {"jobName": name}}
    if label:
        instruction["label"] = label
    return instruction


def by_job(results: dict[str, Result]):  # type: ignore[no-untyped-def]
    return lambda spec: results.get(spec.job_name, Result())


def test_jobs_in_sequence_on_two_agents_move_the_order_between_them() -> None:
    sim = Sim(agents=("agent-1", "agent-2"))
    sim.deploy(
        {
            "instructions": [ex("a"), ex("b"), ex("c")],
            "jobs": {"a": job(), "b": job("agent-2"), "c": job("agent-2")},
        }
    )
    sim.add("o")
    assert sim.kinds("o") == [
        "order_added",
        *ATTACH,
        "order_started",
        *RUN,
        *BACK,
        *ATTACH,
        *RUN,
        *RUN,
        *BACK,
        "order_finished",
        "order_deleted",
    ]
    assert [s.subagent_id for s in sim.started] == ["agent-1/s", "agent-2/s", "agent-2/s"]


def test_failed_job_fails_the_order_at_its_position() -> None:
    sim = Sim(script=by_job({"b": Result(rc=3)}))
    sim.deploy({"instructions": [ex("a"), ex("b"), ex("c")], "jobs": {n: job() for n in "abc"}})
    sim.add("o")
    assert sim.kinds("o") == [
        "order_added",
        *ATTACH,
        "order_started",
        *RUN,
        "order_processing_started",
        "order_processed",
        *BACK,
        "order_failed",
    ]
    order = sim.order("o")
    assert order.state == S.ORDER_STATE_FAILED and order.position.nr == 1
    assert order.historic_outcomes[-1].outcome.return_code == 3
    assert sim.jobs() == ["o:a", "o:b"]


def test_try_catch_runs_the_catch_block_and_continues() -> None:
    sim = Sim(script=by_job({"risky": Result(rc=1)}))
    sim.deploy(
        {
            "instructions": [
                {
                    "tryCatch": {
                        "try": {"instructions": [ex("risky")]},
                        "catch": {"instructions": [ex("recover")]},
                    }
                },
                ex("after"),
            ],
            "jobs": {n: job() for n in ("risky", "recover", "after")},
        }
    )
    sim.add("o")
    assert sim.jobs() == ["o:risky", "o:recover", "o:after"]
    assert "order_caught" in sim.kinds("o")
    assert sim.kinds("o")[-2:] == ["order_finished", "order_deleted"]


def test_retry_with_delays_until_the_job_succeeds() -> None:
    tries = iter([Result(rc=1), Result(rc=1), Result(rc=0)])
    sim = Sim(script=lambda spec: next(tries))
    sim.deploy(
        {
            "instructions": [
                {
                    "tryCatch": {
                        "maxTries": 5,
                        "retryDelays": ["10s", "20s"],
                        "try": {"instructions": [ex("flaky")]},
                        "catch": {"instructions": [{"retry": {}}]},
                    }
                }
            ],
            "jobs": {"flaky": job()},
        }
    )
    sim.add("o")
    assert sim.jobs() == ["o:flaky"] and sim.order("o").state == S.ORDER_STATE_WAITING
    assert sim.order("o").waiting_until.ToMilliseconds() == T0 + 10_000
    sim.advance(9_999)
    assert len(sim.started) == 1
    sim.advance(1)
    assert (
        len(sim.started) == 2 and sim.order("o").waiting_until.ToMilliseconds() == T0 + 30_000
    )  # last delay repeats
    sim.advance(20_000)
    assert sim.jobs() == ["o:flaky"] * 3
    kinds = sim.kinds("o")
    assert kinds.count("order_retrying") == 2 and kinds.count("order_awoke") == 2
    assert kinds[-2:] == ["order_finished", "order_deleted"]
    # Each try has its own position: try+0, try+1, try+2.
    assert [s.process_key.split("@")[1].split("#")[0] for s in sim.started] == [
        "0/try+0:0",
        "0/try+1:0",
        "0/try+2:0",
    ]


def test_retry_gives_up_after_max_tries_and_the_order_fails() -> None:
    sim = Sim(script=lambda spec: Result(rc=2))
    sim.deploy(
        {
            "instructions": [
                {
                    "tryCatch": {
                        "maxTries": 2,
                        "try": {"instructions": [ex("flaky")]},
                        "catch": {"instructions": [{"retry": {}}]},
                    }
                }
            ],
            "jobs": {"flaky": job()},
        }
    )
    sim.add("o")
    assert len(sim.started) == 2
    order = sim.order("o")
    assert order.state == S.ORDER_STATE_FAILED
    assert order.historic_outcomes[-1].outcome.return_code == 2


def test_fail_is_caught_unless_uncatchable() -> None:
    sim = Sim()
    catchable = {"fail": {"message": "no input"}}
    sim.deploy(
        {
            "instructions": [
                {"tryCatch": {"try": {"instructions": [catchable]}, "catch": {"instructions": [ex("log")]}}}
            ],
            "jobs": {"log": job()},
        },
        path="/catch",
    )
    sim.deploy(
        {
            "instructions": [
                {
                    "tryCatch": {
                        "try": {"instructions": [{"fail": {"message": "stop", "uncatchable": True}}]},
                        "catch": {"instructions": [ex("log")]},
                    }
                }
            ],
            "jobs": {"log": job()},
        },
        path="/uncatchable",
    )
    sim.add("a", "/catch")
    sim.add("b", "/uncatchable")
    assert sim.jobs() == ["a:log"]
    assert sim.kinds("a")[-2:] == ["order_finished", "order_deleted"]
    assert sim.order("b").state == S.ORDER_STATE_FAILED
    assert sim.order("b").historic_outcomes[-1].outcome.message == "stop"


def test_if_else_on_return_code_and_returned_values() -> None:
    sim = Sim(script=by_job({"probe": Result(rc=0, returned={"mode": "full"})}))
    sim.deploy(
        {
            "instructions": [
                ex("probe"),
                {
                    "ifElse": {
                        "condition": "$returnCode == 0 && $mode == 'full' && $size > 3",
                        "then": {"instructions": [ex("full")]},
                        "else": {"instructions": [ex("quick")]},
                    }
                },
            ],
            "jobs": {n: job() for n in ("probe", "full", "quick")},
        }
    )
    sim.add("big", size=10)
    sim.add("small", size=1)
    assert sim.jobs() == ["big:probe", "big:full", "small:probe", "small:quick"]


def test_if_with_a_bad_expression_fails_the_order_naming_it() -> None:
    sim = Sim()
    sim.deploy(
        {
            "instructions": [{"ifElse": {"condition": "$missing > 1", "then": {"instructions": [ex("a")]}}}],
            "jobs": {"a": job()},
        }
    )
    sim.add("o")
    order = sim.order("o")
    assert order.state == S.ORDER_STATE_FAILED
    assert "missing" in order.historic_outcomes[-1].outcome.message


def test_fork_runs_branches_as_children_and_joins_their_values() -> None:
    sim = Sim(agents=("agent-1", "agent-2"), script=lambda spec: Result(returned={spec.job_name: "done"}))
    sim.deploy(
        {
            "instructions": [
                {
                    "fork": {
                        "branches": [
                            {"id": "left", "block": {"instructions": [ex("l1"), ex("l2")]}},
                            {"id": "right", "block": {"instructions": [ex("r1")]}},
                        ]
                    }
                },
                ex("after"),
            ],
            "jobs": {"l1": job(), "l2": job(), "r1": job("agent-2"), "after": job()},
        }
    )
    sim.add("o")
    assert sorted(sim.jobs()) == ["o:after", "o|left:l1", "o|left:l2", "o|right:r1"]
    # A fork is the controller's: the order starts there, and never visits an agent before it.
    assert sim.kinds("o") == [
        "order_added", "order_started", "order_forked", "order_joined", "order_moved",
        *ATTACH, *RUN, *BACK, "order_finished", "order_deleted",
    ]  # fmt: skip
    assert sim.kinds("o|right") == ["order_added", *ATTACH, *RUN, *BACK, "order_deleted"]
    joined = next(e for e in sim.events("o") if e.WhichOneof("kind") == "order_joined")
    assert set(joined.order_joined.outcome.named_values) == {"l1", "l2", "r1"}


def test_fork_waits_for_a_failed_child_unless_join_if_failed() -> None:
    for join_if_failed, parent_state in ((False, S.ORDER_STATE_FORKED), (True, S.ORDER_STATE_FAILED)):
        sim = Sim(script=by_job({"bad": Result(rc=1)}))
        sim.deploy(
            {
                "instructions": [
                    {
                        "fork": {
                            "joinIfFailed": join_if_failed,
                            "branches": [
                                {"id": "a", "block": {"instructions": [ex("good")]}},
                                {"id": "b", "block": {"instructions": [ex("bad")]}},
                            ],
                        }
                    }
                ],
                "jobs": {"good": job(), "bad": job()},
            }
        )
        sim.add("o")
        assert sim.order("o").state == parent_state
        if not join_if_failed:
            assert sim.order("o|b").state == S.ORDER_STATE_FAILED
            # Resumed after the failed job, the child ends its branch and the parent joins.
            result = sim.command("o|b", resume=commands_pb2.ResumeOrder(position=parse_text("0/fork+b:1")))
            assert result.error == ""
            assert sim.kinds("o")[-2:] == ["order_finished", "order_deleted"]


def test_fork_list_forks_one_child_per_element() -> None:
    sim = Sim()
    sim.deploy(
        {
            "instructions": [
                {
                    "forkList": {
                        "children": "files",
                        "elementVariable": "file",
                        "block": {"instructions": [ex("copy")]},
                    }
                }
            ],
            "jobs": {"copy": job(FILE="$file")},
        }
    )
    sim.add("o", files=["a.csv", "b.csv", "c.csv"])
    assert sorted(s.env["FILE"] for s in sim.started) == ["a.csv", "b.csv", "c.csv"]
    assert sorted(s.order_id for s in sim.started) == ["o|0", "o|1", "o|2"]
    assert sim.kinds("o")[-4:] == ["order_joined", "order_moved", "order_finished", "order_deleted"]


def test_exclusive_lock_queues_the_second_order_until_the_first_leaves() -> None:
    sim = Sim(script=lambda spec: Result(rc=HANG))
    sim.deploy(
        {
            "instructions": [{"lock": {"lockPath": "/db", "block": {"instructions": [ex("write")]}}}],
            "jobs": {"write": job()},
        },
        locks={"/db": 1},
    )
    sim.add("first")
    sim.add("second")
    assert sim.kinds("first") == [
        "order_added",
        "order_started",
        "order_lock_acquired",
        "order_moved",
        *ATTACH,
        "order_processing_started",
    ]
    assert sim.kinds("second") == ["order_added", "order_started", "order_lock_queued"]
    sim.finish(sim.started[0].process_key, Result())
    # Leaving the lock block is the controller's: the agent hands the order back to release it.
    assert sim.kinds("first")[7:] == [
        "order_processed", "order_moved", *BACK,
        "order_lock_released", "order_moved", "order_finished", "order_deleted",
    ]  # fmt: skip
    assert sim.kinds("second") == [
        "order_added", "order_started", "order_lock_queued", "order_lock_acquired", "order_moved",
        *ATTACH, "order_processing_started",
    ]  # fmt: skip
    assert sim.jobs() == ["first:write", "second:write"]


def test_lock_contended_by_20_orders_never_has_more_than_its_limit() -> None:
    sim = Sim(script=lambda spec: Result(rc=HANG))
    sim.deploy(
        {
            "instructions": [
                {"lock": {"lockPath": "/pool", "count": 1, "block": {"instructions": [ex("work")]}}}
            ],
            "jobs": {"work": job()},
        },
        locks={"/pool": 2},
    )
    for i in range(20):
        sim.add(f"o{i}")
    while sim.running:
        assert len(sim.running) <= 2
        sim.finish(sorted(sim.running)[0], Result())
    assert len(sim.started) == 20
    assert max_holders(sim.controller.state.log.events, "/pool") == 2
    assert not sim.controller.state.orders  # all finished and deleted


def max_holders(events, lock_path: str) -> int:  # type: ignore[no-untyped-def]
    """From the journal: the most orders that held the lock at once."""
    holders: set[str] = set()
    most = 0
    for e in events:
        kind = e.WhichOneof("kind")
        if kind == "order_lock_acquired" and e.order_lock_acquired.lock_path == lock_path:
            holders.add(e.order_id)
        elif kind == "order_lock_released" and e.order_lock_released.lock_path == lock_path:
            holders.discard(e.order_id)
        most = max(most, len(holders))
    return most


def test_failing_inside_a_lock_releases_it() -> None:
    sim = Sim(script=by_job({"bad": Result(rc=1)}))
    sim.deploy(
        {
            "instructions": [{"lock": {"lockPath": "/db", "block": {"instructions": [ex("bad")]}}}],
            "jobs": {"bad": job()},
        },
        locks={"/db": 1},
    )
    sim.add("o")
    assert sim.order("o").state == S.ORDER_STATE_FAILED
    assert sim.kinds("o")[-2:] == ["order_lock_released", "order_failed"]
    assert sim.controller.state.lock_free("/db") == 1


def test_prompt_waits_for_an_answer() -> None:
    sim = Sim()
    sim.deploy({"instructions": [{"prompt": {"question": "go on?"}}, ex("a")], "jobs": {"a": job()}})
    sim.add("o")
    assert sim.order("o").state == S.ORDER_STATE_PROMPTING and sim.order("o").prompt_question == "go on?"
    assert sim.command("o", resume=commands_pb2.ResumeOrder()).error != ""  # not suspended or failed
    assert sim.command("o", answer_prompt=commands_pb2.AnswerPrompt()).error == ""
    assert sim.jobs() == ["o:a"]
    assert sim.kinds("o")[:4] == ["order_added", "order_started", "order_prompted", "order_prompt_answered"]


def test_sleep_waits_its_time_at_the_agent() -> None:
    sim = Sim()
    sim.deploy(
        {"instructions": [ex("a"), {"sleep": {"duration": "60s"}}, ex("b")], "jobs": {"a": job(), "b": job()}}
    )
    sim.add("o")
    assert sim.jobs() == ["o:a"] and sim.order("o").state == S.ORDER_STATE_WAITING
    sim.advance(59_000)
    assert sim.jobs() == ["o:a"]
    sim.advance(1_000)
    assert sim.jobs() == ["o:a", "o:b"]
    assert "order_sleeping" in sim.kinds("o") and "order_detachable" not in sim.kinds("o")[:12]


def test_ticking_cycle_runs_its_block_each_tick_up_to_the_limit() -> None:
    sim = Sim()
    sim.deploy(
        {
            "instructions": [
                {"cycle": {"ticking": "10s", "limit": 3, "block": {"instructions": [ex("tick")]}}},
                ex("after"),
            ],
            "jobs": {"tick": job(), "after": job()},
        }
    )
    sim.add("o")
    assert sim.jobs() == ["o:tick"]
    sim.advance(10_000)
    sim.advance(10_000)
    assert sim.jobs() == ["o:tick", "o:tick", "o:tick", "o:after"]
    assert sim.kinds("o").count("order_cycle_started") == 3


def test_break_ends_the_cycle() -> None:
    sim = Sim(script=by_job({"check": Result(returned={"done": "yes"})}))
    sim.deploy(
        {
            "instructions": [
                {
                    "cycle": {
                        "continuous": "1s",
                        "window": "3600s",
                        "block": {
                            "instructions": [
                                ex("check"),
                                {
                                    "ifElse": {
                                        "condition": "$done == 'yes'",
                                        "then": {"instructions": [{"breakCycle": {}}]},
                                    }
                                },
                            ]
                        },
                    }
                },
                ex("after"),
            ],
            "jobs": {"check": job(), "after": job()},
        }
    )
    sim.add("o")
    assert sim.jobs() == ["o:check", "o:after"]


def test_add_order_starts_an_order_of_another_workflow() -> None:
    sim = Sim()
    sim.deploy({"instructions": [ex("child_job")], "jobs": {"child_job": job(WHO="$who")}}, path="/other")
    sim.deploy(
        {
            "instructions": [
                {
                    "addOrder": {
                        "workflowPath": "/other",
                        "arguments": {"who": "'from parent'"},
                        "idSuffix": "x",
                    }
                },
                ex("a"),
            ],
            "jobs": {"a": job()},
        }
    )
    sim.add("o")
    assert sorted(sim.jobs()) == ["o:a", "o|x:child_job"]
    assert next(s for s in sim.started if s.order_id == "o|x").env["WHO"] == "from parent"
    assert sim.kinds("o")[:4] == ["order_added", "order_started", "order_order_added", "order_moved"]


def test_cancel_fresh_order_and_cancel_with_kill_of_a_running_job() -> None:
    sim = Sim(script=lambda spec: Result(rc=HANG))
    sim.deploy({"instructions": [ex("long")], "jobs": {"long": job()}})
    sim.add("later", at=T0 + 3_600_000)
    assert sim.command("later", cancel=commands_pb2.CancelOrder()).error == ""
    assert sim.kinds("later")[-3:] == ["order_detached", "order_cancelled", "order_deleted"]
    sim.add("running")
    assert sim.command("running", cancel=commands_pb2.CancelOrder(kill=True)).error == ""
    assert "order_kill_requested" in sim.kinds("running")
    assert sim.kinds("running")[-3:] == ["order_detached", "order_cancelled", "order_deleted"]
    assert sim.running == {}


def test_suspend_after_the_running_job_then_resume() -> None:
    sim = Sim(script=by_job({"a": Result(rc=HANG)}))
    sim.deploy({"instructions": [ex("a"), ex("b")], "jobs": {"a": job(), "b": job()}})
    sim.add("o")
    assert sim.command("o", suspend=commands_pb2.SuspendOrder()).error == ""
    sim.finish(sim.started[0].process_key, Result())
    assert sim.order("o").state == S.ORDER_STATE_SUSPENDED and sim.order("o").position.nr == 1
    assert sim.jobs() == ["o:a"]
    assert sim.command("o", resume=commands_pb2.ResumeOrder()).error == ""
    assert sim.jobs() == ["o:a", "o:b"]
    assert sim.kinds("o")[-2:] == ["order_finished", "order_deleted"]


def test_resume_a_failed_order_at_another_position_with_changed_variables() -> None:
    sim = Sim(script=lambda spec: Result(rc=0 if spec.env.get("FIXED") == "yes" else 1))
    sim.deploy(
        {"instructions": [ex("a"), ex("b")], "jobs": {"a": job(FIXED="$fixed"), "b": job(FIXED="$fixed")}}
    )
    sim.add("o", fixed="no")
    assert sim.order("o").state == S.ORDER_STATE_FAILED
    command = commands_pb2.ResumeOrder(position=parse_text("1"), variables={"fixed": to_value("yes")})
    assert sim.command("o", resume=command).error == ""
    assert sim.jobs() == ["o:a", "o:b"]
    assert sim.kinds("o")[-2:] == ["order_finished", "order_deleted"]


def test_retry_inside_fork_inside_lock() -> None:
    attempts: dict[str, int] = {}

    def script(spec):  # type: ignore[no-untyped-def]
        attempts[spec.order_id] = attempts.get(spec.order_id, 0) + 1
        return Result(rc=1 if attempts[spec.order_id] == 1 else 0)

    sim = Sim(script=script)
    retrying = {
        "tryCatch": {
            "maxTries": 3,
            "try": {"instructions": [ex("step")]},
            "catch": {"instructions": [{"retry": {}}]},
        }
    }
    sim.deploy(
        {
            "instructions": [
                {
                    "lock": {
                        "lockPath": "/l",
                        "block": {
                            "instructions": [
                                {
                                    "fork": {
                                        "branches": [
                                            {"id": "a", "block": {"instructions": [retrying]}},
                                            {"id": "b", "block": {"instructions": [retrying]}},
                                        ]
                                    }
                                }
                            ]
                        },
                    }
                }
            ],
            "jobs": {"step": job()},
        },
        locks={"/l": 1},
    )
    sim.add("o")
    assert attempts == {"o|a": 2, "o|b": 2}
    assert sim.kinds("o") == [
        "order_added",
        "order_started",
        "order_lock_acquired",
        "order_moved",
        "order_forked",
        "order_joined",
        "order_moved",
        "order_lock_released",
        "order_moved",
        "order_finished",
        "order_deleted",
    ]


def test_running_orders_keep_their_workflow_version() -> None:
    sim = Sim(script=by_job({"old": Result(rc=HANG)}))
    v1 = sim.deploy({"instructions": [ex("old")], "jobs": {"old": job()}})
    sim.add("before")
    v2 = sim.deploy({"instructions": [ex("new")], "jobs": {"new": job()}})
    sim.add("after")
    added = {o: sim.events(o)[0].order_added.order.workflow_version_id for o in ("before", "after")}
    assert added == {"before": v1, "after": v2}
    assert set(sim.controller.state.workflows) == {("/wf", v1), ("/wf", v2)}  # v1 stays while used
    sim.finish(sim.started[0].process_key, Result())
    assert sim.jobs() == ["before:old", "after:new"]
    assert set(sim.controller.state.workflows) == {("/wf", v2)}  # its last order gone, v1 goes
    sim.deploy({"instructions": [ex("newer")], "jobs": {"newer": job()}})
    assert len(sim.controller.state.workflows) == 1  # an unused version goes at once


def test_arguments_are_checked_against_declared_parameters() -> None:
    import pytest

    from ostinato.errors import InvalidArgument

    sim = Sim()
    sim.deploy(
        {
            "orderPreparation": {
                "parameters": {
                    "n": {"type": "PARAMETER_TYPE_NUMBER"},
                    "mode": {"type": "PARAMETER_TYPE_STRING", "default": {"string": "quick"}},
                }
            },
            "instructions": [ex("a")],
            "jobs": {"a": job(N="$n", MODE="$mode")},
        }
    )
    for arguments, message in (
        ({}, "arguments.n: missing"),
        ({"n": "x"}, "arguments.n: must be a number"),
        ({"n": 1, "zz": 2}, "not a parameter of /wf: zz"),
    ):
        new = NewOrder("bad", "/wf", arguments={k: to_value(v) for k, v in arguments.items()})
        with pytest.raises(InvalidArgument, match=message):
            sim.controller.handle(AddOrders((new,)), sim.now)
    sim.add("good", n=5)
    assert {k: sim.started[0].env[k] for k in ("N", "MODE")} == {"N": "5", "MODE": "quick"}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2), min_size=12, max_size=12))
def test_replaying_the_journals_rebuilds_the_same_state(codes: list[int]) -> None:
    results = iter(codes + [0] * 50)
    sim = Sim(
        agents=("agent-1", "agent-2"),
        script=lambda spec: Result(rc=next(results), returned={"k": spec.job_name}),
    )
    retrying = {
        "tryCatch": {
            "maxTries": 2,
            "try": {"instructions": [ex("x")]},
            "catch": {"instructions": [{"retry": {}}]},
        }
    }
    sim.deploy(
        {
            "instructions": [
                {
                    "fork": {
                        "joinIfFailed": True,
                        "branches": [
                            {"id": "a", "block": {"instructions": [retrying, ex("y")]}},
                            {"id": "b", "block": {"instructions": [ex("z")]}},
                        ],
                    }
                },
                {"ifElse": {"condition": "$returnCode == 0", "then": {"instructions": [ex("y")]}}},
            ],
            "jobs": {"x": job(), "y": job("agent-2"), "z": job()},
        }
    )
    for i in range(3):
        sim.add(f"o{i}")
    for original, fresh in (
        (sim.controller.state, ControllerState()),
        *((d.state, DirectorState()) for d in sim.directors.values()),
    ):
        for event in original.log.events:
            fresh.apply(copy.deepcopy(event))
        assert fresh.orders == original.orders
        assert fresh.last_event_id == original.last_event_id


def test_cancelling_a_forked_order_cancels_its_children_everywhere() -> None:
    sim = Sim(script=lambda spec: Result(rc=HANG))
    sim.deploy({"instructions": [{"fork": {"branches": [
        {"id": "a", "block": {"instructions": [ex("slow")]}},
        {"id": "b", "block": {"instructions": [ex("slow")]}}]}}],
        "jobs": {"slow": job()}})  # fmt: skip
    sim.add("o")
    assert len(sim.running) == 2
    assert sim.command("o", cancel=commands_pb2.CancelOrder(kill=True)).error == ""
    assert sim.running == {}  # both children's jobs were killed
    assert len(sim.controller.state.orders) == 0  # parent and children are gone
    assert sim.kinds("o|a")[-2:] == ["order_cancelled", "order_deleted"]
