"""The gateway's client of billing's OAuthService: deadlines, and errors the OAuth endpoints understand."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import grpc

from imagegen.oauth.v1 import oauth_service_pb2 as pb
from imagegen.oauth.v1 import oauth_service_pb2_grpc
from imagegen_common.service_auth import Caller, CallerCredentials
from imagegen_gateway.authentication import OAuthAccess, Principal
from imagegen_gateway.errors import InvalidTokenError, ServiceUnavailableError

if TYPE_CHECKING:
    OAuthStub = oauth_service_pb2_grpc.OAuthServiceAsyncStub

T = TypeVar("T")
INVALID_ACCESS_TOKEN = "the access token is invalid, expired or revoked"


class OAuthCallError(Exception):
    """Billing refused an OAuth call; ``code`` is the gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class OAuthBilling:
    """One gRPC channel to billing's OAuthService, opened on first use (in the server's event loop)."""

    def __init__(self, address: str, timeout: float, secret: str = "") -> None:
        self.address = address
        self.timeout = timeout
        #: The gateway's identity at billing (``service_auth``), sent with every call.
        self._credentials = CallerCredentials(Caller.GATEWAY, secret)
        self._channel: grpc.aio.Channel | None = None
        self._stub: OAuthStub | None = None
        self._lock = asyncio.Lock()

    @property
    def stub(self) -> OAuthStub:
        if self._stub is None:
            # grpc-stubs want a cast: their interceptor type is a placeholder
            self._channel = grpc.aio.insecure_channel(
                self.address, interceptors=cast("Any", [self._credentials])
            )
            self._stub = oauth_service_pb2_grpc.OAuthServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = self._stub = None

    async def call(
        self,
        method: Callable[[OAuthStub], Callable[..., Awaitable[T]]],
        request: object,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> T:
        """``await oauth.call(lambda s: s.GetClient, request)`` with the deadline; OAuthCallError."""
        try:
            return await method(self.stub)(request, timeout=self.timeout, metadata=metadata or None)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ServiceUnavailableError(
                    "the service is unavailable for a moment; please try again"
                ) from exc
            raise OAuthCallError(exc.code(), exc.details() or exc.code().name) from exc

    async def verify_access_token(self, token: str) -> OAuthAccess:
        try:
            who = await self.call(
                lambda s: s.VerifyAccessToken, pb.VerifyAccessTokenRequest(access_token=token)
            )
        except OAuthCallError as exc:
            raise InvalidTokenError(INVALID_ACCESS_TOKEN) from exc
        principal = Principal(
            account_id=who.account_id,
            email=who.email,
            token_id=f"oauth:{who.grant_id}",
            scopes=frozenset(who.scopes),
            client_id=who.client_id,
        )
        return OAuthAccess(principal, who.resource, float(who.expire_time.seconds))
