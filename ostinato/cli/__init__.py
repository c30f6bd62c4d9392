"""The `ostinato` command: a JOC client (inventory, deployment, signing, orders, daily plan,
clusters, audit, accounts) and the launcher of each service. One module per command group; each
adds its commands to the parser (`add_commands`).

Errors are one line `ostinato: error: ...` on stderr and exit 1; bad usage is argparse's exit 2; a
reader that stops early (`| head`) ends the command quietly with 141, as SIGPIPE would. The options
of every JOC command (`--joc`, `--token`, `--reason`) may come before the command too.
grpc and the services are imported only by the commands that need them, so the CLI starts fast.
"""

from __future__ import annotations

import argparse
import os
import sys

from ostinato.cli import accounts, audit, cluster, deploy, inventory, orders, plan, security, services
from ostinato.cli.client import CliError, joc_options, one_line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ostinato", description="ostinato workload automation")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    joc_option = joc_options()
    for group in (deploy, inventory, audit, accounts, orders, cluster, plan):
        group.add_commands(commands, joc_option)
    services.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = _global_options_last(list(sys.argv[1:] if argv is None else argv), joc_options())
    try:
        if argv and argv[0] in services.SERVICES and argv[1:2] != ["status"] and argv[1:2] != ["switchover"]:
            # Before argparse: a service's own options must reach it untouched.
            return services.run_service(argv[0], argv[1:])
        if argv and argv[0] == "witness":
            return services.run_witness(argv[1:])
        if len(argv) > 1 and argv[0] == "deploy" and argv[1] in deploy.DEPLOY_COMMANDS:
            argv = [f"deploy-{argv[1]}", *argv[2:]]
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except (CliError, security.SecurityError) as e:
        print(f"ostinato: error: {one_line(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`ostinato order logs ID | head`): end quietly, as a writer killed
        # by SIGPIPE would (128 + 13). Python would flush stdout at exit and fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _global_options_last(argv: list[str], options: argparse.ArgumentParser) -> list[str]:
    """`ostinato --joc HOST:PORT order list` as `ostinato order list --joc HOST:PORT`: the options
    every JOC command takes may come before the command as well as after it."""
    takes_value = {name: action.nargs != 0 for action in options._actions for name in action.option_strings}
    moved: list[str] = []
    while argv and (name := argv[0].split("=", 1)[0]) in takes_value:
        n = 2 if takes_value[name] and "=" not in argv[0] else 1
        moved += argv[:n]
        argv = argv[n:]
    return argv + moved
