"""Process life of a service: logging, signals, announcing the bound address."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ostinato import logs, metrics, tls, tracing

log = logging.getLogger(__name__)


def named_address(text: str, what: str) -> tuple[str, str]:
    """Parses NAME=HOST:PORT command-line values (agents, subagents, controllers)."""
    name, sep, address = text.partition("=")
    if not sep or not name or ":" not in address:
        raise argparse.ArgumentTypeError(f"{what} must be NAME=HOST:PORT, not {text!r}")
    return name, address


@dataclass(frozen=True)
class Options:
    """What every service takes besides its own flags: where it serves metrics, how it logs."""

    metrics_listen: str | None = None
    log_format: str = "text"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("observability")
    group.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at https://HOST:PORT/metrics (port 0: any), with this service's"
        " certificate, to clients with a certificate of its CA (http with --insecure); default: none",
    )
    group.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="json: one object a line, lines about an order with order_id, workflow, job, trace_id",
    )


def options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Options:
    if args.metrics_listen is not None and ":" not in args.metrics_listen:
        parser.error(f"--metrics-listen must be HOST:PORT, not {args.metrics_listen!r}")
    return Options(args.metrics_listen, args.log_format)


def setup_logging(name: str, log_format: str = "text") -> None:
    level = os.environ.get("OSTINATO_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(logs.JsonFormatter(name))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {name} %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # A line per order event (ostinato.orders) for log pipelines, which read JSON; in text the
    # order's history in JOC says the same, and a line per event cost the controller and the
    # director a sixth of their CPU under load.
    logging.getLogger("ostinato.orders").setLevel(logging.INFO if log_format == "json" else logging.WARNING)


_metrics_url = ""


def announce(name: str, address: str, data_dir: Path) -> None:
    """Tells launchers where the service listens: a line on stdout and DATA_DIR/NAME.address
    (and where its metrics are: DATA_DIR/NAME.metrics, written first).

    The files are written atomically, so a launcher that sees one can use it.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    if _metrics_url:
        _write_atomically(data_dir / f"{name}.metrics", _metrics_url)
        print(f"{name} metrics at {_metrics_url}", flush=True)
    _write_atomically(data_dir / f"{name}.address", address)
    print(f"{name} listening on {address}", flush=True)


def _write_atomically(path: Path, line: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(line + "\n")
    tmp.replace(path)


def run(
    name: str,
    serve: Callable[[asyncio.Event], Awaitable[None]],
    security: tls.Security,
    options: Options | None = None,
) -> int:
    """Runs `serve(stop)` until SIGTERM or SIGINT sets `stop`; `serve` shuts down gracefully. Its
    servers and channels use `security`."""
    global _metrics_url
    options = options or Options()
    setup_logging(name, options.log_format)
    tracing.configure(name)
    tls.use(security)
    endpoint = None
    if options.metrics_listen is not None:
        try:
            endpoint = metrics.serve(name, options.metrics_listen, security)
        except OSError as e:
            print(f"{name}: --metrics-listen {options.metrics_listen}: {e}", file=sys.stderr)
            return 1
        _metrics_url = endpoint.url
        log.info("%s: metrics at %s", name, endpoint.url)
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
    finally:
        if endpoint is not None:
            endpoint.stop()
    return 0
