"""Talking to JOC: its address, the account's token, gRPC errors as one line and exit 1."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ostinato.cli import security

DEFAULT_JOC = "127.0.0.1:4446"

# Without a token, JOC's audit log records who asked by this header (see joc_svc.auth).
ACCOUNT_METADATA = "x-ostinato-account"
REASON_METADATA = "x-ostinato-reason"


class CliError(Exception):
    """Ends the command with `ostinato: error: MESSAGE` and exit 1."""


def one_line(message: str) -> str:
    """Errors are one line on stderr; a neighbour's message may have several."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def joc_options() -> argparse.ArgumentParser:
    """The options of every command that talks to JOC, as a parent parser."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--joc",
        default=os.environ.get("OSTINATO_JOC") or DEFAULT_JOC,
        metavar="HOST:PORT",
        help="JOC's address (default: $OSTINATO_JOC, else %(default)s)",
    )
    options.add_argument(
        "--token",
        default="",
        metavar="TOKEN",
        help="the account's token (default: $OSTINATO_TOKEN, else the file $OSTINATO_TOKEN_FILE names)",
    )
    options.add_argument("--reason", metavar="TEXT", help="why: recorded in the audit log")
    security.add_client_arguments(options)
    return options


class JocClient:
    """Blocking stubs on one channel; every gRPC error becomes a CliError with its message."""

    def __init__(self, address: str, security: Any, token: str = "", reason: str = "") -> None:
        import grpc

        from gen.ostinato.joc.v1 import joc_pb2_grpc
        from ostinato import rpc

        self.address = address
        _check_reachable(address)
        self._grpc = grpc
        self.channel = rpc.sync_channel(address, security)
        self.inventory = joc_pb2_grpc.InventoryServiceStub(self.channel)
        self.deployment = joc_pb2_grpc.DeploymentServiceStub(self.channel)
        self.orders = joc_pb2_grpc.OrderServiceStub(self.channel)
        self.audit = joc_pb2_grpc.AuditServiceStub(self.channel)
        self.cluster = joc_pb2_grpc.ClusterServiceStub(self.channel)
        self.accounts = joc_pb2_grpc.AccountServiceStub(self.channel)
        self.plan = joc_pb2_grpc.DailyPlanServiceStub(self.channel)
        metadata = [(ACCOUNT_METADATA, _user())]
        if token:
            metadata.append(("authorization", f"Bearer {token}"))
        if reason:
            metadata.append((REASON_METADATA, reason))
        self.metadata = tuple(metadata)

    def call(self, method: Callable[..., Any], request: Any, what: str = "") -> Any:
        try:
            return method(request, metadata=self.metadata, timeout=60)
        except self._grpc.RpcError as e:
            raise self.error(e, what) from None

    def stream(self, method: Callable[..., Any], request: Any) -> Iterator[Any]:
        try:
            yield from method(request, metadata=self.metadata)
        except self._grpc.RpcError as e:
            raise self.error(e) from None

    def error(self, e: Any, what: str = "") -> CliError:
        # grpc's own text for a connection JOC refused; JOC's messages (e.g. about an unreachable
        # controller, which may quote this text) never start with it.
        details = e.details() or ""
        if e.code() == self._grpc.StatusCode.UNAVAILABLE and details.startswith("failed to connect"):
            # It listens (checked before): a TLS handshake failed, on either side (a refused
            # client certificate shows here as a closed socket).
            last = details.partition("last error: ")[2] or details
            return CliError(f"cannot connect to JOC at {self.address} (TLS handshake?): {last}")
        message = e.details() or e.code().name
        return CliError(f"{what}: {message}" if what else message)


def connect(args: argparse.Namespace) -> JocClient:
    """The client for a command's --joc, --token (else $OSTINATO_TOKEN, else the file named by
    $OSTINATO_TOKEN_FILE) and --reason."""
    token = args.token or os.environ.get("OSTINATO_TOKEN", "")
    token_file = os.environ.get("OSTINATO_TOKEN_FILE")
    if not token and token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as e:
            raise CliError(f"OSTINATO_TOKEN_FILE: {e}") from None
    try:
        client_security = security.client_security(args)
    except security.SecurityError as e:
        raise CliError(str(e)) from None
    return JocClient(args.joc, client_security, token, args.reason or "")


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise CliError(f"--joc: expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def _check_reachable(address: str) -> None:
    """A plain TCP connect first: "nothing listens there" is then told apart from an UNAVAILABLE
    that JOC itself reports (e.g. its controller is down)."""
    host, port = _split_address(address)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError:
        raise CliError(f"cannot reach JOC at {address}") from None


def _user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:
        return "unknown"
