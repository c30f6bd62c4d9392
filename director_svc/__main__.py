"""`python -m director_svc`: run a director agent node."""

from __future__ import annotations

import argparse
import sys

from director_svc.server import DirectorConfig, serve
from ostinato import service, tls
from ostinato.cluster.config import add_node_arguments, node_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ostinato director", description="Run a director agent node.")
    add_node_arguments(p, peers="its controller nodes")
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
        "--subagent-heartbeat",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="heartbeat interval of the subagent sessions (both ways); a subagent silent for four"
        " intervals is unavailable, and its waiting jobs go to other subagents",
    )
    p.add_argument(
        "--builtin-subagent",
        metavar="ID",
        help="run a subagent with this id inside the director process, first in priority (default:"
        " none; the director only orchestrates). Single-node directors only: a built-in subagent"
        " dies with its node, while its jobs would outlive it beside a new active node",
    )
    service.add_arguments(p)
    args = p.parse_args(argv)
    if args.subagent_heartbeat <= 0:
        p.error("--subagent-heartbeat: must be more than 0")
    config = DirectorConfig(
        node=node_config(args, p),
        agent=args.agent_name,
        subagents=dict(args.subagent),
        subagent_heartbeat_s=args.subagent_heartbeat,
        builtin_subagent=args.builtin_subagent,
    )
    if config.builtin_subagent and len(config.node.cluster.members) > 1:
        p.error(
            "--builtin-subagent: only for a single-node director; give a director cluster separate subagents"
        )
    if config.builtin_subagent in config.subagents:
        p.error(f"--builtin-subagent: {config.builtin_subagent} is a --subagent already")
    security = tls.from_args(args, p, peers_required=True)
    return service.run("director", lambda stop: serve(config, stop), security, service.options(args, p))


if __name__ == "__main__":
    sys.exit(main())
