"""Process life of a service: logging, signals, announcing the bound address."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from ostinato import tls, tracing

log = logging.getLogger(__name__)


def named_address(text: str, what: str) -> tuple[str, str]:
    """Parses NAME=HOST:PORT command-line values (agents, subagents, controllers)."""
    import argparse

    name, sep, address = text.partition("=")
    if not sep or not name or ":" not in address:
        raise argparse.ArgumentTypeError(f"{what} must be NAME=HOST:PORT, not {text!r}")
    return name, address


def setup_logging(name: str) -> None:
    level = os.environ.get("OSTINATO_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {name} %(name)s: %(message)s",
    )


def announce(name: str, address: str, data_dir: Path) -> None:
    """Tells launchers where the service listens: a line on stdout and DATA_DIR/NAME.address.

    The file is written atomically, so a launcher that sees it can use it.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".{name}.address.tmp"
    tmp.write_text(address + "\n")
    tmp.replace(data_dir / f"{name}.address")
    print(f"{name} listening on {address}", flush=True)


def run(name: str, serve: Callable[[asyncio.Event], Awaitable[None]], security: tls.Security) -> int:
    """Runs `serve(stop)` until SIGTERM or SIGINT sets `stop`; `serve` shuts down gracefully. Its
    servers and channels use `security`."""
    setup_logging(name)
    tracing.configure(name)
    tls.use(security)
    if security.insecure:
        log.warning("%s runs in PLAIN TEXT (--insecure): anyone who reaches its port is trusted", name)
    else:
        log.info("%s: %s", name, security.describe())

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except OSError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 1
    return 0
