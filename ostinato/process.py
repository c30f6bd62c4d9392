"""What a subagent reports about a job process, as its director and the subagent itself know it:
the domain side of the subagent protocol's numbered messages (each service's convert module maps
them to and from the protos). Pure."""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
    returned_values_refused: str = ""  # why, when the job's return values exceed the limits


Message = Started | Output | Exited
