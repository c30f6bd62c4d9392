"""Base of the controller's and the director's journaled state. Pure."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from gen.ostinato.common.v1 import events_pb2
from ostinato.journal.eventlog import EventLog


class JournaledState(ABC):
    """State rebuilt by applying events in id order; `emit` is how a core decides an event: it
    gets the next id, applies at once (so the next decision sees it) and is returned for the
    journal to commit."""

    # Classes whose instances a snapshot may hold (see ostinato/journal/snapshot.py).
    snapshot_classes: tuple[type, ...] = (EventLog,)

    def __init__(self) -> None:
        self.log = EventLog()

    @property
    def last_event_id(self) -> int:
        return self.log.last_id

    def apply(self, event: events_pb2.Event) -> None:
        self.log.append(event)
        if event.WhichOneof("kind") == "events_released":
            self.log.release(event.events_released.until_id)
        else:
            self.apply_to_state(event)

    def restored(self) -> None:  # noqa: B027 - a hook; most states need nothing here
        """Called once a snapshot's attributes are in place: the place to take in an older form."""

    @abstractmethod
    def apply_to_state(self, event: events_pb2.Event) -> None:
        """What an event means for this service's state."""

    def emit(self, now_ms: int, order_id: str = "", **kind: Any) -> events_pb2.Event:
        event = events_pb2.Event(id=self.last_event_id + 1, order_id=order_id, **kind)
        event.timestamp.FromMilliseconds(now_ms)
        self.apply(event)
        return event

    def release(self, until_id: int, now_ms: int) -> list[events_pb2.Event]:
        """The receiver confirmed events up to until_id; nothing to journal if nothing changes."""
        until_id = min(until_id, self.last_event_id)
        if until_id <= self.log.released_until:
            return []
        return [self.emit(now_ms, events_released=events_pb2.EventsReleased(until_id=until_id))]
