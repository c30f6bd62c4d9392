"""The one table of event kinds covers every kind the contract has, and its columns agree."""

from __future__ import annotations

from gen.ostinato.common.v1 import events_pb2
from ostinato.workflow.events import INTERNAL_KINDS, KINDS, LEAVING_AGENT_KINDS, MIRRORED_KINDS, Route

CONTRACT = {f.name for f in events_pb2.Event.DESCRIPTOR.oneofs_by_name["kind"].fields}


def test_every_kind_of_the_contract_has_a_row_and_no_row_is_made_up() -> None:
    assert set(KINDS) == CONTRACT


def test_columns_agree() -> None:
    order_kinds = {k for k in KINDS if k.startswith("order_")}
    # The controller mirrors order events only; bookkeeping is never served, never mirrored.
    assert MIRRORED_KINDS <= order_kinds
    assert INTERNAL_KINDS.isdisjoint(order_kinds) and INTERNAL_KINDS.isdisjoint(MIRRORED_KINDS)
    assert all(KINDS[k].route is Route.IGNORE for k in INTERNAL_KINDS)
    assert all(KINDS[k].route in (Route.ORDER, Route.LOG) for k in order_kinds)
    assert LEAVING_AGENT_KINDS == {"order_detached", "order_deleted"}
    # Events that only the controller decides are not taken from an agent.
    assert MIRRORED_KINDS.isdisjoint({"order_added", "order_forked", "order_joined", "order_lock_acquired"})
