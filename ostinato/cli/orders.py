"""`ostinato order ...`: adding orders, following them, listing, showing and commanding them."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import Any

from gen.ostinato.common.v1 import events_pb2, order_pb2
from ostinato.cli.client import CliError, JocClient, connect, one_line
from ostinato.cli.render import STATE_PREFIX, describe, state_word, summary_state
from ostinato.ids import new_order_id
from ostinato.workflow.events import outcome_text, time_text
from ostinato.workflow.positions import text as position_text

# A --wait outlives a JOC restart: it reconnects this long, then gives up.
WATCH_RECONNECT_SECONDS = 30.0


def cmd_order_command(args: argparse.Namespace) -> int:
    from gen.ostinato.common.v1 import commands_pb2
    from gen.ostinato.joc.v1 import joc_pb2

    commands = []
    for order_id in args.order_ids:
        command = commands_pb2.OrderCommand(order_id=order_id)
        if args.order_command == "cancel":
            command.cancel.kill = args.kill
        elif args.order_command == "suspend":
            command.suspend.kill = args.kill
        elif args.order_command == "resume":
            command.resume.SetInParent()
            if args.position is not None:
                command.resume.position.CopyFrom(args.position)
            for key, value in args.arg or []:
                command.resume.variables[key].CopyFrom(value)
        else:
            command.answer_prompt.SetInParent()
        commands.append(command)
    joc = connect(args)
    response = joc.call(joc.orders.CommandOrders, joc_pb2.CommandOrdersRequest(commands=commands))
    failed = 0
    for result in response.results:
        if result.error:
            failed += 1
            error = one_line(f"{result.order_id}: {args.order_command} refused: {result.error}")
            print(f"ostinato: error: {error}", file=sys.stderr)
        else:
            print(f"{result.order_id}: {args.order_command} accepted")
    return 1 if failed else 0


def cmd_order_add(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    # The id chosen here, not by JOC: the request may be repeated after a lost answer (JOC failing
    # over), and the repetition then finds the order rather than adding another.
    request = joc_pb2.AddOrderRequest(
        workflow_path=args.workflow_path,
        arguments=dict(args.arg or []),
        order_id=args.id or new_order_id(datetime.now(UTC)),
    )
    if args.controller:
        request.controller_id = args.controller
    if args.at is not None:
        request.scheduled_for.FromDatetime(args.at)
    joc = connect(args)
    response = joc.call(joc.orders.AddOrder, request)
    print(response.order_id, flush=True)
    if response.existed and args.id:  # else it was this command's own request, repeated
        print(
            f"order {response.order_id} was known already (it exists, or ended within the last hour):"
            " nothing added",
            file=sys.stderr,
        )
    if not args.wait:
        return 0
    return wait_for_order(joc, response.order_id)


def wait_for_order(joc: JocClient, order_id: str) -> int:
    """Prints the order's steps and job output until it ends; exit 0 only when it finished."""
    from gen.ostinato.joc.v1 import joc_pb2

    last_id = 0
    order: order_pb2.Order | None = None
    last_line = ""
    given_up_at: float | None = None
    while True:
        try:
            for response in joc.orders.WatchOrder(
                joc_pb2.WatchOrderRequest(order_id=order_id), metadata=joc.metadata
            ):
                given_up_at = None
                event = response.event
                if event.id and event.id <= last_id:
                    continue  # seen before a reconnect
                last_id = max(last_id, event.id)
                order = response.order
                if event.WhichOneof("kind") == "order_std_written":
                    written = event.order_std_written
                    out = sys.stderr if written.stream == events_pb2.STD_STREAM_STDERR else sys.stdout
                    out.write(written.chunk)
                    out.flush()
                    continue
                line = describe(event, order)
                if line:
                    print(line, flush=True)
                    last_line = line
            break
        except joc._grpc.RpcError as e:
            if e.code() != joc._grpc.StatusCode.UNAVAILABLE:
                raise joc.error(e) from None
            # JOC restarting, or its cluster failing over: the order runs on regardless; follow
            # it again at the active instance.
            joc.follow(e)
            now = time.monotonic()
            given_up_at = given_up_at or now + WATCH_RECONNECT_SECONDS
            if now > given_up_at:
                raise CliError(f"lost JOC at {joc.address} while waiting for order {order_id}") from None
            time.sleep(1.0)
    word = state_word(order.state) if order is not None else "unknown"
    if word not in last_line.split():
        print(f"{order_id} {word}", flush=True)
    return 0 if order is not None and order.state == order_pb2.ORDER_STATE_FINISHED else 1


def cmd_order_list(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    response = joc.call(
        joc.orders.ListOrders,
        joc_pb2.ListOrdersRequest(state=args.state, workflow_path=args.workflow or "", limit=args.limit),
    )
    rows = [("ORDER", "STATE", "WORKFLOW", "POSITION", "UPDATED")]
    for s in response.orders:
        o = s.order
        rows.append(
            (o.id, summary_state(s), o.workflow_path, position_text(o.position), time_text(s.updated_at))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]))
    return 0


def cmd_order_show(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2
    from ostinato.workflow.values import value_text

    joc = connect(args)
    response = joc.call(joc.orders.GetOrder, joc_pb2.GetOrderRequest(order_id=args.order_id))
    s = response.summary
    o = s.order
    state = state_word(o.state)
    if s.left_unseen:
        state = (
            f"unknown: it left controller {s.controller_id} while JOC was away"
            f" (JOC saw it {state_word(s.last_seen_state)} last)"
        )
    lines = [
        ("order", o.id),
        ("state", state),
        ("workflow", f"{o.workflow_path} version {o.workflow_version_id}"),
        ("position", position_text(o.position)),
        ("controller", s.controller_id),
    ]
    if o.agent:
        lines.append(("agent", o.agent))
    if o.HasField("processing"):
        lines.append(("processing", f"on {o.processing.subagent_id}"))
    if o.HasField("scheduled_for"):
        lines.append(("scheduled", time_text(o.scheduled_for)))
    lines += [("added", time_text(s.added_at)), ("updated", time_text(s.updated_at))]
    for k in sorted(o.arguments):
        lines.append(("argument", f"{k}={value_text(o.arguments[k])}"))
    for k in sorted(o.variables):
        lines.append(("variable", f"{k}={value_text(o.variables[k])}"))
    for h in o.historic_outcomes:
        lines.append(("outcome", f"at {position_text(h.position)}: {outcome_text(h.outcome)}"))
    events = str(len(response.events) + response.events_omitted)
    if s.resynced_at_event_id:
        events += (
            f" (incomplete: JOC missed some and took the order from the controller's snapshot"
            f" at event {s.resynced_at_event_id})"
        )
    lines.append(("events", events))
    for key, value in lines:
        print(f"{key:<11}{value}")
    return 0


def cmd_order_logs(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    for chunk in joc.stream(
        joc.orders.GetOrderLog, joc_pb2.GetOrderLogRequest(order_id=args.order_id, follow=args.follow)
    ):
        out = sys.stderr if chunk.stream == events_pb2.STD_STREAM_STDERR else sys.stdout
        out.write(chunk.chunk)
        out.flush()
    return 0


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    from ostinato.workflow.values import parse_cli_value

    return key, parse_cli_value(value)


def _iso_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO time like 2025-01-31T18:00, got {text!r}"
        ) from None
    # A time without zone means the operator's local time.
    return value.astimezone() if value.tzinfo is None else value


def _order_state(text: str) -> int:
    word = text.strip().upper()
    if STATE_PREFIX + word not in order_pb2.OrderState.keys() or word == "UNSPECIFIED":
        states = ", ".join(n.removeprefix(STATE_PREFIX).lower() for n in order_pb2.OrderState.keys()[1:])
        raise argparse.ArgumentTypeError(f"unknown state {text!r} (one of {states})")
    return int(order_pb2.OrderState.Value(STATE_PREFIX + word))


def _position(text: str) -> order_pb2.Position:
    from ostinato.workflow import positions

    try:
        return positions.parse_text(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a position like 2 or 1/try+0:3, got {text!r}") from None


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], joc_option: argparse.ArgumentParser
) -> None:
    order = commands.add_parser("order", help="add, list, show, command orders and their logs")
    order_commands = order.add_subparsers(dest="order_command", required=True, metavar="COMMAND")

    p = order_commands.add_parser("add", parents=[joc_option], help="add an order to a workflow")
    p.add_argument("workflow_path", metavar="WORKFLOW_PATH")
    p.add_argument("--arg", action="append", type=_key_value, metavar="NAME=VALUE", help="an order argument")
    p.add_argument(
        "--at", type=_iso_time, metavar="ISO_TIME", help="start then (local time unless a zone is given)"
    )
    p.add_argument("--id", metavar="ORDER_ID", help="the order id (default: JOC makes one)")
    p.add_argument("--controller", metavar="ID", help="the controller (default: JOC's first)")
    p.add_argument("--wait", action="store_true", help="follow the order and its output until it ends")
    p.set_defaults(func=cmd_order_add)

    p = order_commands.add_parser("list", parents=[joc_option], help="list orders, newest first")
    p.add_argument("--state", type=_order_state, default=0, metavar="STATE", help="e.g. processing, finished")
    p.add_argument("--workflow", metavar="PATH")
    p.add_argument("--limit", type=int, default=100, help="at most this many (0: all; default %(default)s)")
    p.set_defaults(func=cmd_order_list)

    p = order_commands.add_parser("show", parents=[joc_option], help="an order's state, position, outcomes")
    p.add_argument("order_id", metavar="ORDER_ID")
    p.set_defaults(func=cmd_order_show)

    p = order_commands.add_parser("logs", parents=[joc_option], help="an order's job output")
    p.add_argument("order_id", metavar="ORDER_ID")
    p.add_argument("-f", "--follow", action="store_true", help="keep following until the order ends")
    p.set_defaults(func=cmd_order_logs)

    for name, text in (
        ("cancel", "cancel orders (a running job first ends, or is killed with --kill)"),
        ("suspend", "suspend orders where they are (--kill: kill their running job)"),
        ("resume", "resume suspended or failed orders"),
        ("answer", "answer the prompt orders wait at"),
    ):
        p = order_commands.add_parser(name, parents=[joc_option], help=text)
        p.add_argument("order_ids", nargs="+", metavar="ORDER_ID")
        if name in ("cancel", "suspend"):
            p.add_argument("--kill", action="store_true", help="kill the running job process")
        if name == "resume":
            p.add_argument("--position", type=_position, metavar="POSITION", help="resume there, e.g. 2")
            p.add_argument(
                "--arg", action="append", type=_key_value, metavar="NAME=VALUE", help="set an order variable"
            )
        p.set_defaults(func=cmd_order_command)
