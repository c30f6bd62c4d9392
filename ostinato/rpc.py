"""gRPC plumbing every service shares: server factory, channels, error mapping.

Measured facts behind the options (see shared/DEPENDENCIES.md): a dead peer is noticed only with
a ping timeout beside keepalive; servers must accept pings as often as clients send them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ostinato import tracing
from ostinato.errors import OstinatoError

KEEPALIVE_MS = 2000
PING_TIMEOUT_MS = 1000

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", PING_TIMEOUT_MS),
    ("grpc.http2.ping_timeout_ms", PING_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
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
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
]


def _status_code(error: OstinatoError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.code_name, grpc.StatusCode.INTERNAL)


class _ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns the named errors of cores and stores into gRPC status codes with their message."""

    async def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(handler.stream_stream), handler.request_deserializer, handler.response_serializer
            )
        return handler


def _wrap_unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behaviour(request, context)
        except OstinatoError as e:
            await context.abort(_status_code(e), str(e))

    return wrapper


def _wrap_stream(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(behaviour):
        # A handler that writes with context.write() and returns: treat like a unary one.
        return _wrap_unary(behaviour)

    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for item in behaviour(request, context):
                yield item
        except OstinatoError as e:
            await context.abort(_status_code(e), str(e))

    return wrapper


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
) -> Server:
    """Starts a server on `address` (HOST:PORT, PORT may be 0).

    registrations: (add_XServicer_to_server, servicer, full service name) triples.
    """
    server = grpc.aio.server(
        interceptors=[*tracing.server_interceptors(), _ErrorInterceptor()],
        options=SERVER_OPTIONS,
    )
    names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    for add, servicer, name in registrations:
        add(servicer, server)
        names.append(name)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    host = address.rsplit(":", 1)[0]
    result = Server(server, port, host, health_servicer)
    for name in names[2:]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    await result.set_serving(True)
    return result


def channel(address: str) -> grpc.aio.Channel:
    """A client channel with keepalive, fast reconnect and (when on) tracing interceptors."""
    return grpc.aio.insecure_channel(
        address, options=CHANNEL_OPTIONS, interceptors=tracing.client_interceptors() or None
    )


def service_name(descriptor_module: Any, service: str) -> str:
    return descriptor_module.DESCRIPTOR.services_by_name[service].full_name
