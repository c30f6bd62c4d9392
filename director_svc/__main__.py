"""`python -m director_svc`: run a director agent node."""

from __future__ import annotations

import argparse
import sys

from director_svc.server import DirectorConfig, serve
from ostinato import service
from ostinato.journal.node import add_node_arguments, node_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ostinato director", description="Run a director agent node.")
    add_node_arguments(p)
    p.add_argument("--agent-name", default="agent-1", help="the agent's name, as workflows' jobs name it")
    p.add_argument(
        "--subagent",
        action="append",
        default=[],
        type=lambda t: service.named_address(t, "--subagent"),
        metavar="ID=HOST:PORT",
        help="a subagent this director dials (repeatable, in priority order)",
    )
    args = p.parse_args(argv)
    config = DirectorConfig(node=node_config(args, p), agent=args.agent_name, subagents=dict(args.subagent))
    return service.run("director", lambda stop: serve(config, stop))


if __name__ == "__main__":
    sys.exit(main())
