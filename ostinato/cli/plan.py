"""`ostinato plan ...` and `ostinato calendar dates`: the daily plan. Every command prints a table
(times in UTC, RFC 3339) or, with `--output json`, JSON for scripts."""

from __future__ import annotations

import argparse
import calendar as gregorian
import json
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, date
from typing import Any

from ostinato.cli.client import CliError, connect
from ostinato.cli.render import print_table

STATES = ("planned", "submitted", "finished", "failed", "cancelled")
_MONTH = re.compile(r"\d{4}-\d{2}")


def _utc(ts: Any) -> str:
    return f"{ts.ToDatetime(tzinfo=UTC):%Y-%m-%dT%H:%M:%S}Z"


def _emit(args: argparse.Namespace, value: Any, text: Callable[[], None]) -> None:
    if args.output == "json":
        json.dump(value, sys.stdout, indent=2)
        print()
    else:
        text()


def _start(s: Any) -> dict[str, str]:
    return {
        "planDate": s.plan_date,
        "scheduledFor": _utc(s.scheduled_for),
        "orderId": s.order_id,
        "workflowPath": s.workflow_path,
        "orderName": s.order_name,
    }


def _print_starts(starts: Sequence[Any]) -> None:
    rows = [("PLAN DATE", "SCHEDULED FOR (UTC)", "WORKFLOW", "NAME", "ORDER ID")]
    rows += [(s.plan_date, _utc(s.scheduled_for), s.workflow_path, s.order_name, s.order_id) for s in starts]
    print_table(rows)


def _state_word(state: int) -> str:
    from gen.ostinato.joc.v1 import joc_pb2

    return joc_pb2.PlannedOrderState.Name(state).removeprefix("PLANNED_ORDER_STATE_").lower()  # type: ignore[arg-type]


def cmd_calendar_dates(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    response = joc.call(
        joc.plan.CalendarDates,
        joc_pb2.CalendarDatesRequest(
            calendar_path=args.calendar_path,
            from_date=args.from_date,
            to_date=args.to_date,
            released=args.released,
        ),
    )
    _emit(args, list(response.dates), lambda: print("\n".join(response.dates)))
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    if args.next is None and not args.from_date:
        raise CliError("give --from DATE [--to DATE], or --next N")
    if args.next is not None and args.from_date:
        raise CliError("give --from/--to or --next, not both")
    joc = connect(args)
    response = joc.call(
        joc.plan.PreviewPlan,
        joc_pb2.PreviewPlanRequest(
            schedule_path=args.schedule_path,
            from_date=args.from_date or "",
            to_date=args.to_date or "",
            next=args.next or 0,
            released=args.released,
        ),
    )
    _emit(args, [_start(s) for s in response.starts], lambda: _print_starts(response.starts))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    response = joc.call(
        joc.plan.ExplainPlan,
        joc_pb2.ExplainPlanRequest(schedule_path=args.schedule_path, date=args.date, released=args.released),
    )
    value = {
        "schedulePath": args.schedule_path,
        "planDate": args.date,
        "reasons": [{"code": r.code, "message": r.message} for r in response.reasons],
        "starts": [_start(s) for s in response.starts],
    }

    def text() -> None:
        for r in response.reasons:
            print(f"{r.code:<18} {r.message}")
        if response.starts:
            print()
            _print_starts(response.starts)

    _emit(args, value, text)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    first, last = (args.date, args.date) if args.date else (args.from_date or "", args.to_date or "")
    if args.date and (args.from_date or args.to_date):
        raise CliError("give --date, or --from/--to, not both")
    state = getattr(joc_pb2, f"PLANNED_ORDER_STATE_{args.state.upper()}") if args.state else 0
    joc = connect(args)
    response = joc.call(
        joc.plan.ListPlannedOrders,
        joc_pb2.ListPlannedOrdersRequest(
            from_date=first,
            to_date=last,
            schedule_path=args.schedule or "",
            workflow_path=args.workflow or "",
            state=state,  # type: ignore[arg-type]
            late_only=args.late,
            limit=args.limit,
        ),
    )
    value = [
        {
            **_start(o),
            "schedulePath": o.schedule_path,
            "state": _state_word(o.state),
            "late": o.late,
            "missed": o.missed,
            "workflowVersionId": o.workflow_version_id,
            "submission": o.submission,
            "tzVersion": o.tz_version,
            **({"message": o.message} if o.message else {}),
        }
        for o in response.orders
    ]

    def text() -> None:
        rows = [("PLAN DATE", "SCHEDULED FOR (UTC)", "STATE", "SCHEDULE", "WORKFLOW", "VERSION", "ORDER ID")]
        for o in response.orders:
            flags = "".join(f" {f}" for f, on in (("late", o.late), ("missed", o.missed)) if on)
            rows.append(
                (
                    o.plan_date,
                    _utc(o.scheduled_for),
                    _state_word(o.state) + flags,
                    o.schedule_path,
                    o.workflow_path,
                    o.workflow_version_id or "-",
                    o.order_id + (f"  ({o.message})" if o.message else ""),
                )
            )
        print_table(rows)

    _emit(args, value, text)
    return 0


def _range_command(method: str, request_type: str, verb: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from gen.ostinato.joc.v1 import joc_pb2

        request = getattr(joc_pb2, request_type)(
            from_date=args.from_date,
            to_date=args.to_date or args.from_date,
            schedule_path=args.schedule or "",
        )
        if getattr(args, "kill", False):
            request.kill = True
        joc = connect(args)
        response = joc.call(getattr(joc.plan, method), request)
        value = [
            {"planDate": d.plan_date, "count": d.count, **({"error": d.error} if d.error else {})}
            for d in response.dates
        ]

        def text() -> None:
            if not response.dates:
                print(f"{verb} nothing")
            for d in response.dates:
                print(f"{d.plan_date}: {verb} {d.count} orders" + (f"; {d.error}" if d.error else ""))

        _emit(args, value, text)
        return 1 if any(d.error for d in response.dates) else 0

    return run


def cmd_projections(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    if not _MONTH.fullmatch(args.month):
        raise CliError(f"--month: expected YYYY-MM, got {args.month!r}")
    joc = connect(args)
    response = joc.call(
        joc.plan.PlanProjections, joc_pb2.PlanProjectionsRequest(month=args.month, months=args.months)
    )
    value = {
        "from": response.from_date,
        "to": response.to_date,
        "schedules": [
            {"schedulePath": s.schedule_path, "dates": {d.plan_date: d.count for d in s.dates}}
            for s in response.schedules
        ],
    }

    def text() -> None:
        first = date.fromisoformat(response.from_date)
        last = date.fromisoformat(response.to_date)
        print(f"plan dates in {response.settings.time_zone}; [n] = n starts planned")
        for s in response.schedules:
            counts = {date.fromisoformat(d.plan_date): d.count for d in s.dates}
            print(f"\n{s.schedule_path}: {sum(counts.values())} starts on {len(counts)} days")
            year, month = first.year, first.month
            while date(year, month, 1) <= last:
                print()
                print("\n".join(month_calendar(year, month, counts)))
                year, month = (year + 1, 1) if month == 12 else (year, month + 1)

    _emit(args, value, text)
    return 0


def month_calendar(year: int, month: int, counts: dict[date, int]) -> list[str]:
    """A month as lines of weeks, Monday first; a day with starts shows their count: "[3] 12"."""
    cell = 7
    lines = [f"{gregorian.month_name[month]} {year}".center(cell * 7).rstrip()]
    lines.append("".join(day.rjust(cell) for day in ("Mo", "Tu", "We", "Th", "Fr", "Sa", "Su")))
    for week in gregorian.Calendar(firstweekday=0).monthdayscalendar(year, month):
        cells = []
        for day in week:
            if not day:
                cells.append(" " * cell)
                continue
            n = counts.get(date(year, month, day), 0)
            cells.append((f"[{n}]{day:>3}" if n else f"{day:>3}").rjust(cell))
        lines.append("".join(cells).rstrip())
    return lines


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], joc_option: argparse.ArgumentParser
) -> None:
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--output", choices=("text", "json"), default="text", help="default %(default)s")
    parents = [joc_option, output]

    cal = commands.add_parser("calendar", help="calendars: the dates they yield")
    cal_commands = cal.add_subparsers(dest="calendar_command", required=True, metavar="COMMAND")
    p = cal_commands.add_parser("dates", parents=parents, help="the dates a calendar yields")
    p.add_argument("calendar_path", metavar="CAL_PATH")
    p.add_argument("--from", dest="from_date", required=True, metavar="DATE")
    p.add_argument("--to", dest="to_date", required=True, metavar="DATE")
    p.add_argument("--released", action="store_true", help="the released version (default: the draft)")
    p.set_defaults(func=cmd_calendar_dates)

    plan = commands.add_parser("plan", help="the daily plan: preview, explain, show, generate, submit, ...")
    plan_commands = plan.add_subparsers(dest="plan_command", required=True, metavar="COMMAND")
    p = plan_commands.add_parser(
        "preview", parents=parents, help="the starts a schedule would plan, without creating orders"
    )
    p.add_argument("schedule_path", metavar="SCHEDULE_PATH")
    p.add_argument("--from", dest="from_date", metavar="DATE", help="the first plan date")
    p.add_argument("--to", dest="to_date", metavar="DATE", help="the last plan date (default: --from)")
    p.add_argument("--next", type=int, metavar="N", help="the next N starts from now")
    p.add_argument("--released", action="store_true", help="the released versions (default: the drafts)")
    p.set_defaults(func=cmd_preview)

    p = plan_commands.add_parser(
        "explain", parents=parents, help="why a plan date has no starts (or these) for a schedule"
    )
    p.add_argument("schedule_path", metavar="SCHEDULE_PATH")
    p.add_argument("date", metavar="DATE")
    p.add_argument("--released", action="store_true", help="the released versions (default: the drafts)")
    p.set_defaults(func=cmd_explain)

    p = plan_commands.add_parser("show", parents=parents, help="planned orders and their states")
    p.add_argument("--date", metavar="DATE")
    p.add_argument("--from", dest="from_date", metavar="DATE")
    p.add_argument("--to", dest="to_date", metavar="DATE")
    p.add_argument("--schedule", metavar="PATH")
    p.add_argument("--workflow", metavar="PATH")
    p.add_argument("--state", choices=STATES)
    p.add_argument("--late", action="store_true", help="only orders not started 60 s after their time")
    p.add_argument("--limit", type=int, default=0, help="at most this many (default: 10000)")
    p.set_defaults(func=cmd_show)

    for name, method, request, verb, text in (
        ("generate", "GeneratePlan", "GeneratePlanRequest", "planned", "plan the dates (idempotent)"),
        ("submit", "SubmitPlan", "SubmitPlanRequest", "submitted", "plan and submit the dates now"),
        (
            "cancel",
            "CancelPlan",
            "CancelPlanRequest",
            "cancelled",
            "cancel the submitted orders and return them to planned",
        ),
        ("delete", "DeletePlan", "DeletePlanRequest", "deleted", "remove the planned (not submitted) orders"),
    ):
        p = plan_commands.add_parser(name, parents=parents, help=text)
        p.add_argument("--from", dest="from_date", required=True, metavar="DATE")
        p.add_argument("--to", dest="to_date", metavar="DATE", help="default: --from")
        p.add_argument("--schedule", metavar="PATH", help="only this schedule")
        if name == "cancel":
            p.add_argument("--kill", action="store_true", help="kill the job processes of running orders")
        p.set_defaults(func=_range_command(method, request, verb))

    p = plan_commands.add_parser(
        "projections", parents=parents, help="the days with planned starts per schedule, as month calendars"
    )
    p.add_argument("--month", required=True, metavar="YYYY-MM")
    p.add_argument("--months", type=int, default=1, metavar="N", help="this many months (default 1)")
    p.set_defaults(func=cmd_projections)
