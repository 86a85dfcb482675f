"""The gateway's client of billing's PaymentsService: one channel, opened on first use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import grpc

from imagegen.payments.v1 import payments_service_pb2_grpc
from imagegen_common.service_auth import Caller, CallerCredentials

if TYPE_CHECKING:
    PaymentsStub = payments_service_pb2_grpc.PaymentsServiceAsyncStub

T = TypeVar("T")


class PaymentsClient:
    def __init__(self, address: str, timeout: float, secret: str = "") -> None:
        self.address = address
        self.timeout = timeout
        #: The gateway's identity at billing (``service_auth``), sent with every call.
        self._credentials = CallerCredentials(Caller.GATEWAY, secret)
        self._channel: grpc.aio.Channel | None = None
        self._stub: PaymentsStub | None = None

    @property
    def stub(self) -> PaymentsStub:
        if self._stub is None:
            # grpc-stubs want a cast: their interceptor type is a placeholder
            self._channel = grpc.aio.insecure_channel(
                self.address, interceptors=cast("Any", [self._credentials])
            )
            self._stub = payments_service_pb2_grpc.PaymentsServiceStub(self._channel)
        return self._stub

    async def call(self, method: Callable[[PaymentsStub], Callable[..., Awaitable[T]]], request: object) -> T:
        """``await client.call(lambda s: s.GetPurchase, request)`` with the deadline; raises AioRpcError."""
        return await method(self.stub)(request, timeout=self.timeout)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = self._stub = None
