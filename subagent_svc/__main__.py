"""`python -m subagent_svc`: the subagent process."""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from pathlib import Path

from ostinato import service, signing, tls
from ostinato.errors import InvalidArgument
from subagent_svc.server import start


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="subagent", description="Runs job processes for a director.")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free port)")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--id", default=socket.gethostname(), help="subagent id (default: host name)")
    parser.add_argument(
        "--director-timeout",
        type=float,
        default=10.0,
        help="kill the processes after this many seconds without a director session",
    )
    parser.add_argument(
        "--process-limit",
        type=int,
        default=0,
        help="at most this many job processes at once on this subagent (0: no limit); the director"
        " hands further jobs to other subagents of their cluster, or lets them wait",
    )
    parser.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="FILE",
        help="PEM certificates (signers' or CAs') of the workflows and job resources whose jobs it runs"
        " (repeatable); without any (and no --trust-pgp), it runs no job",
    )
    parser.add_argument(
        "--trust-pgp",
        action="append",
        default=[],
        metavar="FILE",
        help="OpenPGP public keys (armored or binary) of the workflows' and job resources' signers"
        " (repeatable)",
    )
    tls.add_arguments(parser, peers="the nodes of its director (their certificates' identities)")
    service.add_arguments(parser)
    args = parser.parse_args(argv)
    args.options = service.options(args, parser)
    if args.process_limit < 0:
        parser.error("--process-limit: must be 0 (no limit) or more")
    args.security = tls.from_args(args, parser, peers_required=True)
    try:
        args.verifier = signing.Verifier.from_files(args.trust, args.trust_pgp)
    except InvalidArgument as e:
        parser.error(f"--trust/--trust-pgp: {e}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    async def serve(stop: asyncio.Event) -> None:
        data_dir: Path = args.data_dir.resolve()
        running = await start(
            args.id, data_dir, args.listen, args.director_timeout, args.verifier, args.process_limit
        )
        service.announce("subagent", running.server.address, data_dir)
        await stop.wait()
        await running.stop()

    return service.run("subagent", serve, args.security, args.options)


if __name__ == "__main__":
    sys.exit(main())
