"""The `ostinato` command: a JOC client (deploy, orders) and the launcher of each service.

Errors are one line `ostinato: error: ...` on stderr and exit 1; bad usage is argparse's exit 2.
grpc and the services are imported only by the commands that need them, so the CLI starts fast.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ostinato  # noqa: F401  (sets grpc's process environment before grpc is imported)
from gen.ostinato.common.v1 import events_pb2, items_pb2, order_pb2, workflow_pb2

DEFAULT_JOC = "127.0.0.1:4446"

# File name suffix -> inventory object type.
SUFFIXES: dict[str, int] = {
    ".workflow.json": items_pb2.ITEM_TYPE_WORKFLOW,
    ".jobresource.json": items_pb2.ITEM_TYPE_JOB_RESOURCE,
    ".lock.json": items_pb2.ITEM_TYPE_LOCK,
    ".subagentcluster.json": items_pb2.ITEM_TYPE_SUBAGENT_CLUSTER,
    ".calendar.json": items_pb2.ITEM_TYPE_CALENDAR,
    ".schedule.json": items_pb2.ITEM_TYPE_SCHEDULE,
}

SERVICES = {
    "joc": "joc_svc.__main__",
    "controller": "controller_svc.__main__",
    "director": "director_svc.__main__",
    "subagent": "subagent_svc.__main__",
}

# Until accounts exist, JOC's audit log records who asked by this header (see joc_svc.servicers).
ACCOUNT_METADATA = "x-ostinato-account"

# A --wait outlives a JOC restart: it reconnects this long, then gives up.
WATCH_RECONNECT_SECONDS = 30.0


class CliError(Exception):
    """Ends the command with `ostinato: error: MESSAGE` and exit 1."""


# ---- inventory files (pure)


@dataclass(frozen=True, slots=True)
class LocalObject:
    path: str  # inventory path, e.g. /a/b
    type: int  # items_pb2.ItemType
    file: Path


def object_type(filename: str) -> tuple[str, int] | None:
    """'b.workflow.json' -> ('b', WORKFLOW); None for a name without a known suffix."""
    for suffix, item_type in SUFFIXES.items():
        if filename.endswith(suffix) and len(filename) > len(suffix):
            return filename[: -len(suffix)], item_type
    return None


def inventory_path(file: Path, folder: Path | None = None) -> tuple[str, int] | None:
    """The inventory path and type of a file: relative to `folder` when the file was found in it
    (folder/a/b.workflow.json -> /a/b), else just its name (/b)."""
    found = object_type(file.name)
    if found is None:
        return None
    name, item_type = found
    parents = file.parent.relative_to(folder).parts if folder is not None else ()
    return "/" + "/".join([*parents, name]), item_type


def collect_objects(arguments: list[Path]) -> list[LocalObject]:
    """The inventory objects named by files and folders (searched recursively, hidden ones and
    files of other names skipped). A file given explicitly must have a known suffix."""
    found: dict[tuple[str, int], LocalObject] = {}

    def add(file: Path, folder: Path | None) -> None:
        derived = inventory_path(file, folder)
        if derived is None:
            return
        key = derived
        if key in found and found[key].file.resolve() != file.resolve():
            raise CliError(f"{found[key].file} and {file} are both {derived[0]}")
        found[key] = LocalObject(derived[0], derived[1], file)

    for argument in arguments:
        if argument.is_dir():
            for file in sorted(argument.rglob("*")):
                relative = file.relative_to(argument).parts
                if file.is_file() and not any(part.startswith(".") for part in relative):
                    add(file, argument)
        elif argument.is_file():
            if object_type(argument.name) is None:
                raise CliError(f"{argument}: unknown object type; name it NAME{' or NAME'.join(SUFFIXES)}")
            add(argument, None)
        else:
            raise CliError(f"{argument}: no such file or folder")
    if not found:
        raise CliError(
            f"no inventory objects (NAME{', NAME'.join(SUFFIXES)}) in {' '.join(map(str, arguments))}"
        )
    return [found[k] for k in sorted(found)]


# ---- describing orders (pure)

_STATE_PREFIX = "ORDER_STATE_"


def state_word(state: int) -> str:
    name = order_pb2.OrderState.Name(order_pb2.OrderState.ValueType(state))
    return name.removeprefix(_STATE_PREFIX).lower()


def position_text(position: order_pb2.Position) -> str:
    from ostinato.workflow import positions

    return positions.text(position)


def outcome_text(outcome: workflow_pb2.Outcome) -> str:
    word = workflow_pb2.OutcomeKind.Name(outcome.kind).removeprefix("OUTCOME_KIND_").lower()
    if outcome.kind in (workflow_pb2.OUTCOME_KIND_SUCCEEDED, workflow_pb2.OUTCOME_KIND_FAILED):
        word += f" (return code {outcome.return_code})"
    elif outcome.signal:
        word += f" (signal {outcome.signal})"
    return f"{word}: {outcome.message}" if outcome.message else word


def describe(event: events_pb2.Event, order: order_pb2.Order) -> str | None:
    """One line about an order event for `order add --wait`, or None for bookkeeping events."""
    kind = event.WhichOneof("kind")
    text: str | None
    if kind == "order_added":
        added = event.order_added.order
        text = f"added to {added.workflow_path} version {added.workflow_version_id}"
        if added.HasField("scheduled_for"):
            text += f", scheduled for {_time_text(added.scheduled_for)}"
    elif kind == "order_started":
        text = "started"
    elif kind == "order_attached":
        text = f"attached to agent {event.order_attached.agent}"
    elif kind == "order_processing_started":
        text = f"processing on {event.order_processing_started.processing.subagent_id or 'a subagent'}"
        if order.attempt > 1:
            text += f" (attempt {order.attempt})"
    elif kind == "order_processed":
        text = f"processed: {outcome_text(event.order_processed.outcome)}"
    elif kind == "order_moved":
        text = f"moved to {position_text(event.order_moved.to)}"
    elif kind == "order_failed":
        outcome = event.order_failed.outcome
        if outcome.kind == workflow_pb2.OUTCOME_KIND_FAILED:
            text = outcome_text(outcome)  # "failed (return code 1)"
        else:
            text = f"failed: {outcome_text(outcome)}" if outcome.kind or outcome.message else "failed"
    elif kind == "order_finished":
        outcome = event.order_finished.outcome
        failed = outcome.kind not in (
            workflow_pb2.OUTCOME_KIND_UNSPECIFIED,
            workflow_pb2.OUTCOME_KIND_SUCCEEDED,
        )
        text = f"finished: {outcome_text(outcome)}" if failed else "finished"
    elif kind == "order_deleted":
        text = "deleted"
    else:
        text = None
    return f"{event.order_id} {text}" if text else None


def _time_text(ts: Any) -> str:
    return str(ts.ToDatetime(tzinfo=UTC).astimezone().isoformat(timespec="seconds"))


# ---- talking to JOC


class JocClient:
    """Blocking stubs on one channel; every gRPC error becomes a CliError with its message."""

    def __init__(self, address: str) -> None:
        import grpc

        from gen.ostinato.joc.v1 import joc_pb2_grpc
        from ostinato.rpc import CHANNEL_OPTIONS

        self.address = address
        _check_reachable(address)
        self._grpc = grpc
        self.channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.inventory = joc_pb2_grpc.InventoryServiceStub(self.channel)
        self.deployment = joc_pb2_grpc.DeploymentServiceStub(self.channel)
        self.orders = joc_pb2_grpc.OrderServiceStub(self.channel)
        self.metadata = ((ACCOUNT_METADATA, _user()),)

    def call(self, method: Callable[..., Any], request: Any, what: str = "") -> Any:
        try:
            return method(request, metadata=self.metadata, timeout=60)
        except self._grpc.RpcError as e:
            raise self.error(e, what) from None

    def stream(self, method: Callable[..., Any], request: Any) -> Iterator[Any]:
        try:
            yield from method(request, metadata=self.metadata)
        except self._grpc.RpcError as e:
            raise self.error(e) from None

    def error(self, e: Any, what: str = "") -> CliError:
        # grpc's own text for a connection JOC refused; JOC's messages (e.g. about an unreachable
        # controller, which may quote this text) never start with it.
        if e.code() == self._grpc.StatusCode.UNAVAILABLE and (e.details() or "").startswith(
            "failed to connect"
        ):
            return CliError(f"cannot reach JOC at {self.address}")
        message = e.details() or e.code().name
        return CliError(f"{what}: {message}" if what else message)


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise CliError(f"--joc: expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def _check_reachable(address: str) -> None:
    """A plain TCP connect first: "nothing listens there" is then told apart from an UNAVAILABLE
    that JOC itself reports (e.g. its controller is down)."""
    host, port = _split_address(address)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError:
        raise CliError(f"cannot reach JOC at {address}") from None


def _user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:
        return "unknown"


# ---- commands


def cmd_deploy(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    objects = collect_objects(args.paths)
    joc = JocClient(args.joc)
    for obj in objects:
        try:
            text = obj.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"{obj.file}: {e}") from None
        joc.call(
            joc.inventory.PutObject,
            joc_pb2.PutObjectRequest(path=obj.path, type=obj.type, json=text),  # type: ignore[arg-type]
            str(obj.file),
        )
    response = joc.call(
        joc.deployment.Deploy,
        joc_pb2.DeployRequest(paths=[o.path for o in objects], controller_ids=args.controller or []),
    )
    failed = 0
    for d in response.deployments:
        if d.status == joc_pb2.DEPLOYMENT_STATUS_DEPLOYED:
            print(f"deployed {d.path} version {d.version_id} to {d.controller_id}")
        else:
            failed += 1
            print(f"NOT deployed {d.path} version {d.version_id} to {d.controller_id}: {d.message}")
    return 1 if failed else 0


def cmd_order_add(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    request = joc_pb2.AddOrderRequest(
        workflow_path=args.workflow_path, arguments=dict(args.arg or []), order_id=args.id or ""
    )
    if args.controller:
        request.controller_id = args.controller
    if args.at is not None:
        request.scheduled_for.FromDatetime(args.at)
    joc = JocClient(args.joc)
    response = joc.call(joc.orders.AddOrder, request)
    print(response.order_id, flush=True)
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
            # JOC restarting: the order runs on regardless; follow it again when JOC is back.
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

    joc = JocClient(args.joc)
    response = joc.call(
        joc.orders.ListOrders,
        joc_pb2.ListOrdersRequest(state=args.state, workflow_path=args.workflow or "", limit=args.limit),
    )
    rows = [("ORDER", "STATE", "WORKFLOW", "POSITION", "UPDATED")]
    for s in response.orders:
        o = s.order
        rows.append(
            (o.id, state_word(o.state), o.workflow_path, position_text(o.position), _time_text(s.updated_at))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]))
    return 0


def cmd_order_show(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2
    from ostinato.workflow.values import value_text

    joc = JocClient(args.joc)
    response = joc.call(joc.orders.GetOrder, joc_pb2.GetOrderRequest(order_id=args.order_id))
    s = response.summary
    o = s.order
    lines = [
        ("order", o.id),
        ("state", state_word(o.state)),
        ("workflow", f"{o.workflow_path} version {o.workflow_version_id}"),
        ("position", position_text(o.position)),
        ("controller", s.controller_id),
    ]
    if o.agent:
        lines.append(("agent", o.agent))
    if o.HasField("processing"):
        lines.append(("processing", f"on {o.processing.subagent_id}"))
    if o.HasField("scheduled_for"):
        lines.append(("scheduled", _time_text(o.scheduled_for)))
    lines += [("added", _time_text(s.added_at)), ("updated", _time_text(s.updated_at))]
    for k in sorted(o.arguments):
        lines.append(("argument", f"{k}={value_text(o.arguments[k])}"))
    for k in sorted(o.variables):
        lines.append(("variable", f"{k}={value_text(o.variables[k])}"))
    for h in o.historic_outcomes:
        lines.append(("outcome", f"at {position_text(h.position)}: {outcome_text(h.outcome)}"))
    lines.append(("events", str(len(response.events))))
    for key, value in lines:
        print(f"{key:<11}{value}")
    return 0


def cmd_order_logs(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = JocClient(args.joc)
    for chunk in joc.stream(
        joc.orders.GetOrderLog, joc_pb2.GetOrderLogRequest(order_id=args.order_id, follow=args.follow)
    ):
        out = sys.stderr if chunk.stream == events_pb2.STD_STREAM_STDERR else sys.stdout
        out.write(chunk.chunk)
        out.flush()
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from ostinato import topology

    return int(topology.run_up(args.config, args.data_dir))


def cmd_demo(args: argparse.Namespace) -> int:
    from ostinato import topology

    return int(topology.run_demo())


def run_service(name: str, argv: list[str]) -> int:
    import importlib

    module = importlib.import_module(SERVICES[name])
    return int(module.main(argv))


# ---- argument parsing


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
    if _STATE_PREFIX + word not in order_pb2.OrderState.keys() or word == "UNSPECIFIED":
        states = ", ".join(n.removeprefix(_STATE_PREFIX).lower() for n in order_pb2.OrderState.keys()[1:])
        raise argparse.ArgumentTypeError(f"unknown state {text!r} (one of {states})")
    return int(order_pb2.OrderState.Value(_STATE_PREFIX + word))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ostinato", description="ostinato workload automation")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    joc_option = argparse.ArgumentParser(add_help=False)
    joc_option.add_argument(
        "--joc",
        default=os.environ.get("OSTINATO_JOC") or DEFAULT_JOC,
        metavar="HOST:PORT",
        help="JOC's address (default: $OSTINATO_JOC, else %(default)s)",
    )

    p = commands.add_parser(
        "deploy", parents=[joc_option], help="put inventory files into JOC and deploy them"
    )
    p.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="NAME.workflow.json etc., or folders of them"
    )
    p.add_argument(
        "--controller", action="append", metavar="ID", help="deploy to this controller only (repeatable)"
    )
    p.set_defaults(func=cmd_deploy)

    order = commands.add_parser("order", help="add, list, show orders and their logs")
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

    for name in SERVICES:
        # Dispatched before parsing (see main); listed here for --help.
        commands.add_parser(name, help=f"run the {name} service in the foreground (its own --help)")

    p = commands.add_parser("up", help="start the local topology from a config")
    p.add_argument("--config", type=Path, metavar="FILE")
    p.add_argument("--data-dir", type=Path, metavar="DIR")
    p.set_defaults(func=cmd_up)

    p = commands.add_parser("demo", help="start a local topology, run an example workflow, show it")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in SERVICES:
            # Before argparse: a service's own options must reach it untouched.
            return run_service(argv[0], argv[1:])
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except CliError as e:
        print(f"ostinato: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
