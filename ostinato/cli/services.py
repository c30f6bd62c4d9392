"""Running ostinato itself: each service in the foreground, a witness node, `up` and `demo`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ostinato.cli import security

SERVICES = {
    "joc": "joc_svc.__main__",
    "controller": "controller_svc.__main__",
    "director": "director_svc.__main__",
    "subagent": "subagent_svc.__main__",
}


def cmd_up(args: argparse.Namespace) -> int:
    from ostinato import topology

    return int(topology.run_up(args.config, args.data_dir, args.insecure, args.exit_on_failure))


def cmd_demo(args: argparse.Namespace) -> int:
    from ostinato import topology

    return int(topology.run_demo())


def run_service(name: str, argv: list[str]) -> int:
    import importlib

    module = importlib.import_module(SERVICES[name])
    return int(module.main(argv))


def run_witness(argv: list[str]) -> int:
    """`ostinato witness controller|director --cluster FILE --node NAME ...`: the node of that
    cluster flagged `witness` in FILE. It votes and keeps the journal, and never becomes active;
    the other options are the service's own (see `ostinato controller --help`)."""
    from ostinato.cluster.members import Cluster
    from ostinato.errors import InvalidArgument

    p = argparse.ArgumentParser(prog="ostinato witness", description=run_witness.__doc__)
    p.add_argument("kind", choices=["controller", "director"], help="the kind of cluster it votes in")
    p.add_argument("--cluster", type=Path, required=True, metavar="FILE")
    p.add_argument("--node", required=True, metavar="NAME")
    known, _ = p.parse_known_args(argv)
    try:
        member = Cluster.load(known.cluster).member(known.node)
    except InvalidArgument as e:
        p.error(f"--{e}")  # "--cluster: cannot read ..." or "--node: no node ..."
    if not member.witness:
        p.error(
            f"--node: node {known.node} is a full node in {known.cluster}; flag it"
            ' "witness": true there, or run it as ostinato ' + known.kind
        )
    return run_service(known.kind, argv[1:])


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name in SERVICES:
        if name == "joc":
            continue  # listed with `ostinato joc status|switchover` (cluster.py)
        # Dispatched before parsing (see main); listed here for --help.
        commands.add_parser(name, help=f"run the {name} service in the foreground (its own --help)")
    commands.add_parser(
        "witness", help="run the witness node of a controller or director cluster (its own --help)"
    )

    p = commands.add_parser("up", help="start the local topology from a config")
    p.add_argument("--config", type=Path, metavar="FILE")
    p.add_argument("--data-dir", type=Path, metavar="DIR")
    p.add_argument(
        "--insecure", action="store_true", help="plain text between all services (default: mutual TLS)"
    )
    p.add_argument(
        "--exit-on-failure",
        action="store_true",
        help="stop everything when a service exits (default: report it and restart it, with backoff)",
    )
    p.set_defaults(func=cmd_up)
    security.add_pki_commands(commands)

    p = commands.add_parser("demo", help="start a local topology, run an example workflow, show it")
    p.set_defaults(func=cmd_demo)
