"""`python -m controller_svc`: run a controller node."""

from __future__ import annotations

import argparse
import sys

from controller_svc.server import ControllerConfig, serve
from ostinato import rpc, service, tls
from ostinato.cluster.config import add_node_arguments, node_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ostinato controller", description="Run a controller node.")
    add_node_arguments(p, peers="its JOC instances")
    p.add_argument("--id", default="controller", help="controller id (JOC names controllers by it)")
    p.add_argument(
        "--agent",
        action="append",
        default=[],
        type=lambda t: service.named_address(t, "--agent"),
        metavar="NAME=HOST:PORT[,HOST:PORT...]",
        help="a director agent this controller dials (repeatable); several addresses: the nodes of its"
        " director cluster",
    )
    service.add_arguments(p)
    args = p.parse_args(argv)
    config = ControllerConfig(
        node=node_config(args, p),
        controller_id=args.id,
        agents={name: rpc.parse_cluster_addresses(a) for name, a in args.agent},
    )
    security = tls.from_args(args, p, peers_required=True)
    return service.run("controller", lambda stop: serve(config, stop), security, service.options(args, p))


if __name__ == "__main__":
    sys.exit(main())
