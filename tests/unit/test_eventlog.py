"""The event log against a naive reference, under random appends, releases and reads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gen.ostinato.common.v1 import events_pb2
from ostinato.errors import FailedPrecondition
from ostinato.journal.eventlog import BATCH_BYTES, EventLog

ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.booleans()),  # internal bookkeeping event or not
        st.tuples(st.just("release"), st.integers(0, 60)),
        st.tuples(st.just("read"), st.integers(0, 60)),
    ),
    max_size=80,
)


@given(ops)
def test_matches_reference(operations: list[tuple[str, object]]) -> None:
    log = EventLog()
    reference: list[tuple[int, bool]] = []  # (id, internal)
    released = 0
    for op, arg in operations:
        if op == "append":
            next_id = log.last_id + 1
            kind = (
                {"events_released": events_pb2.EventsReleased()}
                if arg
                else {"order_started": events_pb2.OrderStarted()}
            )
            log.append(events_pb2.Event(id=next_id, **kind))
            reference.append((next_id, bool(arg)))
        elif op == "release":
            until = min(int(arg), log.last_id)  # type: ignore[call-overload]
            log.release(until)
            released = max(released, until)
        else:
            after = int(arg)  # type: ignore[call-overload]
            if after < released or after > log.last_id:
                with pytest.raises(FailedPrecondition):
                    log.after(after, log.last_id)
                continue
            got = [e.id for e in log.after(after, log.last_id, limit=10_000)]
            assert got == [i for i, internal in reference if i > after and not internal]
    assert [e.id for e in log.events] == [i for i, _ in reference if i > released]


def test_append_rejects_a_gap() -> None:
    log = EventLog()
    with pytest.raises(ValueError, match="does not follow"):
        log.append(events_pb2.Event(id=2))


def test_batches_are_bounded_in_bytes_and_a_larger_event_goes_alone() -> None:
    log = EventLog()
    big = events_pb2.ItemDeployed(signed_json="x" * (BATCH_BYTES * 2))
    small = events_pb2.ItemDeployed(signed_json="y" * (BATCH_BYTES // 3))
    for i, item in enumerate([small, small, small, small, big, small], start=1):
        log.append(events_pb2.Event(id=i, item_deployed=item))
    batches = []
    after = 0
    while after < log.last_id:
        batch = log.after(after, log.last_id)
        batches.append([e.id for e in batch])
        after = batch[-1].id
    # At most two of a third each (a third would pass the bound); the big one alone.
    assert batches == [[1, 2], [3, 4], [5], [6]]
