"""`python -m controller_svc`: run a controller node."""

from __future__ import annotations

import argparse
import sys

from controller_svc.server import ControllerConfig, serve
from ostinato import service, signing
from ostinato.errors import InvalidArgument
from ostinato.journal.node import add_node_arguments, node_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ostinato controller", description="Run a controller node.")
    add_node_arguments(p)
    p.add_argument("--id", default="controller", help="controller id (JOC names controllers by it)")
    p.add_argument(
        "--agent",
        action="append",
        default=[],
        type=lambda t: service.named_address(t, "--agent"),
        metavar="NAME=HOST:PORT",
        help="a director agent this controller dials (repeatable)",
    )
    p.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="FILE",
        help="PEM certificates (signers' or CAs') whose signatures deployed items may carry (repeatable);"
        " without any, every signed item is rejected",
    )
    args = p.parse_args(argv)
    try:
        trust = signing.Verifier.from_files(args.trust)
    except InvalidArgument as e:
        p.error(f"--trust: {e}")
    config = ControllerConfig(
        node=node_config(args), controller_id=args.id, agents=dict(args.agent), trust=trust
    )
    return service.run("controller", lambda stop: serve(config, stop))


if __name__ == "__main__":
    sys.exit(main())
