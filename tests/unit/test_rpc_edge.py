"""The gRPC edge every service shares (ostinato.rpc): requests it cannot take, answers it cannot
send and errors too long to arrive all become clear status codes, never UNKNOWN."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from gen.ostinato.controller.v1 import controller_pb2, controller_pb2_grpc
from ostinato import limits, rpc, tls
from ostinato.errors import InvalidArgument

METHOD = "/ostinato.controller.v1.ControllerService/GetOverview"


class Servicer(controller_pb2_grpc.ControllerServiceServicer):
    def __init__(self) -> None:
        self.answer = controller_pb2.GetOverviewResponse(controller_id="c")
        self.error: Exception | None = None

    async def GetOverview(self, request, context):  # type: ignore[no-untyped-def]
        if self.error is not None:
            raise self.error
        return self.answer


@pytest.fixture
async def served() -> AsyncIterator[tuple[Servicer, grpc.aio.Channel]]:
    servicer = Servicer()
    server = await rpc.start_server(
        "127.0.0.1:0",
        [
            (
                controller_pb2_grpc.add_ControllerServiceServicer_to_server,
                servicer,
                rpc.service_name(controller_pb2, "ControllerService"),
            )
        ],
        security=tls.INSECURE,  # the edge is what is tested here; TLS has tests of its own
    )
    async with rpc.channel(server.address, tls.INSECURE) as channel:
        yield servicer, channel
    await server.stop(0)


async def refusal(channel: grpc.aio.Channel, data: bytes) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(METHOD)(data, timeout=30)
    return info.value


async def test_an_undecodable_request_is_an_invalid_argument(served) -> None:  # type: ignore[no-untyped-def]
    _, channel = served
    error = await refusal(channel, b"\x0a\x05abc")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("request: not a valid GetOverview request: ")


async def test_a_request_beyond_its_methods_limit_names_size_and_limit(served, caplog) -> None:  # type: ignore[no-untyped-def]
    _, channel = served
    size = limits.DEFAULT_REQUEST_BYTES + 10
    error = await refusal(channel, b"\x00" * size)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        f"request: the GetOverview request of {size:,} bytes, more than the limit of 1,048,576 bytes"
    )


async def test_an_answer_larger_than_a_message_is_a_clear_error(served, caplog) -> None:  # type: ignore[no-untyped-def]
    servicer, channel = served
    servicer.answer = controller_pb2.GetOverviewResponse(controller_id="x" * (limits.MESSAGE_BYTES + 1))
    error = await refusal(channel, b"")
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "the answer to GetOverview would take 67,108,8" in (error.details() or "")
    assert "Traceback" not in caplog.text


async def test_an_error_too_long_for_metadata_arrives_shortened(served) -> None:  # type: ignore[no-untyped-def]
    servicer, channel = served
    servicer.error = InvalidArgument("x" * 200_000, field="f")
    error = await refusal(channel, b"")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert details.startswith("f: xxx") and len(details) <= limits.MESSAGE_CHARS


async def test_an_unknown_enum_value_is_an_invalid_argument_naming_the_field() -> None:
    from gen.ostinato.common.v1 import items_pb2

    request = controller_pb2.DeployItemsRequest(items=[items_pb2.SignedItem(path="/a")])
    request.items[0].type = 99  # type: ignore[assignment]
    with pytest.raises(InvalidArgument) as info:
        limits.check_enums(request)
    assert str(info.value) == "items[0].type: unknown value 99 of ItemType"
    limits.check_enums(controller_pb2.DeployItemsRequest(items=[items_pb2.SignedItem(type=1)]))
