"""Subagent clusters and job resources, from deployment at the controller to the director's pick
of a subagent for each job: the cores alone, in memory."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from controller_svc import core as c
from director_svc import core as d
from gen.ostinato.common.v1 import items_pb2, workflow_pb2
from ostinato.errors import InvalidArgument
from tests.unit.test_cores import T0, exited, kinds, signed

SUBAGENTS = ["s1", "s2", "s3"]


def cluster_item(
    path: str, mode: str, priorities: dict[str, int], agent: str = "agent-1"
) -> items_pb2.SignedItem:
    text = json.dumps(
        {
            "agent": agent,
            "schedulingMode": mode,
            "subagents": [{"subagentId": s, "priority": p} for s, p in priorities.items()],
        }
    )
    return items_pb2.SignedItem(type=items_pb2.ITEM_TYPE_SUBAGENT_CLUSTER, path=path, json=text)


def resource_item(
    path: str, env: dict[str, str], variables: dict[str, str] | None = None
) -> items_pb2.SignedItem:
    text = json.dumps({"env": env, "variables": variables or {}})
    return items_pb2.SignedItem(type=items_pb2.ITEM_TYPE_JOB_RESOURCE, path=path, json=text)


def workflow(cluster: str = "", resources: list[str] | None = None, env: dict[str, str] | None = None) -> str:
    job: dict = {
        "agent": "agent-1",
        "processLimit": 1000,
        "executable": {"shellScript": {"script": "true", "env": env or {}}},
    }
    if cluster:
        job["subagentClusterId"] = cluster
    if resources:
        job["jobResourcePaths"] = resources
    return json.dumps({"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": job}})


class Agent:
    """A controller and one director, with items handed over as the controller's driver does."""

    def __init__(self) -> None:
        self.controller = c.ControllerCore(c.ControllerState(), frozenset({"agent-1"}))
        self.director = d.DirectorCore(d.DirectorState(), "agent-1", SUBAGENTS)
        self.n = 0

    def deploy(self, *items: items_pb2.SignedItem) -> list[c.Event]:
        events = self.controller.handle(c.Deploy(items), T0)
        self.sync_items()
        return events

    def sync_items(self) -> None:
        items = self.controller.items_to_attach("agent-1")
        items += [self.controller.state.signed_items[k] for k in self.controller.state.signed_items]
        deployed = self.director.handle(d.AttachItems(tuple(items)), T0)
        self.controller.handle(c.AgentEvents("agent-1", tuple(deployed)), T0)

    def welcome(self, subagent_id: str, process_limit: int = 0) -> None:
        welcome = d.SubagentWelcomed(subagent_id, f"run-{subagent_id}", process_limit=process_limit)
        self.director.handle(welcome, T0)

    def make_available(self, available: set[str]) -> None:
        for s in SUBAGENTS:
            if s in available and s not in self.director.available:
                self.director.handle(d.SubagentWelcomed(s, self.director.state.subagent_runs[s].run_id), T0)
            elif s not in available and s in self.director.available:
                self.director.handle(d.SubagentLost(s), T0)

    def run_orders(self, n: int, available: set[str]) -> list[str]:
        """Adds n orders; returns the subagent each one's job went to ("" while none)."""
        self.make_available(available)
        ids = []
        for _ in range(n):
            self.n += 1
            order_id = f"o{self.n}"
            self.controller.handle(c.AddOrders((c.NewOrder(order_id, "/wf"),)), T0)
            self.director.handle(d.AttachOrders((self.controller.state.orders[order_id],)), T0)
            ids.append(order_id)
        return [self.director.state.orders[i].processing.subagent_id for i in ids]

    def finish(self, order_id: str, seq: int) -> None:
        order = self.director.state.orders[order_id]
        subagent_id = order.processing.subagent_id
        messages = ((seq, exited(order.processing.process_key)),)
        self.director.handle(d.SubagentMessages(subagent_id, f"run-{subagent_id}", messages), T0)


@pytest.fixture
def agent() -> Agent:
    a = Agent()
    for s in SUBAGENTS:
        a.welcome(s)
    return a


def test_round_robin_spreads_jobs_evenly_over_the_available_subagents(agent: Agent) -> None:
    agent.deploy(
        cluster_item("/rr", "SCHEDULING_MODE_ROUND_ROBIN", {"s1": 1, "s2": 1, "s3": 1}),
        signed(workflow("/rr")),
    )
    assert Counter(agent.run_orders(99, set(SUBAGENTS))) == {"s1": 33, "s2": 33, "s3": 33}
    # An unavailable subagent is skipped, without failing anything.
    assert set(agent.run_orders(10, {"s1", "s3"})) == {"s1", "s3"}


def test_fixed_priority_uses_the_highest_available_and_returns_to_it(agent: Agent) -> None:
    agent.deploy(
        cluster_item("/fp", "SCHEDULING_MODE_FIXED_PRIORITY", {"s1": 1, "s2": 5, "s3": 0}),
        signed(workflow("/fp")),
    )
    assert agent.run_orders(3, set(SUBAGENTS)) == ["s2", "s2", "s2"]
    assert agent.run_orders(2, {"s1", "s3"}) == ["s1", "s1"]  # s2 is gone: the next in priority
    assert agent.run_orders(1, {"s3"}) == ["s3"]
    assert agent.run_orders(1, set(SUBAGENTS)) == ["s2"]  # and back when it returns


def test_a_subagent_at_its_process_limit_gets_no_more_until_one_ends() -> None:
    agent = Agent()
    agent.welcome("s1", process_limit=1)
    agent.welcome("s2", process_limit=1)
    agent.deploy(
        cluster_item("/fp", "SCHEDULING_MODE_FIXED_PRIORITY", {"s1": 2, "s2": 1}), signed(workflow("/fp"))
    )
    assert agent.run_orders(3, {"s1", "s2"}) == ["s1", "s2", ""]  # the third waits, ready
    agent.finish("o1", seq=1)
    assert agent.director.state.orders["o3"].processing.subagent_id == "s1"


def test_a_job_naming_a_cluster_the_agent_lacks_fails_its_order_with_a_clear_message(agent: Agent) -> None:
    agent.deploy(signed(workflow("/nowhere")))
    agent.run_orders(1, set(SUBAGENTS))
    order = agent.director.state.orders["o1"]
    [outcome] = order.historic_outcomes  # handed back to the controller, which fails the order
    assert outcome.outcome.kind == workflow_pb2.OUTCOME_KIND_FAILED
    assert "subagent cluster /nowhere is not deployed to agent agent-1" in outcome.outcome.message


def test_items_reach_the_agent_once_per_version(agent: Agent) -> None:
    first = cluster_item("/c", "SCHEDULING_MODE_ROUND_ROBIN", {"s1": 1})
    agent.controller.handle(c.Deploy((first, resource_item("/r", {"A": "'1'"}))), T0)
    assert sorted(i.path for i in agent.controller.items_to_attach("agent-1")) == ["/c", "/r"]
    agent.sync_items()
    assert agent.controller.items_to_attach("agent-1") == []
    assert agent.controller.handle(c.Deploy((first,)), T0) == []  # unchanged: nothing to do
    changed = cluster_item("/c", "SCHEDULING_MODE_ROUND_ROBIN", {"s1": 1, "s2": 1})
    assert kinds(agent.controller.handle(c.Deploy((changed,)), T0)) == ["item_deployed"]
    assert [i.path for i in agent.controller.items_to_attach("agent-1")] == ["/c"]
    agent.sync_items()
    assert [s.subagent_id for s in agent.director.state.subagent_clusters["/c"].subagents] == ["s1", "s2"]


def test_bad_clusters_are_refused_naming_the_field() -> None:
    controller = c.ControllerCore(c.ControllerState(), frozenset({"agent-1"}))
    cases = [
        (cluster_item("/c", "SCHEDULING_MODE_ROUND_ROBIN", {"s1": 1}, agent="agent-9"), "json (/c).agent"),
        (cluster_item("/c", "SCHEDULING_MODE_ROUND_ROBIN", {}), "json (/c).subagents"),
        (cluster_item("/c", "SOMETIMES", {"s1": 1}), "json (/c)"),
    ]
    for item, field in cases:
        with pytest.raises(InvalidArgument) as info:
            controller.handle(c.Deploy((item,)), T0)
        assert info.value.field == f"items[0].{field}", str(info.value)


def test_job_resources_give_env_and_variables_under_the_jobs_own(agent: Agent) -> None:
    agent.deploy(
        resource_item("/first", {"A": "'from first'", "B": "$url"}, {"url": "'https://x'"}),
        resource_item("/second", {"A": "'from second'", "C": "'c'"}),
        signed(workflow(resources=["/first", "/second"], env={"C": "'own'"})),
    )
    agent.run_orders(1, set(SUBAGENTS))
    [spec] = agent.director.subagent_work(
        agent.director.state.orders["o1"].processing.subagent_id, 10**9
    ).starts
    # The first named resource wins; the job's own env wins over every resource.
    assert (spec.env["A"], spec.env["B"], spec.env["C"]) == ("from first", "https://x", "own")


def test_a_job_resource_the_agent_lacks_fails_the_order(agent: Agent) -> None:
    agent.deploy(signed(workflow(resources=["/missing"])))
    agent.run_orders(1, set(SUBAGENTS))
    [outcome] = agent.director.state.orders["o1"].historic_outcomes
    assert "job resource /missing is not deployed" in outcome.outcome.message


def test_jobs_of_a_subagent_unreachable_too_long_end_disrupted(agent: Agent) -> None:
    agent.deploy(signed(workflow()))
    [picked] = agent.run_orders(1, set(SUBAGENTS))
    events = agent.director.handle(d.SubagentUnreachable(picked, 42.0), T0)
    assert kinds(events)[0] == "order_processed"
    outcome = events[0].order_processed.outcome
    assert outcome.kind == workflow_pb2.OUTCOME_KIND_DISRUPTED and "unreachable for 42 s" in outcome.message
    assert agent.director.handle(d.SubagentUnreachable(picked, 50.0), T0) == []  # once
