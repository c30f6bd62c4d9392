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

import logging
from collections.abc import Callable
from typing import Any

import grpc

from gen.ostinato.common.v1 import cluster_pb2, cluster_pb2_grpc
from gen.ostinato.controller.v1 import controller_pb2_grpc
from ostinato import errors, rpc

log = logging.getLogger(__name__)

# Calls that change something wait at most this long for a controller; WatchEvents has no deadline.
CALL_TIMEOUT = 15.0


def parse_controller_arg(text: str) -> tuple[str, list[str]]:
    """ID=HOST:PORT[,HOST:PORT...] -> (ID, [HOST:PORT, ...]); ValueError says what is wrong."""
    controller_id, sep, addresses = text.partition("=")
    if not sep or not controller_id.strip():
        raise ValueError(f"expected ID=HOST:PORT[,HOST:PORT...], got {text!r}")
    try:
        return controller_id.strip(), rpc.parse_cluster_addresses(addresses)
    except ValueError:
        raise ValueError(f"expected ID=HOST:PORT[,HOST:PORT...], got {text!r}") from None


class ControllerLink:
    """One controller (cluster) as JOC sees it: its id and its nodes' addresses."""

    def __init__(
        self,
        id: str,
        addresses: list[str] | str,
        epoch: Callable[[], int] = lambda: 0,
        on_stale: Callable[[], None] = lambda: None,
    ) -> None:
        self.id = id
        self.target = rpc.ClusterTarget(
            [addresses] if isinstance(addresses, str) else addresses, name=f"controller {id}"
        )
        # The JOC cluster's epoch every call carries (0: none, a JOC of no cluster); the
        # controller refuses a command of an older epoch than it saw (a deposed JOC's), and
        # `on_stale` hears of it.
        self.epoch = epoch
        self.on_stale = on_stale

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
        """After `error` from the node at `address`: see `rpc.ClusterTarget.follow`."""
        return self.target.follow(error, address)

    async def call(
        self,
        method: str,
        request: Any,
        timeout: float = CALL_TIMEOUT,
        down_after: float = rpc.CLUSTER_DOWN_AFTER,
    ) -> Any:
        """ControllerService.`method`(request) at the active node: see `rpc.ClusterTarget.call`."""
        epoch = self.epoch()
        metadata = ((rpc.JOC_EPOCH_KEY, str(epoch)),) if epoch else ()
        try:
            return await self.target.call(
                controller_pb2_grpc.ControllerServiceStub, method, request, timeout, down_after, metadata
            )
        except grpc.aio.AioRpcError as e:
            if rpc.error_reason(e) == "STALE_EPOCH":
                log.warning("controller %s refused JOC's epoch %d: %s", self.id, epoch, e.details())
                self.on_stale()
            raise

    def error(self, e: grpc.aio.AioRpcError) -> errors.OstinatoError:
        """The controller's error as JOC's: see `rpc.ClusterTarget.error`."""
        return self.target.error(e)

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
                failures.append((address, f"{e.code().name}: {rpc.first_line(e.details() or '')}"))
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
