"""The subagent core alone: numbering, acks, resending, idempotent starts, term fencing, lost
director."""

from __future__ import annotations

import pytest

from ostinato.errors import FailedPrecondition, InvalidArgument
from ostinato.process import Exited, Output, Started, Stream
from subagent_svc.core import MAX_CHUNK_CHARS, MESSAGE_OVERHEAD, SubagentCore


def drain(core: SubagentCore, session: int) -> list[tuple[int, object]]:
    sent = []
    while (item := core.next_to_send(session)) is not None:
        sent.append(item)
    return sent


def test_messages_are_numbered_from_one_and_sent_in_order() -> None:
    core = SubagentCore(10, now=0)
    s = core.hello(1, now=0)
    assert core.start("k")
    assert core.record(Started("k", 42)) == 1
    assert core.record(Output("k", Stream.STDOUT, "hi\n")) == 2
    assert core.record(Exited("k", return_code=0)) == 3
    assert drain(core, s) == [
        (1, Started("k", 42)),
        (2, Output("k", Stream.STDOUT, "hi\n")),
        (3, Exited("k", return_code=0)),
    ]
    assert drain(core, s) == []


def test_unacknowledged_messages_are_resent_to_the_next_session_with_their_seq() -> None:
    core = SubagentCore(10, now=0)
    first = core.hello(1, now=0)
    core.start("k")
    core.record(Started("k", 42))
    core.record(Exited("k", return_code=3))
    drain(core, first)
    core.ack(1)
    core.session_ended(first, now=1)
    second = core.hello(1, now=2)
    assert drain(core, second) == [(2, Exited("k", return_code=3))]
    assert core.known_process_keys() == ["k"]
    core.ack(2)
    assert core.known_process_keys() == []
    core.session_ended(second, now=3)
    assert drain(core, core.hello(1, now=4)) == []


def test_nothing_is_sent_without_a_live_session() -> None:
    core = SubagentCore(10, now=0)
    old = core.hello(1, now=0)
    new = core.hello(1, now=0)
    core.start("k")
    core.record(Started("k", 1))
    assert core.next_to_send(old) is None
    assert core.next_to_send(new) == (1, Started("k", 1))
    assert not core.session_ended(old, now=1)  # the superseded session ending changes nothing
    assert core.is_live(new)


def test_ack_beyond_the_last_message_is_refused_and_old_acks_are_harmless() -> None:
    core = SubagentCore(10, now=0)
    core.hello(1, now=0)
    core.start("k")
    core.record(Started("k", 1))
    with pytest.raises(InvalidArgument, match="ack.until_seq"):
        core.ack(2)
    core.ack(1)
    core.ack(0)
    core.ack(1)
    assert core.unacknowledged() == []


def test_a_known_key_is_not_started_again_until_its_exit_is_acknowledged() -> None:
    core = SubagentCore(10, now=0)
    core.hello(1, now=0)
    assert core.start("k")
    assert not core.start("k")
    core.record(Started("k", 1))
    core.record(Exited("k", return_code=0))
    assert not core.start("k")
    assert core.running_process_keys() == []
    assert core.known_process_keys() == ["k"]
    with pytest.raises(InvalidArgument, match="process_key"):
        core.start("")


def test_older_term_is_refused_and_equal_or_newer_accepted() -> None:
    core = SubagentCore(10, now=0)
    live = core.hello(5, now=0)
    with pytest.raises(FailedPrecondition, match="hello.term"):
        core.hello(4, now=0)
    assert core.is_live(live)  # a refused hello leaves the live session alone
    assert core.hello(5, now=0) != live
    core.hello(7, now=0)
    assert core.highest_term == 7
    with pytest.raises(FailedPrecondition):
        core.hello(6, now=0)


def test_output_merges_into_the_unsent_tail_only() -> None:
    core = SubagentCore(10, now=0)
    s = core.hello(1, now=0)
    core.start("k")
    core.record(Started("k", 1))
    assert core.record(Output("k", Stream.STDOUT, "a")) == 2
    assert core.record(Output("k", Stream.STDOUT, "b")) == 2
    assert core.record(Output("k", Stream.STDERR, "c")) == 3
    assert core.record(Output("k", Stream.STDOUT, "d")) == 4
    assert drain(core, s)[-1] == (4, Output("k", Stream.STDOUT, "d"))
    assert core.record(Output("k", Stream.STDOUT, "e")) == 5  # 4 was sent: it must stay as sent
    assert core.record(Output("k", Stream.STDOUT, "x" * MAX_CHUNK_CHARS)) == 6
    assert [m for _, m in core.unacknowledged()][1] == Output("k", Stream.STDOUT, "ab")
    assert core.buffered_bytes == 5 + MAX_CHUNK_CHARS + 5 * MESSAGE_OVERHEAD
    core.ack(6)
    assert core.buffered_bytes == 0


def test_processes_are_abandoned_once_when_no_session_existed_for_the_timeout() -> None:
    core = SubagentCore(10, now=0)
    s = core.hello(1, now=0)
    core.start("a")
    core.start("b")
    core.record(Exited("b", return_code=0))
    assert core.director_lost(now=100) == []  # a live session: nothing is lost
    core.session_ended(s, now=100)
    assert core.director_lost(now=109.9) == []
    assert core.director_lost(now=110) == ["a"]
    assert core.director_lost(now=111) == []
    core.record(Exited("a", signal=15, message="director lost"))
    assert core.known_process_keys() == ["a", "b"]


def test_a_director_back_within_the_timeout_keeps_the_processes() -> None:
    core = SubagentCore(10, now=0)
    s = core.hello(1, now=0)
    core.start("a")
    core.session_ended(s, now=1)
    core.hello(1, now=5)
    assert core.director_lost(now=50) == []
