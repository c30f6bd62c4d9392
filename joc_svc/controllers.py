"""JOC's links to the controllers it knows (`--controller ID=HOST:PORT[,HOST:PORT...]`), and how their
gRPC errors become JOC's own errors.

A controller may be a cluster: only its active node serves; a passive node answers UNAVAILABLE
naming the active node (ostinato.rpc.ClusterTarget follows it). Every unary call JOC makes to a
controller goes through `ControllerLink.call`, which follows the active node and retries there
within the call's deadline: the controller's calls are idempotent (AddOrders by order id,
DeployItems by path and version, order commands by their marks), so a call repeated at another node
after an answer was lost does nothing twice. The event stream follows with `ControllerLink.follow`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc

from gen.ostinato.common.v1 import cluster_pb2, cluster_pb2_grpc
from gen.ostinato.controller.v1 import controller_pb2_grpc
from ostinato import errors, rpc

log = logging.getLogger(__name__)

# Calls that change something wait at most this long for a controller; WatchEvents has no deadline.
CALL_TIMEOUT = 15.0
# While the nodes answer but none is active (an election), a call waits this long between tries.
RETRY_START = 0.1
RETRY_MAX = 1.0
# Codes after which a call is tried again at the active node (or the next node).
FOLLOWED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

_ERRORS: dict[grpc.StatusCode, type[errors.OstinatoError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
}


def parse_controller_arg(text: str) -> tuple[str, list[str]]:
    """ID=HOST:PORT[,HOST:PORT...] -> (ID, [HOST:PORT, ...]); ValueError says what is wrong."""
    controller_id, sep, addresses = text.partition("=")
    if not sep or not controller_id.strip():
        raise ValueError(f"expected ID=HOST:PORT[,HOST:PORT...], got {text!r}")
    try:
        return controller_id.strip(), rpc.parse_cluster_addresses(addresses)
    except ValueError:
        raise ValueError(f"expected ID=HOST:PORT[,HOST:PORT...], got {text!r}") from None


def answered_passive(error: grpc.aio.AioRpcError) -> bool:
    """The node answered as a passive node (it names the active one, or none during an election),
    as opposed to not answering at all."""
    return any(key == rpc.ACTIVE_ADDRESS_KEY for key, _ in error.trailing_metadata() or ())


def channel_closed_under_us() -> bool:
    """Whether the CancelledError being handled came from the call's channel, closed under it (the
    link followed the cluster to another node and closed the old channel), rather than from
    cancelling the task itself."""
    task = asyncio.current_task()
    return task is not None and not task.cancelling()


class ControllerLink:
    """One controller (cluster) as JOC sees it: its id and its nodes' addresses."""

    def __init__(self, id: str, addresses: list[str] | str) -> None:
        self.id = id
        self.target = rpc.ClusterTarget([addresses] if isinstance(addresses, str) else addresses)

    def __repr__(self) -> str:
        return f"ControllerLink({self.id!r}, {self.target.addresses!r})"

    @property
    def addresses(self) -> list[str]:
        return self.target.addresses

    @property
    def address(self) -> str:
        """The node JOC talks to now."""
        return self.target.address

    @property
    def stub(self) -> controller_pb2_grpc.ControllerServiceStub:
        """The controller service at the node JOC talks to now; for streams (unary calls go
        through `call`)."""
        return controller_pb2_grpc.ControllerServiceStub(self.target.channel())

    async def close(self) -> None:
        await self.target.close()

    def follow(self, error: BaseException, address: str) -> bool:
        """After `error` from the node at `address`: switches to the active node the answer names,
        or to the next node when that one is unreachable or passive. False when there is nowhere
        else to go. Another task may have switched already: then the current node is tried."""
        if self.target.address != address:
            return True
        if not self.target.follow(error):
            return False
        log.info("controller %s: following node %s (was %s)", self.id, self.target.address, address)
        return True

    async def call(self, method: str, request: Any, timeout: float = CALL_TIMEOUT) -> Any:
        """ControllerService.`method`(request) at the active node. After UNAVAILABLE or
        DEADLINE_EXCEEDED it follows the cluster and tries again until `timeout` is spent; it gives
        up at once when no node JOC knows answered at all (the whole controller is down), and
        waits a little before a node's second try (while an election goes on)."""
        deadline = time.monotonic() + timeout
        tried: set[str] = set()
        unanswered: set[str] = set()
        pause = RETRY_START
        last: grpc.aio.AioRpcError | None = None  # what the nodes said so far tells more than a timeout
        while True:
            address = self.target.address
            if address in tried:
                await asyncio.sleep(max(min(pause, deadline - time.monotonic()), 0))
                pause = min(pause * 2, RETRY_MAX)
            if last is not None and time.monotonic() >= deadline:
                raise last
            tried.add(address)
            stub = controller_pb2_grpc.ControllerServiceStub(self.target.channel())
            try:
                remaining = max(deadline - time.monotonic(), 0.001)
                return await getattr(stub, method)(request, timeout=remaining)
            except asyncio.CancelledError:
                if not channel_closed_under_us() or self.target.address == address:
                    raise
                # Another call moved the link to another node meanwhile: try there.
            except grpc.aio.AioRpcError as e:
                if e.code() not in FOLLOWED:
                    raise
                if time.monotonic() >= deadline:
                    if last is not None and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise last from None
                    raise
                last = e
                passive = answered_passive(e)
                if passive:
                    unanswered.discard(address)
                else:
                    unanswered.add(address)
                if set(self.target.addresses) <= unanswered:
                    raise
                if not self.follow(e, address) and not passive:
                    raise

    def error(self, e: grpc.aio.AioRpcError) -> errors.OstinatoError:
        """The controller's error as JOC's: the same code and message for the caller's mistakes
        (unknown workflow or agent), UNAVAILABLE naming the controller when it cannot be reached."""
        details = e.details() or e.code().name
        cls = _ERRORS.get(e.code())
        if cls is not None:
            return cls(details)
        if e.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED,
        ):
            return errors.Unavailable(
                f"controller {self.id} at {self.where()} is unreachable: {_short(details)}"
            )
        return errors.OstinatoError(f"controller {self.id}: {e.code().name}: {details}")

    def where(self) -> str:
        if len(self.target.addresses) == 1 and self.target.address in self.target.addresses:
            return self.target.address
        return f"{self.target.address} (nodes {', '.join(self.target.addresses)})"

    # ---- the cluster service every controller node serves, passive ones too

    async def cluster_status(
        self, timeout: float
    ) -> tuple[cluster_pb2.ClusterStatus | None, list[tuple[str, str]]]:
        """The controller's cluster as the node JOC talks to sees it, else as the first of the
        others that answers: (the status or None, [(address, why it did not answer)])."""
        failures: list[tuple[str, str]] = []
        current = self.target.address
        for address in [current, *(a for a in self.target.addresses if a != current)]:
            try:
                response = await self.at_node(
                    address, "GetClusterStatus", cluster_pb2.GetClusterStatusRequest(), timeout
                )
                return response.status, failures
            except grpc.aio.AioRpcError as e:
                failures.append((address, f"{e.code().name}: {_short(e.details() or '')}"))
        return None, failures

    async def switchover(self, to_node: str, timeout: float) -> cluster_pb2.SwitchoverResponse:
        """ClusterService.Switchover at the active node (found by its cluster status)."""
        status, failures = await self.cluster_status(min(timeout, 5.0))
        if status is None:
            raise errors.Unavailable(
                f"controller {self.id}: no node answered ({'; '.join(f'{a}: {w}' for a, w in failures)})"
            )
        active = next((n.address for n in status.nodes if n.name == status.active_node), "")
        if not active:
            raise errors.Unavailable(f"controller {self.id} has no active node now (an election?); try again")
        request = cluster_pb2.SwitchoverRequest(to_node=to_node)
        try:
            response: cluster_pb2.SwitchoverResponse = await self.at_node(
                active, "Switchover", request, timeout
            )
        except grpc.aio.AioRpcError as e:
            named = rpc.active_address_of(e)
            if not named or named == active:
                raise
            # The active node changed since the status was read.
            response = await self.at_node(named, "Switchover", request, timeout)
        return response

    async def at_node(self, address: str, method: str, request: Any, timeout: float) -> Any:
        """ClusterService.`method`(request) at one node, without following. On a channel of its
        own: these calls are rare, and the link's channel may be closed when it follows."""
        async with rpc.channel(address) as channel:
            stub = cluster_pb2_grpc.ClusterServiceStub(channel)
            return await getattr(stub, method)(request, timeout=timeout)


def _short(details: str) -> str:
    first = details.splitlines()[0] if details else ""
    return first if len(first) <= 200 else first[:197] + "..."
