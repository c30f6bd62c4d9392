"""JOC's links to the controllers it knows (`--controller ID=HOST:PORT`), and how their gRPC errors
become JOC's own errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from gen.ostinato.controller.v1 import controller_pb2_grpc
from ostinato import errors, rpc

# Calls that change something wait at most this long for a controller; WatchEvents has no deadline.
CALL_TIMEOUT = 15.0

_ERRORS: dict[grpc.StatusCode, type[errors.OstinatoError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
}


def parse_controller_arg(text: str) -> tuple[str, str]:
    """ID=HOST:PORT -> (ID, HOST:PORT); ValueError says what is wrong."""
    controller_id, sep, address = text.partition("=")
    if not sep or not controller_id.strip() or ":" not in address:
        raise ValueError(f"expected ID=HOST:PORT, got {text!r}")
    return controller_id.strip(), address.strip()


@dataclass
class ControllerLink:
    id: str
    address: str
    _channel: grpc.aio.Channel | None = field(default=None, repr=False)

    @property
    def stub(self) -> controller_pb2_grpc.ControllerServiceStub:
        # Made on first use: an aio channel belongs to the running event loop.
        if self._channel is None:
            self._channel = rpc.channel(self.address)
        return controller_pb2_grpc.ControllerServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

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
                f"controller {self.id} at {self.address} is unreachable: {_short(details)}"
            )
        return errors.OstinatoError(f"controller {self.id}: {e.code().name}: {details}")


def _short(details: str) -> str:
    first = details.splitlines()[0] if details else ""
    return first if len(first) <= 200 else first[:197] + "..."
