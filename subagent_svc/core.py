"""The subagent's bookkeeping, free of I/O: numbered outbox, acks, known processes, term fencing.

The shell (server.py, processes.py) feeds it what happened and asks what to do; time arrives as a
parameter. Nothing here is persisted: a restarted subagent is a new run with a new run id, and the
director learns from that id that the old run's processes are gone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from ostinato.errors import FailedPrecondition, InvalidArgument

# Output is merged into the newest message while that one is unsent (never after: a resent message
# must equal the first sending), because each gRPC message costs far more than its bytes.
MAX_CHUNK_CHARS = 32 * 1024
# Counted per buffered output message beside its text, so many tiny chunks also fill the bound.
MESSAGE_OVERHEAD = 100


class Stream(enum.Enum):
    STDOUT = 1
    STDERR = 2


@dataclass(frozen=True, slots=True)
class Started:
    process_key: str
    pid: int


@dataclass(frozen=True, slots=True)
class Output:
    process_key: str
    stream: Stream
    chunk: str


@dataclass(frozen=True, slots=True)
class Exited:
    process_key: str
    return_code: int = 0
    signal: int = 0
    message: str = ""
    timed_out: bool = False
    returned_values: tuple[tuple[str, str], ...] = ()
    not_started: bool = False  # refused or impossible to start: `message` says why


Message = Started | Output | Exited


def _size(message: Message) -> int:
    return len(message.chunk) + MESSAGE_OVERHEAD if isinstance(message, Output) else 0


class SubagentCore:
    """State of one subagent run. Sessions are numbered; at most one is live."""

    def __init__(self, director_timeout: float, now: float) -> None:
        self.director_timeout = director_timeout
        self.highest_term = 0
        self._outbox: dict[int, Message] = {}
        self._acked = 0  # every seq <= _acked is acknowledged and dropped
        self._last = 0
        self._sent = 0  # the live session has been given every seq <= _sent
        self._buffered = 0
        # key -> still running; a key stays known until its ProcessExited is acknowledged.
        self._known: dict[str, bool] = {}
        self._abandoned: set[str] = set()  # killed for a lost director, exit not yet seen
        self._live = 0
        self._session_count = 0
        self._no_session_since: float | None = now

    # Sessions

    def hello(self, term: int, now: float) -> int:
        """Accepts a director's session, ending any live one; returns the new session's id."""
        if term < self.highest_term:
            # A deposed director must not start work beside the one that replaced it.
            raise FailedPrecondition(
                f"term {term} is older than term {self.highest_term} already seen", field="hello.term"
            )
        self.highest_term = term
        self._session_count += 1
        self._live = self._session_count
        self._sent = self._acked
        self._no_session_since = None
        return self._live

    def session_ended(self, session: int, now: float) -> bool:
        """Returns whether `session` was the live one (a superseded session ending changes nothing)."""
        if session != self._live:
            return False
        self._live = 0
        self._sent = self._acked
        self._no_session_since = now
        return True

    def is_live(self, session: int) -> bool:
        return session != 0 and session == self._live

    def director_lost(self, now: float) -> list[str]:
        """Keys of running processes to kill now because no session has existed for too long.

        Each key is returned once; its ProcessExited stays unacknowledged for the next director.
        """
        since = self._no_session_since
        if since is None or now - since < self.director_timeout:
            return []
        keys = [key for key, running in self._known.items() if running and key not in self._abandoned]
        self._abandoned.update(keys)
        return keys

    # Processes

    def start(self, process_key: str) -> bool:
        """Whether to start the process; a key known in this run is never started again."""
        if not process_key:
            raise InvalidArgument("must not be empty", field="start_process.process_key")
        if process_key in self._known:
            return False
        self._known[process_key] = True
        return True

    def known_process_keys(self) -> list[str]:
        return list(self._known)

    def running_process_keys(self) -> list[str]:
        return [key for key, running in self._known.items() if running]

    # Numbered messages

    def record(self, message: Message) -> int:
        """Numbers a message (or merges output into the unsent tail) and returns its seq."""
        if isinstance(message, Exited):
            self._known[message.process_key] = False
            self._abandoned.discard(message.process_key)
        elif isinstance(message, Output):
            tail = self._outbox.get(self._last)
            if (
                self._last > self._sent
                and isinstance(tail, Output)
                and tail.process_key == message.process_key
                and tail.stream == message.stream
                and len(tail.chunk) + len(message.chunk) <= MAX_CHUNK_CHARS
            ):
                self._outbox[self._last] = replace(tail, chunk=tail.chunk + message.chunk)
                self._buffered += len(message.chunk)
                return self._last
        self._last += 1
        self._outbox[self._last] = message
        self._buffered += _size(message)
        return self._last

    def next_to_send(self, session: int) -> tuple[int, Message] | None:
        """The next numbered message for the live session, in seq order, each once per session."""
        if not self.is_live(session) or self._sent >= self._last:
            return None
        self._sent += 1
        return self._sent, self._outbox[self._sent]

    def ack(self, until_seq: int) -> None:
        """Drops every message up to and including until_seq; older acks are harmless repeats."""
        if until_seq > self._last:
            # Most likely a seq of an earlier run: dropping this run's messages for it would lose them.
            raise InvalidArgument(
                f"{until_seq} is beyond the last message {self._last} of this run", field="ack.until_seq"
            )
        while self._acked < until_seq:
            self._acked += 1
            message = self._outbox.pop(self._acked)
            self._buffered -= _size(message)
            if isinstance(message, Exited):
                self._known.pop(message.process_key, None)
        self._sent = max(self._sent, self._acked)

    def unacknowledged(self) -> list[tuple[int, Message]]:
        return [(seq, self._outbox[seq]) for seq in range(self._acked + 1, self._last + 1)]

    @property
    def buffered_bytes(self) -> int:
        """Approximate size of unacknowledged output, for backpressure on the pipes."""
        return self._buffered
