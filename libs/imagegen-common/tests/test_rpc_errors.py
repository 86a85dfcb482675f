"""Rich gRPC errors round-trip through a real ``grpc.aio`` server on a socket: what ``to_status``
sends is what ``from_error`` reads, and a plain error (no details) still reads as one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from imagegen.billing.v1 import billing_service_pb2 as pb
from imagegen_common import rpc_errors

Reason = pb.ErrorReason
Behaviour = Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]
_METHOD = "/test.Errors/Fail"


class _Handler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """One unary method of raw bytes whose behaviour the test sets."""

    def __init__(self) -> None:
        self.behaviour: Behaviour | None = None

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        if handler_call_details.method != _METHOD:
            return None

        async def call(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            assert self.behaviour is not None
            return await self.behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(call)


@pytest.fixture
async def served() -> AsyncIterator[tuple[_Handler, grpc.aio.Channel]]:
    handler = _Handler()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield handler, channel
    finally:
        await server.stop(None)


async def _fail(served: tuple[_Handler, grpc.aio.Channel], behaviour: Behaviour) -> rpc_errors.RpcError:
    handler, channel = served
    handler.behaviour = behaviour
    # Raw bytes both ways: the test is about the status, not the messages.
    call = channel.unary_unary(_METHOD, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"", timeout=10)
    return rpc_errors.from_error(caught.value)


async def test_reason_metadata_and_violations_round_trip(
    served: tuple[_Handler, grpc.aio.Channel],
) -> None:
    async def refuse(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        status = rpc_errors.to_status(
            grpc.StatusCode.FAILED_PRECONDITION,
            "insufficient credits: need 12, have 10",
            Reason.ERROR_REASON_INSUFFICIENT_CREDITS,
            {rpc_errors.REQUIRED_CREDITS: "12", rpc_errors.AVAILABLE_CREDITS: "10"},
            [rpc_errors.FieldViolation("amount", "too many")],
        )
        await context.abort_with_status(status)  # type: ignore[attr-defined]
        raise AssertionError("abort_with_status returns only by raising")

    error = await _fail(served, refuse)
    assert error == rpc_errors.RpcError(
        code=grpc.StatusCode.FAILED_PRECONDITION,
        message="insufficient credits: need 12, have 10",
        reason=Reason.ERROR_REASON_INSUFFICIENT_CREDITS,
        metadata={"required_credits": "12", "available_credits": "10"},
        violations=(rpc_errors.FieldViolation("amount", "too many"),),
    )
    assert (error.number(rpc_errors.REQUIRED_CREDITS), error.number("missing")) == (12, 0)


async def test_an_error_without_details_reads_as_a_plain_one(
    served: tuple[_Handler, grpc.aio.Channel],
) -> None:
    async def plain(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "down for a moment")
        raise AssertionError("abort returns only by raising")

    error = await _fail(served, plain)
    assert (error.code, error.message, error.reason, dict(error.metadata), error.violations) == (
        grpc.StatusCode.UNAVAILABLE,
        "down for a moment",
        Reason.ERROR_REASON_UNSPECIFIED,
        {},
        (),
    )


def test_reason_names_drop_the_prefix() -> None:
    assert rpc_errors.reason_name(Reason.ERROR_REASON_JOB_ID_REUSED) == "JOB_ID_REUSED"
