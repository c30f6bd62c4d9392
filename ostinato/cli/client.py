"""Talking to JOC: its address (or its cluster's instances' addresses), the account's token, gRPC
errors as one line and exit 1.

With several addresses (a JOC cluster) the client talks to the active instance: a passive one
answers UNAVAILABLE naming it, and the client follows; while none is active (a take-over) or the
instance it talked to died, it tries the others again until the call's deadline. Calls repeated
so are safe: a passive instance did nothing, and `ostinato order add` chooses the order's id
itself, so that a request repeated after a lost answer adds nothing twice."""

from __future__ import annotations

import argparse
import os
import socket
import time
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
        metavar="HOST:PORT[,HOST:PORT...]",
        help="JOC's address, or its cluster's instances' addresses (default: $OSTINATO_JOC, else"
        " %(default)s)",
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


# How long a call may take, failing over included; between tries of an instance the client waits
# RETRY_START doubling up to RETRY_MAX (a take-over takes a few seconds).
CALL_DEADLINE = 60.0
RETRY_START = 0.1
RETRY_MAX = 1.0


class JocClient:
    """Blocking stubs of JOC's services on the channel to the instance talked to now; every gRPC
    error becomes a CliError with its message."""

    def __init__(self, address: str, security: Any, token: str = "", reason: str = "") -> None:
        import grpc

        from gen.ostinato.joc.v1 import joc_pb2_grpc

        self.addresses = _split_addresses(address)
        self.address = _first_reachable(self.addresses)
        self._grpc = grpc
        self._security = security
        self.channel = self._connect(self.address)
        self.inventory = _Service(self, joc_pb2_grpc.InventoryServiceStub)
        self.deployment = _Service(self, joc_pb2_grpc.DeploymentServiceStub)
        self.orders = _Service(self, joc_pb2_grpc.OrderServiceStub)
        self.audit = _Service(self, joc_pb2_grpc.AuditServiceStub)
        self.cluster = _Service(self, joc_pb2_grpc.ClusterServiceStub)
        self.accounts = _Service(self, joc_pb2_grpc.AccountServiceStub)
        self.plan = _Service(self, joc_pb2_grpc.DailyPlanServiceStub)
        metadata = [(ACCOUNT_METADATA, _user())]
        if token:
            metadata.append(("authorization", f"Bearer {token}"))
        if reason:
            metadata.append((REASON_METADATA, reason))
        self.metadata = tuple(metadata)

    def _connect(self, address: str) -> Any:
        from ostinato import rpc

        return rpc.sync_channel(address, self._security)

    def call(self, method: Callable[..., Any], request: Any, what: str = "") -> Any:
        deadline = time.monotonic() + CALL_DEADLINE
        pause = RETRY_START
        while True:
            try:
                return method(request, metadata=self.metadata, timeout=max(deadline - time.monotonic(), 0.1))
            except self._grpc.RpcError as e:
                if time.monotonic() + pause >= deadline or not self.follow(e):
                    raise self.error(e, what) from None
            time.sleep(pause)
            pause = min(pause * 2, RETRY_MAX)

    def stream(self, method: Callable[..., Any], request: Any) -> Iterator[Any]:
        try:
            yield from method(request, metadata=self.metadata)
        except self._grpc.RpcError as e:
            raise self.error(e) from None

    def follow(self, e: Any) -> bool:
        """After error `e`: moves to the active instance a passive one named, or to another
        instance when none is named (a take-over) or the one talked to is gone. False when the
        error is JOC's answer, or no instance can be reached: the caller gives up."""
        from ostinato import rpc

        if e.code() != self._grpc.StatusCode.UNAVAILABLE:
            return False
        trailing = dict(e.trailing_metadata() or ())
        if rpc.ACTIVE_ADDRESS_KEY in trailing:  # a passive instance
            named = str(trailing[rpc.ACTIVE_ADDRESS_KEY])
            self._move(named or self._next(), named)
            return True
        if rpc.STATUS_DETAILS_KEY in trailing:
            return False  # JOC's own UNAVAILABLE: a controller it cannot reach
        # No answer from JOC: it went away. Another instance, or this one again (restarting) when
        # the call had reached it; one that listens but refused the connection is a TLS mismatch.
        try:
            address = _first_reachable([*self._others(), self.address])
        except CliError:
            return False
        if address == self.address and (e.details() or "").startswith("failed to connect"):
            return False
        self._move(address, "")
        return True

    def _others(self) -> list[str]:
        i = self.addresses.index(self.address) if self.address in self.addresses else -1
        return [*self.addresses[i + 1 :], *self.addresses[: max(i, 0)]]

    def _next(self) -> str:
        return (self._others() or [self.address])[0]

    def _move(self, address: str, named: str) -> None:
        if address == self.address:
            return
        if named and named not in self.addresses:
            self.addresses.append(named)
        self.channel.close()
        self.address = address
        self.channel = self._connect(address)

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


class _Service:
    """A service's methods, each called on the client's channel of the moment."""

    def __init__(self, client: JocClient, stub_class: Any) -> None:
        self._client = client
        self._stub_class = stub_class

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def method(request: Any, **kwargs: Any) -> Any:
            return getattr(self._stub_class(self._client.channel), name)(request, **kwargs)

        return method


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


def _split_addresses(text: str) -> list[str]:
    from ostinato import rpc

    try:
        return rpc.parse_cluster_addresses(text)
    except ValueError as e:
        raise CliError(f"--joc: {e}") from None


def _first_reachable(addresses: list[str]) -> str:
    """The first address where something listens. A plain TCP connect first: "nothing listens
    there" is then told apart from an UNAVAILABLE that JOC itself reports (e.g. its controller is
    down)."""
    for address in addresses:
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
            return address
        except OSError:
            continue
    raise CliError(f"cannot reach JOC at {', '.join(addresses)}")


def _user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:
        return "unknown"
