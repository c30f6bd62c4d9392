"""Every kind of journal event and what each part of the system does with it: one table.

Per kind: the order states it applies in (ostinato.workflow.orders refuses it elsewhere), whether
the controller mirrors it from an agent, whether it is the journal's own bookkeeping (never served
to watchers), whether the order leaves the agent with it, where JOC files it, and how the CLI
words it. A kind added to events.proto without a row here fails tests/unit/test_event_kinds.py.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC

from google.protobuf.timestamp_pb2 import Timestamp

from gen.ostinato.common.v1 import events_pb2, order_pb2, workflow_pb2
from ostinato.workflow import positions

S = order_pb2.OrderState
Event = events_pb2.Event
Order = order_pb2.Order


class Route(enum.Enum):
    """Where JOC puts an event of a controller."""

    IGNORE = "ignore"  # not about an order (deployments, releases, agent and JOC bookkeeping)
    ITEM = "item"  # an agent confirmed a deployed item: the deployment history
    LOG = "log"  # job output: the order log, not the event history
    ORDER = "order"  # changes the order: event history and the orders projection


Words = Callable[[Event, Order], str]


@dataclass(frozen=True, slots=True)
class Kind:
    applies_in: frozenset[int] | None = None  # None: any state
    mirrored: bool = False  # an agent's event that the controller copies into its own journal
    internal: bool = False  # the journal's bookkeeping: watchers are never served it
    leaves_agent: bool = False  # the agent holds the order no more after it
    route: Route = Route.ORDER
    says: Words | None = None  # one line for `ostinato order add --wait`; None: not worth one


def outcome_text(outcome: workflow_pb2.Outcome) -> str:
    word = workflow_pb2.OutcomeKind.Name(outcome.kind).removeprefix("OUTCOME_KIND_").lower()
    if outcome.kind in (workflow_pb2.OUTCOME_KIND_SUCCEEDED, workflow_pb2.OUTCOME_KIND_FAILED):
        word += f" (return code {outcome.return_code})"
    elif outcome.signal:
        word += f" (signal {outcome.signal})"
    return f"{word}: {outcome.message}" if outcome.message else word


def time_text(ts: Timestamp) -> str:
    """In the reader's local time zone."""
    return str(ts.ToDatetime(tzinfo=UTC).astimezone().isoformat(timespec="seconds"))


def _added(e: Event, _: Order) -> str:
    added = e.order_added.order
    text = f"added to {added.workflow_path} version {added.workflow_version_id}"
    if added.HasField("scheduled_for"):
        text += f", scheduled for {time_text(added.scheduled_for)}"
    return text


def _processing(e: Event, order: Order) -> str:
    text = f"processing on {e.order_processing_started.processing.subagent_id or 'a subagent'}"
    return text + (f" (attempt {order.attempt})" if order.attempt > 1 else "")


def _failed(e: Event, _: Order) -> str:
    outcome = e.order_failed.outcome
    if outcome.kind == workflow_pb2.OUTCOME_KIND_FAILED:
        return outcome_text(outcome)  # "failed (return code 1)"
    return f"failed: {outcome_text(outcome)}" if outcome.kind or outcome.message else "failed"


def _finished(e: Event, _: Order) -> str:
    outcome = e.order_finished.outcome
    succeeded = outcome.kind in (workflow_pb2.OUTCOME_KIND_UNSPECIFIED, workflow_pb2.OUTCOME_KIND_SUCCEEDED)
    return "finished" if succeeded else f"finished: {outcome_text(outcome)}"


def _retrying(e: Event, _: Order) -> str:
    text = f"retrying at {positions.text(e.order_retrying.to)}"
    return text + (f" from {time_text(e.order_retrying.until)}" if e.order_retrying.HasField("until") else "")


def _resumed(e: Event, _: Order) -> str:
    resumed = e.order_resumed
    return "resumed" + (f" at {positions.text(resumed.position)}" if resumed.HasField("position") else "")


def _says(text: str) -> Words:
    return lambda _e, _o: text


_MOVABLE = frozenset({S.ORDER_STATE_READY, S.ORDER_STATE_PROCESSED, S.ORDER_STATE_WAITING})
_READY_OR_PROCESSED = frozenset({S.ORDER_STATE_READY, S.ORDER_STATE_PROCESSED})
_READY = frozenset({S.ORDER_STATE_READY})
_LIVE = frozenset(
    set(S.values())
    - {S.ORDER_STATE_UNSPECIFIED, S.ORDER_STATE_FINISHED, S.ORDER_STATE_CANCELLED}  # not ended
)

KINDS: dict[str, Kind] = {
    "item_deployed": Kind(route=Route.IGNORE),
    "item_deleted": Kind(route=Route.IGNORE),
    "events_released": Kind(internal=True, route=Route.IGNORE),
    "agent_events_observed": Kind(internal=True, route=Route.IGNORE),
    "subagent_messages_observed": Kind(internal=True, route=Route.IGNORE),
    "joc_epoch_raised": Kind(internal=True, route=Route.IGNORE),  # fences a deposed JOC out
    "item_attached": Kind(route=Route.ITEM),
    "order_added": Kind(says=_added),
    "order_attachable": Kind(applies_in=frozenset({S.ORDER_STATE_FRESH, *_READY_OR_PROCESSED})),
    "order_attached": Kind(mirrored=True, says=lambda e, _: f"attached to agent {e.order_attached.agent}"),
    "order_started": Kind(applies_in=frozenset({S.ORDER_STATE_FRESH}), mirrored=True, says=_says("started")),
    "order_processing_started": Kind(applies_in=_READY, mirrored=True, says=_processing),
    "order_std_written": Kind(mirrored=True, route=Route.LOG),
    # From READY: a job that could not start (no such subagent cluster or job resource at the agent).
    "order_processed": Kind(
        applies_in=frozenset({S.ORDER_STATE_PROCESSING, S.ORDER_STATE_READY}),
        mirrored=True,
        says=lambda e, _: f"processed: {outcome_text(e.order_processed.outcome)}",
    ),
    "order_moved": Kind(
        applies_in=_MOVABLE, mirrored=True, says=lambda e, _: f"moved to {positions.text(e.order_moved.to)}"
    ),
    "order_detachable": Kind(mirrored=True),
    "order_detached": Kind(mirrored=True, leaves_agent=True),
    "order_failed": Kind(applies_in=_READY_OR_PROCESSED, says=_failed),
    "order_finished": Kind(applies_in=_READY_OR_PROCESSED, says=_finished),
    "order_deleted": Kind(leaves_agent=True, says=_says("deleted")),
    "order_forked": Kind(
        applies_in=_READY,
        says=lambda e, _: f"forked into {', '.join(c.order_id for c in e.order_forked.children)}",
    ),
    "order_joined": Kind(
        applies_in=frozenset({S.ORDER_STATE_FORKED}),
        says=lambda e, _: f"joined its children: {outcome_text(e.order_joined.outcome)}",
    ),
    "order_caught": Kind(
        applies_in=_READY_OR_PROCESSED,
        mirrored=True,
        says=lambda e, _: f"caught, continues at {positions.text(e.order_caught.to)}",
    ),
    "order_retrying": Kind(applies_in=_READY, mirrored=True, says=_retrying),
    "order_awoke": Kind(applies_in=frozenset({S.ORDER_STATE_WAITING}), mirrored=True),
    "order_lock_acquired": Kind(applies_in=frozenset({S.ORDER_STATE_READY, S.ORDER_STATE_WAITING})),
    "order_lock_queued": Kind(applies_in=_READY),
    "order_lock_released": Kind(),
    "order_prompted": Kind(applies_in=_READY, says=lambda e, _: f"prompting: {e.order_prompted.question}"),
    "order_prompt_answered": Kind(
        applies_in=frozenset({S.ORDER_STATE_PROMPTING}), says=_says("prompt answered")
    ),
    "order_sleeping": Kind(applies_in=_READY, mirrored=True),
    "order_cycle_started": Kind(applies_in=_READY, mirrored=True),
    "order_cycle_finished": Kind(applies_in=_READY, mirrored=True),
    "order_order_added": Kind(),
    "order_marked": Kind(mirrored=True),
    "order_cancelled": Kind(applies_in=_LIVE, says=_says("cancelled")),
    "order_suspended": Kind(
        applies_in=frozenset({S.ORDER_STATE_FRESH, S.ORDER_STATE_READY, S.ORDER_STATE_WAITING}),
        mirrored=True,
        says=_says("suspended"),
    ),
    "order_resumed": Kind(
        applies_in=frozenset({S.ORDER_STATE_SUSPENDED, S.ORDER_STATE_FAILED}), mirrored=True, says=_resumed
    ),
    "order_kill_requested": Kind(applies_in=frozenset({S.ORDER_STATE_PROCESSING}), mirrored=True),
    "order_transferred": Kind(
        applies_in=frozenset({S.ORDER_STATE_FRESH}),
        mirrored=True,
        says=lambda e, _: f"moved to workflow version {e.order_transferred.workflow_version_id}",
    ),
}

NO_KIND = Kind(route=Route.IGNORE)

MIRRORED_KINDS = frozenset(name for name, k in KINDS.items() if k.mirrored)
INTERNAL_KINDS = frozenset(name for name, k in KINDS.items() if k.internal)
LEAVING_AGENT_KINDS = frozenset(name for name, k in KINDS.items() if k.leaves_agent)


def kind_of(event: Event) -> Kind:
    name = event.WhichOneof("kind")
    return KINDS[name] if name is not None else NO_KIND
