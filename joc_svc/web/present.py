"""How the web view words and arranges what JOC knows (pure: no I/O). Order states, outcomes and
one line per event come from the CLI's wording (ostinato.cli.render, ostinato.workflow.events),
so both say the same."""

from __future__ import annotations

import calendar as gregorian
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from gen.ostinato.common.v1 import events_pb2, order_pb2, values_pb2
from gen.ostinato.joc.v1 import joc_pb2
from joc_svc.store import DeploymentRow, OrderRow
from joc_svc.store.orders import LATE_AFTER
from ostinato.cli.render import describe, state_word
from ostinato.errors import InvalidArgument
from ostinato.workflow import positions
from ostinato.workflow.values import parse_cli_value, value_text

S = order_pb2.OrderState
# The states the orders table offers as filters, in the order an order passes them.
STATES = (
    S.ORDER_STATE_FRESH,
    S.ORDER_STATE_READY,
    S.ORDER_STATE_PROCESSING,
    S.ORDER_STATE_PROCESSED,
    S.ORDER_STATE_WAITING,
    S.ORDER_STATE_PROMPTING,
    S.ORDER_STATE_FORKED,
    S.ORDER_STATE_SUSPENDED,
    S.ORDER_STATE_FAILED,
    S.ORDER_STATE_BROKEN,
    S.ORDER_STATE_FINISHED,
    S.ORDER_STATE_CANCELLED,
)
PAGE_SIZES = (25, 50, 100, 200)


def when(value: datetime | Timestamp | None) -> str:
    """ISO 8601 in UTC; the page shows it in the reader's time zone."""
    if value is None:
        return ""
    if isinstance(value, Timestamp):
        value = value.ToDatetime(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def shown_state(order: order_pb2.Order, deleted: bool) -> str:
    """An order's state word; one the controller let go of before it finished or was cancelled
    says so: a fork's child once its parent joined it, any other deleted."""
    word = state_word(order.state)
    if deleted and order.state not in (S.ORDER_STATE_FINISHED, S.ORDER_STATE_CANCELLED):
        word += " (joined)" if order.parent_id else " (deleted)"
    return word


def state_class(state: int) -> str:
    """The CSS class of a state's badge: its word."""
    return state_word(state).replace(" ", "-")


@dataclass(frozen=True, slots=True)
class OrderLine:
    """One row of the orders table."""

    id: str
    state: str
    state_class: str
    workflow: str
    version: str
    position: str
    scheduled: str
    started: str
    updated: str
    late: bool
    controller: str


def order_line(row: OrderRow, started: datetime | None, now: datetime) -> OrderLine:
    o = row.order
    state = shown_state(o, row.deleted)
    if row.left_unseen_state is not None:
        state = f"unknown (was {state_word(row.left_unseen_state)})"
    start = o.scheduled_for.ToDatetime(tzinfo=UTC) if o.HasField("scheduled_for") else row.added_at
    late = o.state == S.ORDER_STATE_FRESH and not row.deleted and start + LATE_AFTER < now
    return OrderLine(
        id=o.id,
        state=state,
        state_class=state_class(o.state),
        workflow=o.workflow_path,
        version=o.workflow_version_id,
        position=positions.text(o.position),
        scheduled=when(o.scheduled_for) if o.HasField("scheduled_for") else "",
        started=when(started),
        updated=when(row.updated_at),
        late=late,
        controller=row.controller_id,
    )


@dataclass(frozen=True, slots=True)
class HistoryLine:
    id: int
    at: str
    text: str


def history(pairs: Iterable[tuple[events_pb2.Event, order_pb2.Order | None]]) -> list[HistoryLine]:
    """One line per order event worth one, as `ostinato order add --wait` prints it; job output
    and bookkeeping events are left out."""
    lines = []
    for event, order in pairs:
        if event.WhichOneof("kind") == "order_std_written":
            continue
        text = describe(event, order or order_pb2.Order())
        if text is None:
            continue
        own = text.removeprefix(f"{event.order_id} ")
        lines.append(HistoryLine(event.id, when(event.timestamp) if event.HasField("timestamp") else "", own))
    return lines


def values(mapping: Mapping[str, values_pb2.Value]) -> list[tuple[str, str]]:
    return [(k, value_text(mapping[k])) for k in sorted(mapping)]


def parse_arguments(text: str, field: str = "arguments") -> dict[str, values_pb2.Value]:
    """NAME=VALUE lines (as `ostinato order add --arg`): numbers become numbers, true/false
    booleans, the rest strings; spaces around the name and the value and blank lines are
    left out."""
    found: dict[str, values_pb2.Value] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise InvalidArgument(f"line {number}: expected NAME=VALUE, got {line!r}", field=field)
        found[name.strip()] = parse_cli_value(value.strip())
    return found


def page_count(total: int, size: int) -> int:
    return max(1, (total + size - 1) // size)


# ---- the daily plan's month calendar


@dataclass(frozen=True, slots=True)
class Day:
    day: date
    in_month: bool
    starts: int  # planned starts (projections) of all schedules
    today: bool


def month_grid(year: int, month: int, counts: Mapping[date, int], today: date) -> list[list[Day]]:
    """The month as weeks from Monday to Sunday, days of the adjacent months included."""
    weeks = gregorian.Calendar(firstweekday=0).monthdatescalendar(year, month)
    return [[Day(d, d.month == month, counts.get(d, 0), d == today) for d in week] for week in weeks]


def parse_month(text: str, default: date) -> tuple[int, int]:
    if not text:
        return default.year, default.month
    try:
        year, month = (int(part) for part in text.split("-"))
        date(year, month, 1)
    except ValueError:
        raise InvalidArgument(f"{text!r} is not a month YYYY-MM", field="month") from None
    return year, month


def shift_month(year: int, month: int, by: int) -> str:
    index = year * 12 + month - 1 + by
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def projection_counts(response: joc_pb2.PlanProjectionsResponse) -> dict[date, int]:
    """Starts per plan date over every schedule."""
    counts: dict[date, int] = {}
    for schedule in response.schedules:
        for d in schedule.dates:
            day = date.fromisoformat(d.plan_date)
            counts[day] = counts.get(day, 0) + d.count
    return counts


PLAN_STATE_WORDS = {
    joc_pb2.PLANNED_ORDER_STATE_PLANNED: "planned",
    joc_pb2.PLANNED_ORDER_STATE_SUBMITTED: "submitted",
    joc_pb2.PLANNED_ORDER_STATE_FINISHED: "finished",
    joc_pb2.PLANNED_ORDER_STATE_FAILED: "failed",
    joc_pb2.PLANNED_ORDER_STATE_CANCELLED: "cancelled",
}


def plan_counts(planned: Sequence[joc_pb2.PlannedOrder]) -> dict[str, int]:
    """A date's orders by state, and how many are late."""
    counts = dict.fromkeys([*PLAN_STATE_WORDS.values(), "late"], 0)
    for o in planned:
        counts[PLAN_STATE_WORDS.get(o.state, "planned")] += 1
        counts["late"] += o.late
    return counts


# ---- the inventory


@dataclass(frozen=True, slots=True)
class Folder:
    path: str
    name: str
    depth: int


def folders(paths: Iterable[str]) -> list[Folder]:
    """Every folder that holds objects (and those above it), depth first, "/" first."""
    found = {"/"}
    for path in paths:
        parts = path.strip("/").split("/")[:-1]
        for n in range(1, len(parts) + 1):
            found.add("/" + "/".join(parts[:n]))
    ordered = sorted(found, key=lambda f: [] if f == "/" else f.strip("/").split("/"))
    return [Folder(f, f.rsplit("/", 1)[-1] or "/", 0 if f == "/" else f.count("/")) for f in ordered]


def in_folder(path: str, folder: str) -> bool:
    """`path` lies directly in `folder`."""
    return path.rsplit("/", 1)[0] == folder.rstrip("/")


def current_versions(rows: Iterable[DeploymentRow]) -> dict[str, DeploymentRow]:
    """controller -> the newest version deployed there (rows newest first, as listed)."""
    found: dict[str, DeploymentRow] = {}
    for row in rows:
        if row.status == joc_pb2.DEPLOYMENT_STATUS_DEPLOYED and row.controller_id not in found:
            found[row.controller_id] = row
    return found
