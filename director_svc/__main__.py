"""`python -m director_svc`: run a director agent node."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from director_svc.server import DirectorConfig, serve
from ostinato import service
from ostinato.launch import free_port


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ostinato director", description="Run a director agent node.")
    p.add_argument("--listen", default="127.0.0.1:0", help="gRPC address (port 0: any free port)")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--agent-name", default="agent-1", help="the agent's name, as workflows' jobs name it")
    p.add_argument(
        "--subagent",
        action="append",
        default=[],
        type=lambda t: service.named_address(t, "--subagent"),
        metavar="ID=HOST:PORT",
        help="a subagent this director dials (repeatable, in priority order)",
    )
    p.add_argument(
        "--raft-address", help="HOST:PORT of this node's journal replication (default: a free port)"
    )
    p.add_argument(
        "--cluster-password", help="journal replication password (default: made and kept in data dir)"
    )
    args = p.parse_args(argv)
    config = DirectorConfig(
        agent=args.agent_name,
        data_dir=args.data_dir,
        listen=args.listen,
        raft_address=args.raft_address or f"127.0.0.1:{free_port()}",
        subagents=dict(args.subagent),
        cluster_password=args.cluster_password,
    )
    return service.run("director", lambda stop: serve(config, stop))


if __name__ == "__main__":
    sys.exit(main())
