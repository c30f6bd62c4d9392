"""gRPC plumbing every service shares: server factory, channels, error mapping. Transport security
(mutual TLS, peer identities) comes from ostinato.tls: every server and channel here uses it.

Measured facts behind the options (see shared/DEPENDENCIES.md): a dead peer is noticed only with
a ping timeout beside keepalive; servers must accept pings as often as clients send them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ostinato import limits, metrics, tls, tracing
from ostinato.errors import (
    AlreadyExists,
    Deposed,
    FailedPrecondition,
    InvalidArgument,
    NotActive,
    NotFound,
    OstinatoError,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)

T = TypeVar("T")

log = logging.getLogger(__name__)

# Trailing metadata of a passive node's UNAVAILABLE answer: where the active node listens.
ACTIVE_ADDRESS_KEY = "ostinato-active-address"
# Request metadata of every call an active JOC makes to a controller: its lease epoch (decimal),
# higher with every take-over. A controller refuses commands from an epoch older than the newest.
JOC_EPOCH_KEY = "ostinato-joc-epoch"

KEEPALIVE_MS = 2000
PING_TIMEOUT_MS = 1000

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", PING_TIMEOUT_MS),
    ("grpc.http2.ping_timeout_ms", PING_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", limits.MESSAGE_BYTES),
    ("grpc.max_send_message_length", limits.MESSAGE_BYTES),
    # Reconnect quickly after a neighbour restarts; the default backoff grows to 2 minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", PING_TIMEOUT_MS),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_MS // 2),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", limits.MESSAGE_BYTES),
    ("grpc.max_send_message_length", limits.MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]


def _status_code(error: OstinatoError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.code_name, grpc.StatusCode.INTERNAL)


# Called with the full method name before each call; raises (e.g. NotActive) to refuse it.
Guard = Callable[[str], None]


def _no_guard(method: str) -> None:
    pass


class _ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Refuses peers whose certificate identity is not accepted, runs the guard, and turns the
    named errors of cores and stores into gRPC status codes with their message."""

    def __init__(self, guard: Guard, peers: tls.Peers | None) -> None:
        self.guard = guard
        self.peers = peers
        # Calls counted and timed (ostinato.metrics) when the process serves metrics: here, in
        # the one wrapper every call passes anyway, not in a layer of its own per message.
        self.timed = metrics.serving()
        # method -> (the service's handler, its wrapper): built once per method, not per call.
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method.lstrip("/")
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        timed = self.timed and not method.startswith(("grpc.health.", "grpc.reflection."))
        deserializer = _checked_deserializer(method, handler.request_deserializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary, timed=timed),
                deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, handler.unary_stream, timed=timed),
                deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, handler.stream_unary, streamed=True, timed=timed),
                deserializer,
                handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(method, handler.stream_stream, streamed=True, timed=timed),
                deserializer,
                handler.response_serializer,
            )
        return handler

    def _as_passive(self, method: str, error: OstinatoError) -> OstinatoError:
        """A node deposed during the call answers as the passive node it is now (naming the
        active node when known), so that clients go and try again there."""
        if not isinstance(error, Deposed):
            return error
        try:
            self.guard(method)
        except NotActive as now_passive:
            return now_passive
        return NotActive(str(error))  # stepping down, not passive yet: no active node known

    def _unary(
        self, method: str, behaviour: Callable[..., Any], streamed: bool = False, timed: bool = False
    ) -> Callable[..., Any]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                if self.peers is not None:
                    self.peers.check(context, method)
                self.guard(method)
                return _deliverable(method, await behaviour(_accepted(request, streamed), context))
            except OstinatoError as e:
                await _abort(context, self._as_passive(method, e))
            except BaseException as e:
                error = e
                raise
            finally:
                if timed:
                    metrics.call_ended(method, started, context, error)

        return wrapper

    def _stream(
        self, method: str, behaviour: Callable[..., Any], streamed: bool = False, timed: bool = False
    ) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(behaviour):
            # A handler that writes with context.write() and returns: treat like a unary one.
            return self._unary(method, behaviour, streamed, timed)

        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                if self.peers is not None:
                    self.peers.check(context, method)
                self.guard(method)
                request = _accepted(request, streamed)
                # Headers at once: a client waiting for the call to be established (a
                # controller that just followed a fail-over) need not wait for the first
                # message, which may be a heartbeat a second away.
                await context.send_initial_metadata(())
                async for item in behaviour(request, context):
                    yield item
            except OstinatoError as e:
                await _abort(context, self._as_passive(method, e))
            except BaseException as e:
                error = e
                raise
            finally:
                if timed:
                    metrics.call_ended(method, started, context, error)

        return wrapper


class _Refused:
    """Stands for a request message refused before any handler sees it: larger than its method
    takes (ostinato.limits), or not a valid message at all."""

    def __init__(self, error: InvalidArgument) -> None:
        self.error = error


def _checked_deserializer(method: str, deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    limit = limits.request_bytes(method)
    name = method.rsplit("/", 1)[-1]

    def checked(data: bytes) -> Any:
        if len(data) > limit:
            return _Refused(limits.too_large("request", len(data), limit, f"the {name} request"))
        if deserialize is None:
            return data
        try:
            return deserialize(data)
        except DecodeError as e:
            return _Refused(InvalidArgument(f"not a valid {name} request: {e}", field="request"))

    return checked


def _deliverable(method: str, response: Any) -> Any:
    """The response, unless it is larger than gRPC would send: then a clear error instead of
    gRPC's own failure (and its traceback in the log)."""
    if isinstance(response, Message) and (size := response.ByteSize()) > limits.MESSAGE_BYTES:
        raise ResourceExhausted(
            f"the answer to {method.rsplit('/', 1)[-1]} would take {limits.size_text(size)}, more than"
            f" the limit of {limits.size_text(limits.MESSAGE_BYTES)}: ask for less (a folder, a limit)"
        )
    return response


def _accepted(request: Any, streamed: bool) -> Any:
    """The request (or the stream of request messages) with refused messages raised as errors."""
    if not streamed:
        return _checked(request)

    async def messages() -> Any:
        async for message in request:
            yield _checked(message)

    return messages()


def _checked(message: Any) -> Any:
    if isinstance(message, _Refused):
        raise message.error
    if isinstance(message, Message):
        limits.check_enums(message)
    return message


async def _abort(context: grpc.aio.ServicerContext, error: OstinatoError) -> None:
    metadata: list[tuple[str, str | bytes]] = [
        (STATUS_DETAILS_KEY, status_details(error).SerializeToString())
    ]
    if isinstance(error, NotActive):
        metadata.append((ACTIVE_ADDRESS_KEY, error.active_address))
    await context.abort(_status_code(error), limits.shortened(str(error)), trailing_metadata=tuple(metadata))


# Where gRPC carries a google.rpc.Status with details, for clients in any language.
STATUS_DETAILS_KEY = "grpc-status-details-bin"
ERROR_DOMAIN = "ostinato"


def status_details(error: OstinatoError) -> status_pb2.Status:
    """The error as a google.rpc.Status: ErrorInfo with a reason code (the error class in
    UPPER_SNAKE_CASE: NOT_FOUND, NOT_ACTIVE, SIGNATURE_REJECTED, ...) and, when the error names
    a field, a BadRequest field violation naming it as the user wrote it."""
    reason = re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).upper()
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN)
    if error.field:
        info.metadata["field"] = error.field
    if isinstance(error, NotActive) and error.active_address:
        info.metadata["active_address"] = error.active_address
    status = status_pb2.Status(code=_status_code(error).value[0], message=limits.shortened(str(error)))
    status.details.add().Pack(info)
    if error.field:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=limits.shortened(error.message)
        )
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    return status


class Server:
    """A grpc.aio server with health and reflection; `port` is the bound port (tests bind 0)."""

    def __init__(self, server: grpc.aio.Server, port: int, host: str, health_servicer: Any) -> None:
        self.server = server
        self.port = port
        self.host = host
        self.health = health_servicer

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("", status)

    async def stop(self, grace: float = 2.0) -> None:
        await self.set_serving(False)
        await self.server.stop(grace)


async def start_server(
    address: str,
    registrations: Iterable[tuple[Callable[[Any, grpc.aio.Server], None], Any, str]],
    guard: Guard = _no_guard,
    security: tls.Security | None = None,
    service: str = "this service",
) -> Server:
    """Starts a server on `address` (HOST:PORT, PORT may be 0).

    registrations: (add_XServicer_to_server, servicer, full service name) triples.
    guard: runs before every call of the registered services (a passive node refuses with it).
    security: default the process's (ostinato.tls.use); `service` names it in refusals.
    """
    security = security or tls.current()
    peers = None if security.insecure else tls.Peers(security.peers, service)
    server = grpc.aio.server(
        interceptors=[
            *tracing.server_interceptors(),
            _ErrorInterceptor(guard, peers),
        ],
        options=SERVER_OPTIONS,
    )
    names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    for add, servicer, name in registrations:
        add(servicer, server)
        names.append(name)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(names, server)
    if security.insecure:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, tls.server_credentials(security))
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    host = address.rsplit(":", 1)[0]
    result = Server(server, port, host, health_servicer)
    for name in names[2:]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    await result.set_serving(True)
    return result


def channel(address: str, security: tls.Security | None = None) -> grpc.aio.Channel:
    """A client channel with keepalive, fast reconnect and (when on) tracing interceptors; with
    the process's security unless given one. It keeps the certificate files of its making."""
    security = security or tls.current()
    interceptors = tracing.client_interceptors() or None
    if security.insecure:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=interceptors)
    credentials = tls.channel_credentials(security)
    return grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS, interceptors=interceptors)


def sync_channel(address: str, security: tls.Security) -> grpc.Channel:
    """A blocking channel (the CLI's)."""
    if security.insecure:
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(address, tls.channel_credentials(security), options=CHANNEL_OPTIONS)


def service_name(descriptor_module: Any, service: str) -> str:
    return descriptor_module.DESCRIPTOR.services_by_name[service].full_name


def active_address_of(error: grpc.aio.AioRpcError) -> str:
    """The active node's address a passive node named in its answer, or ""."""
    for key, value in error.trailing_metadata() or ():
        if key == ACTIVE_ADDRESS_KEY:
            return str(value)
    return ""


def error_reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of an error this system answered (STALE_EPOCH, NOT_ACTIVE, ...), read
    from its status details; "" when the answer carries none."""
    for key, value in error.trailing_metadata() or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return ""
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return info.reason
    return ""


_INT64_MAX = 2**63 - 1  # the journal keeps an epoch as int64


def epoch_of(context: grpc.aio.ServicerContext) -> int:
    """The JOC lease epoch the call carries (JOC_EPOCH_KEY), 0 when it carries none: tools and
    tests that talk to a controller directly."""
    for key, value in context.invocation_metadata() or ():
        if key != JOC_EPOCH_KEY:
            continue
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
        if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) > _INT64_MAX:
            raise InvalidArgument(
                f"not a decimal integer from 0 to {_INT64_MAX}: {text[:40]!r}", field=JOC_EPOCH_KEY
            )
        return int(text)
    return 0


# Codes after which a unary call is tried again at the active node (or the next node).
FOLLOWED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# While nodes answer but none is active (an election), a call waits between tries of a node.
RETRY_START = 0.1
RETRY_MAX = 1.0
# A cluster none of whose nodes answered for this long is down: a call gives up before its
# deadline. Long enough for a node to restart (about 2 s) or a cluster to elect (about 1 s).
CLUSTER_DOWN_AFTER = 5.0
# A channel left for another node is closed after this grace: calls still on it may finish.
CLOSE_GRACE_S = 5.0


def answered_passive(error: grpc.aio.AioRpcError) -> bool:
    """The node answered as a passive node (naming the active one, or none during an election),
    as opposed to not answering at all."""
    return any(key == ACTIVE_ADDRESS_KEY for key, _ in error.trailing_metadata() or ())


def channel_closed_under_us() -> bool:
    """Whether the CancelledError being handled came from the call's channel, closed under it (the
    target followed the cluster to another node), rather than from cancelling the task itself."""
    task = asyncio.current_task()
    return task is not None and not task.cancelling()


class ClusterTarget:
    """The gRPC addresses of one cluster's nodes, as a client sees them: it dials one at a time and,
    after a failed call, follows the active node the answer names, or else tries the next node."""

    def __init__(
        self, addresses: list[str], name: str = "cluster", security: tls.Security | None = None
    ) -> None:
        if not addresses:
            raise ValueError("a cluster needs at least one address")
        self.addresses = list(addresses)
        self.address = self.addresses[0]
        self.name = name  # for log lines and errors
        self.security = security
        self._channel: grpc.aio.Channel | None = None
        self._generation: object = None

    def channel(self) -> grpc.aio.Channel:
        # Made on first use: an aio channel belongs to the running event loop. Renewed certificate
        # files take a new channel; the old one closes after a grace, as when following a node.
        security = self.security or tls.current()
        generation = tls.generation(security)
        if self._channel is not None and generation != self._generation:
            log.info("%s: certificate files changed; new channel to %s", self.name, self.address)
            self._close_later(self._channel)
            self._channel = None
        if self._channel is None:
            self._channel = channel(self.address, security)
            self._generation = generation
        return self._channel

    def _close_later(self, old: grpc.aio.Channel) -> None:
        # In the background, with a grace: other calls on it may still be finishing.
        asyncio.get_running_loop().create_task(old.close(CLOSE_GRACE_S))

    def follow(self, error: BaseException, address: str | None = None) -> bool:
        """After `error` from the node at `address` (default: the current one): switches to the
        named active node, or to the next node when that one is unreachable or passive. True when
        there is a node to try: it switched, or another task had switched already."""
        if address is not None and address != self.address:
            return True
        if not isinstance(error, grpc.aio.AioRpcError):
            target = self._next()
        elif active := active_address_of(error):
            target = active
        elif error.code() in FOLLOWED:
            target = self._next()
        else:
            return False
        if target == self.address:
            return False
        log.info("%s: following node %s (was %s)", self.name, target, self.address)
        self.address = target
        old, self._channel = self._channel, None
        if old is not None:
            self._close_later(old)
        return True

    def _next(self) -> str:
        if self.address not in self.addresses:
            return self.addresses[0]
        return self.addresses[(self.addresses.index(self.address) + 1) % len(self.addresses)]

    async def call(
        self,
        stub_class: Callable[[grpc.aio.Channel], Any],
        method: str,
        request: Any,
        timeout: float,
        down_after: float = CLUSTER_DOWN_AFTER,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> Any:
        """stub_class(channel).`method`(request, metadata) at the active node. After UNAVAILABLE or
        DEADLINE_EXCEEDED it follows the cluster and tries again until `timeout` is spent, waiting
        a little before a node's second try (while an election goes on, or a node restarts). It
        gives up earlier only when no node has answered at all for `down_after` seconds: the whole
        cluster is down, not failing over (0: when each node failed to answer once).

        Only for idempotent calls: one repeated at another node after an answer was lost must
        do nothing twice."""
        deadline = time.monotonic() + timeout
        tried: set[str] = set()
        unanswered: set[str] = set()
        answered_at = time.monotonic()  # the call's start counts as an answer
        pause = RETRY_START
        last: grpc.aio.AioRpcError | None = None  # what the nodes said so far tells more than a timeout
        while True:
            address = self.address
            if address in tried:
                await asyncio.sleep(max(min(pause, deadline - time.monotonic()), 0))
                pause = min(pause * 2, RETRY_MAX)
            if last is not None and time.monotonic() >= deadline:
                raise last
            tried.add(address)
            stub = stub_class(self.channel())
            try:
                remaining = max(deadline - time.monotonic(), 0.001)
                return await getattr(stub, method)(request, timeout=remaining, metadata=metadata)
            except asyncio.CancelledError:
                if not channel_closed_under_us() or self.address == address:
                    raise
                # Another call moved the target to another node meanwhile: try there.
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
                    answered_at = time.monotonic()
                else:
                    unanswered.add(address)
                if set(self.addresses) <= unanswered and time.monotonic() - answered_at >= down_after:
                    raise
                self.follow(e, address)

    def error(self, e: grpc.aio.AioRpcError) -> OstinatoError:
        """A node's error as the caller's own: the same code and message for the caller's
        mistakes (unknown workflow or agent), UNAVAILABLE naming the cluster when it cannot be
        reached, the code's name in the message otherwise."""
        details = e.details() or e.code().name
        if e.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED,
        ):
            return Unavailable(f"{self.name} at {self.where()} is unreachable: {first_line(details)}")
        cls = _PASSED_ON.get(e.code())
        return cls(details) if cls is not None else OstinatoError(f"{self.name}: {e.code().name}: {details}")

    def where(self) -> str:
        if len(self.addresses) == 1 and self.address in self.addresses:
            return self.address
        return f"{self.address} (nodes {', '.join(self.addresses)})"

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


# A neighbour's errors passed on with their own code: the caller's mistakes, not the neighbour's.
_PASSED_ON: dict[grpc.StatusCode, type[OstinatoError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


async def read_within(call: Any, timeout: float) -> Any:
    """The stream's next message (or grpc.aio.EOF) within `timeout`, else the call is cancelled and
    TimeoutError raised: silence means the peer is frozen or gone. Unlike asyncio.wait_for, which
    in Python 3.11 waits for the cancelled read to end, this never waits on the read once the time
    is up (a controller's driver of a killed director once hung there, and never reconnected)."""
    read = asyncio.ensure_future(call.read())
    done, _ = await asyncio.wait({read}, timeout=timeout)
    if not done:
        call.cancel()
        read.cancel()
        read.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no warning
        raise TimeoutError(f"no message within {timeout:g} s")
    return read.result()


def short_error(e: BaseException) -> str:
    """One line for a log: the gRPC code and details, or the exception."""
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {first_line(e.details() or '')}"
    return str(e) or type(e).__name__


def first_line(details: str) -> str:
    first = details.splitlines()[0] if details else ""
    return first if len(first) <= 200 else first[:197] + "..."


def parse_cluster_addresses(text: str) -> list[str]:
    """HOST:PORT[,HOST:PORT...]: the gRPC addresses of a cluster's nodes."""
    addresses = [a.strip() for a in text.split(",") if a.strip()]
    if not addresses or not all(_host_port(a) for a in addresses):
        raise ValueError(f"expected HOST:PORT[,HOST:PORT...], got {text!r}")
    return addresses


def _host_port(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit())
