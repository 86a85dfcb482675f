"""``imagegen.oauth.v1.OAuthService``: the OAuth authorization server's state, for the gateway."""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING

import grpc

from imagegen.oauth.v1 import oauth_service_pb2 as pb
from imagegen.oauth.v1 import oauth_service_pb2_grpc
from imagegen_billing import convert
from imagegen_billing.db import Database
from imagegen_billing.oauth import (
    Client,
    ClientKind,
    OAuthStore,
    TokenSet,
)
from imagegen_billing.portal import Portal

if TYPE_CHECKING:  # grpc's classes are not generic at run time
    Context = grpc.aio.ServicerContext[object, object]

log = logging.getLogger(__name__)

OAUTH_SERVICE = "imagegen.oauth.v1.OAuthService"
_KINDS = {
    ClientKind.DYNAMIC: pb.CLIENT_KIND_DYNAMIC,
    ClientKind.METADATA_DOCUMENT: pb.CLIENT_KIND_METADATA_DOCUMENT,
    ClientKind.OPERATOR: pb.CLIENT_KIND_OPERATOR,
}
_KINDS_BACK = {value: key for key, value in _KINDS.items()}


def client_message(value: Client) -> pb.OAuthClient:
    return pb.OAuthClient(
        client_id=value.client_id,
        kind=_KINDS[value.kind],
        client_name=value.client_name,
        metadata_json=value.metadata_json,
        client_secret_sha256=value.secret_hash,
        create_time=convert.timestamp(value.create_time),
        update_time=convert.timestamp(value.update_time),
    )


def token_set(value: TokenSet) -> pb.TokenSet:
    return pb.TokenSet(
        access_token=value.access_token,
        refresh_token=value.refresh_token,
        access_expire_time=convert.timestamp(value.access_expire_time),
        scopes=value.scopes,
        resource=value.resource,
    )


class OAuthServicer(oauth_service_pb2_grpc.OAuthServiceServicer):
    def __init__(self, store: OAuthStore, admin_token: str) -> None:
        self.store = store
        self._operator = f"Bearer {admin_token}".encode()

    def _is_operator(self, context: Context) -> bool:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else value
                if hmac.compare_digest(presented, self._operator):
                    return True
        return False

    async def RegisterClient(
        self, request: pb.RegisterClientRequest, context: Context
    ) -> pb.RegisterClientResponse:
        kind = _KINDS_BACK.get(request.kind)
        if kind is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "kind is required")
            raise AssertionError("abort raises")  # pragma: no cover
        if kind is ClientKind.OPERATOR and not self._is_operator(context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid admin token")
        client, secret = await self.store.register_client(
            kind,
            request.client_id,
            request.client_name,
            request.metadata_json,
            confidential=request.confidential or kind is ClientKind.OPERATOR,
            secret_hash=request.client_secret_sha256 if kind is ClientKind.DYNAMIC else "",
        )
        log.info("oauth client registered", extra={"client_kind": kind.value})
        return pb.RegisterClientResponse(client=client_message(client), client_secret=secret)

    async def GetClient(self, request: pb.GetClientRequest, context: Context) -> pb.GetClientResponse:
        return pb.GetClientResponse(client=client_message(await self.store.client(request.client_id)))

    async def GetConsent(self, request: pb.GetConsentRequest, context: Context) -> pb.GetConsentResponse:
        granted = await self.store.consent(request.session_token, request.client_id, tuple(request.scopes))
        return pb.GetConsentResponse(granted=granted)

    async def CreateAuthorizationCode(
        self, request: pb.CreateAuthorizationCodeRequest, context: Context
    ) -> pb.CreateAuthorizationCodeResponse:
        code, expire = await self.store.create_code(
            request.session_token,
            client_id=request.client_id,
            redirect_uri=request.redirect_uri,
            code_challenge=request.code_challenge,
            resource=request.resource,
            scopes=tuple(request.scopes),
        )
        return pb.CreateAuthorizationCodeResponse(code=code, expire_time=convert.timestamp(expire))

    async def GetAuthorizationCode(
        self, request: pb.GetAuthorizationCodeRequest, context: Context
    ) -> pb.GetAuthorizationCodeResponse:
        info = await self.store.code(request.code)
        return pb.GetAuthorizationCodeResponse(
            client_id=info.client_id,
            redirect_uri=info.redirect_uri,
            code_challenge=info.code_challenge,
            resource=info.resource,
            scopes=info.scopes,
            expire_time=convert.timestamp(info.expire_time),
            account_id=info.account_id,
        )

    async def ExchangeAuthorizationCode(
        self, request: pb.ExchangeAuthorizationCodeRequest, context: Context
    ) -> pb.ExchangeAuthorizationCodeResponse:
        tokens = await self.store.exchange_code(
            request.code, request.client_id, request.redirect_uri, request.code_verifier, request.resource
        )
        return pb.ExchangeAuthorizationCodeResponse(tokens=token_set(tokens))

    async def GetRefreshToken(
        self, request: pb.GetRefreshTokenRequest, context: Context
    ) -> pb.GetRefreshTokenResponse:
        info = await self.store.refresh_info(request.refresh_token)
        return pb.GetRefreshTokenResponse(
            client_id=info.client_id,
            scopes=info.scopes,
            resource=info.resource,
            account_id=info.account_id,
            expire_time=convert.timestamp(info.expire_time),
        )

    async def ExchangeRefreshToken(
        self, request: pb.ExchangeRefreshTokenRequest, context: Context
    ) -> pb.ExchangeRefreshTokenResponse:
        tokens = await self.store.exchange_refresh(
            request.refresh_token, request.client_id, tuple(request.scopes), request.resource
        )
        return pb.ExchangeRefreshTokenResponse(tokens=token_set(tokens))

    async def VerifyAccessToken(
        self, request: pb.VerifyAccessTokenRequest, context: Context
    ) -> pb.VerifyAccessTokenResponse:
        info = await self.store.verify_access(request.access_token)
        return pb.VerifyAccessTokenResponse(
            account_id=info.account_id,
            email=info.email,
            client_id=info.client_id,
            scopes=info.scopes,
            resource=info.resource,
            expire_time=convert.timestamp(info.expire_time),
            grant_id=info.grant_id,
        )

    async def RevokeToken(self, request: pb.RevokeTokenRequest, context: Context) -> pb.RevokeTokenResponse:
        await self.store.revoke_token(request.token, request.client_id)
        return pb.RevokeTokenResponse()

    async def ListGrants(self, request: pb.ListGrantsRequest, context: Context) -> pb.ListGrantsResponse:
        grants = await self.store.grants(request.session_token)
        return pb.ListGrantsResponse(
            grants=[
                pb.Grant(
                    id=grant.id,
                    client_id=grant.client_id,
                    client_name=grant.client_name,
                    scopes=grant.scopes,
                    create_time=convert.timestamp(grant.create_time),
                    last_used_time=convert.timestamp(grant.last_used_time),
                )
                for grant in grants
            ]
        )

    async def RevokeGrant(self, request: pb.RevokeGrantRequest, context: Context) -> pb.RevokeGrantResponse:
        await self.store.revoke_own_grant(request.session_token, request.grant_id)
        log.info("oauth grant revoked", extra={"by": "owner"})
        return pb.RevokeGrantResponse()


def make_oauth_servicer(db: Database, portal: Portal, admin_token: str) -> OAuthServicer:
    """The OAuth servicer on billing's database; people are known by their portal sessions."""

    async def account_of(session_token: str) -> str:
        return (await portal.session(session_token)).account.account.id

    return OAuthServicer(OAuthStore(db, account_of), admin_token)
