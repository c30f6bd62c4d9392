"""The `ostinato` command: a JOC client (inventory, deployment, signing, orders, daily plan,
clusters, audit, accounts) and the launcher of each service. One module per command group; each
adds its commands to the parser (`add_commands`).

Errors are one line `ostinato: error: ...` on stderr and exit 1; bad usage is argparse's exit 2.
grpc and the services are imported only by the commands that need them, so the CLI starts fast.
"""

from __future__ import annotations

import argparse
import sys

from ostinato.cli import accounts, audit, cluster, deploy, inventory, orders, plan, services
from ostinato.cli.client import CliError, joc_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ostinato", description="ostinato workload automation")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    joc_option = joc_options()
    for group in (deploy, inventory, audit, accounts, orders, cluster, plan):
        group.add_commands(commands, joc_option)
    services.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in services.SERVICES:
            # Before argparse: a service's own options must reach it untouched.
            return services.run_service(argv[0], argv[1:])
        if argv and argv[0] == "witness":
            return services.run_witness(argv[1:])
        if len(argv) > 1 and argv[0] == "deploy" and argv[1] in deploy.DEPLOY_COMMANDS:
            argv = [f"deploy-{argv[1]}", *argv[2:]]
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except CliError as e:
        print(f"ostinato: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
