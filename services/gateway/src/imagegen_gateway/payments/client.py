"""The gateway's client of billing's PaymentsService: one channel, opened on first use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import grpc

from imagegen.payments.v1 import payments_service_pb2_grpc

if TYPE_CHECKING:
    PaymentsStub = payments_service_pb2_grpc.PaymentsServiceAsyncStub

T = TypeVar("T")


class PaymentsClient:
    def __init__(self, address: str, timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._stub: PaymentsStub | None = None

    @property
    def stub(self) -> PaymentsStub:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.address)
            self._stub = payments_service_pb2_grpc.PaymentsServiceStub(self._channel)
        return self._stub

    async def call(self, method: Callable[[PaymentsStub], Callable[..., Awaitable[T]]], request: object) -> T:
        """``await client.call(lambda s: s.GetPurchase, request)`` with the deadline; raises AioRpcError."""
        return await method(self.stub)(request, timeout=self.timeout)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = self._stub = None
