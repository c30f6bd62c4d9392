"""Events kept until released: what Watch(after) serves and Release(until) drops. Pure."""

from __future__ import annotations

from collections import deque

from gen.ostinato.common.v1 import events_pb2
from ostinato.errors import FailedPrecondition

# Bookkeeping of the journal itself; watchers are not served them (a receiver's release would
# otherwise produce an event for it to release, without end).
INTERNAL_KINDS = frozenset({"events_released", "agent_events_observed", "subagent_messages_observed"})


class EventLog:
    def __init__(self) -> None:
        self.events: deque[events_pb2.Event] = deque()
        self.last_id = 0
        self.released_until = 0

    def append(self, event: events_pb2.Event) -> None:
        if event.id != self.last_id + 1:
            raise ValueError(f"event id {event.id} does not follow {self.last_id}")
        self.events.append(event)
        self.last_id = event.id

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
        for i in range(max(start, 0), len(self.events)):
            e = self.events[i]
            if e.id > until_id or len(result) >= limit:
                break
            if e.WhichOneof("kind") not in INTERNAL_KINDS:
                result.append(e)
        return result

    def release(self, until_id: int) -> None:
        until_id = min(until_id, self.last_id)
        while self.events and self.events[0].id <= until_id:
            self.events.popleft()
        self.released_until = max(self.released_until, until_id)
