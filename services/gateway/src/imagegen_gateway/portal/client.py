"""The portal's client of billing's PortalService: deadlines and errors the pages understand."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import grpc

from imagegen.portal.v1 import portal_service_pb2 as pb
from imagegen.portal.v1 import portal_service_pb2_grpc
from imagegen_common.service_auth import Caller, CallerCredentials

if TYPE_CHECKING:
    PortalStub = portal_service_pb2_grpc.PortalServiceAsyncStub

T = TypeVar("T")


class PortalError(Exception):
    """Billing refused or failed a portal call."""


class NotSignedIn(PortalError):
    """No live session (or a used/expired link): the person must sign in."""


class RateLimited(PortalError):
    pass


class Forbidden(PortalError):
    pass


class NotFound(PortalError):
    pass


class BadInput(PortalError):
    pass


class Unavailable(PortalError):
    pass


_ERRORS: dict[grpc.StatusCode, type[PortalError]] = {
    grpc.StatusCode.UNAUTHENTICATED: NotSignedIn,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimited,
    grpc.StatusCode.PERMISSION_DENIED: Forbidden,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: BadInput,
    grpc.StatusCode.FAILED_PRECONDITION: BadInput,
    grpc.StatusCode.ALREADY_EXISTS: BadInput,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
}


class PortalClient:
    """One gRPC channel to billing, opened on first use (inside the server's event loop)."""

    def __init__(self, address: str, timeout: float, secret: str = "") -> None:
        self.address = address
        self.timeout = timeout
        #: The gateway's identity at billing (``service_auth``), sent with every call.
        self._credentials = CallerCredentials(Caller.GATEWAY, secret)
        self._channel: grpc.aio.Channel | None = None
        self._stub: PortalStub | None = None
        self._lock = asyncio.Lock()

    @property
    def stub(self) -> PortalStub:
        if self._stub is None:
            # grpc-stubs want a cast: their interceptor type is a placeholder
            self._channel = grpc.aio.insecure_channel(
                self.address, interceptors=cast("Any", [self._credentials])
            )
            self._stub = portal_service_pb2_grpc.PortalServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = self._stub = None

    async def call(self, method: Callable[[PortalStub], Callable[..., Awaitable[T]]], request: object) -> T:
        """``await client.call(lambda s: s.GetSession, request)`` with the deadline and error mapping."""
        try:
            return await method(self.stub)(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            kind = _ERRORS.get(exc.code(), PortalError)
            raise kind(exc.details() or exc.code().name) from exc

    async def session(self, token: str) -> pb.Session:
        if not token:
            raise NotSignedIn("no session")
        reply = await self.call(lambda s: s.GetSession, pb.GetSessionRequest(session_token=token))
        return reply.session
