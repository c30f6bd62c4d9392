"""Events kept until released: what Watch(after) serves and Release(until) drops. Pure."""

from __future__ import annotations

from collections import deque

from gen.ostinato.common.v1 import events_pb2
from ostinato.errors import FailedPrecondition
from ostinato.workflow.events import INTERNAL_KINDS

# A batch served to a watcher stops growing past this size (its events' serialized bytes): a job's
# output arrives in chunks of 32 KB, and 1000 of them in one message would be held in several
# copies on both sides. An event larger than that goes alone in its batch: the limits on what can
# be journaled (ostinato/limits.py) keep every event far below gRPC's message limit.
BATCH_BYTES = 1024 * 1024


def output_bytes(event: events_pb2.Event) -> int:
    """Bytes of job output an event carries: what flow control counts."""
    return len(event.order_std_written.chunk) if event.WhichOneof("kind") == "order_std_written" else 0


class EventLog:
    unreleased_output = 0  # for snapshots written before it was counted

    def __init__(self) -> None:
        self.events: deque[events_pb2.Event] = deque()
        self.last_id = 0
        self.released_until = 0
        # Job output held here until the receiver releases it: producers wait while it is large.
        self.unreleased_output = 0

    def append(self, event: events_pb2.Event) -> None:
        if event.id != self.last_id + 1:
            raise ValueError(f"event id {event.id} does not follow {self.last_id}")
        self.events.append(event)
        self.last_id = event.id
        self.unreleased_output += output_bytes(event)

    def after(self, after_id: int, until_id: int, limit: int = 1000) -> list[events_pb2.Event]:
        """Events with after_id < id <= until_id, at most `limit`."""
        if after_id < self.released_until:
            raise FailedPrecondition(
                f"events after {after_id} were released already (released until {self.released_until});"
                " the receiver must resynchronise",
                field="after",
            )
        if after_id > self.last_id:
            raise FailedPrecondition(f"no event {after_id} yet (last is {self.last_id})", field="after")
        if not self.events:
            return []
        start = after_id - self.events[0].id + 1  # ids are gapless, so the index is arithmetic
        result: list[events_pb2.Event] = []
        size = 0
        for i in range(max(start, 0), len(self.events)):
            e = self.events[i]
            if e.id > until_id or len(result) >= limit:
                break
            # The journal's bookkeeping is not served: a receiver's release would otherwise produce
            # an event for it to release, without end.
            if e.WhichOneof("kind") not in INTERNAL_KINDS:
                n = e.ByteSize()
                if result and size + n > BATCH_BYTES:
                    break
                result.append(e)
                size += n
        return result

    def release(self, until_id: int) -> None:
        until_id = min(until_id, self.last_id)
        while self.events and self.events[0].id <= until_id:
            self.unreleased_output -= output_bytes(self.events.popleft())
        self.released_until = max(self.released_until, until_id)
