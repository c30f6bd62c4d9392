"""`python -m controller_svc`: run a controller node."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from controller_svc.server import ControllerConfig, serve
from ostinato import service
from ostinato.launch import free_port


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ostinato controller", description="Run a controller node.")
    p.add_argument("--listen", default="127.0.0.1:0", help="gRPC address (port 0: any free port)")
    p.add_argument("--data-dir", type=Path, required=True)
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
        "--raft-address", help="HOST:PORT of this node's journal replication (default: a free port)"
    )
    p.add_argument(
        "--cluster-password", help="journal replication password (default: made and kept in data dir)"
    )
    args = p.parse_args(argv)
    config = ControllerConfig(
        controller_id=args.id,
        data_dir=args.data_dir,
        listen=args.listen,
        raft_address=args.raft_address or f"127.0.0.1:{free_port()}",
        agents=dict(args.agent),
        cluster_password=args.cluster_password,
    )
    return service.run("controller", lambda stop: serve(config, stop))


if __name__ == "__main__":
    sys.exit(main())
