"""The SDK's ``OAuthAuthorizationServerProvider`` on billing's OAuthService, with what the SDK leaves
out: Client ID Metadata Documents (an https ``client_id`` is fetched through the SSRF-safe fetcher,
validated and cached in billing), our redirect URI rules, the required RFC 8707 resource, and the
consent page in front of every code."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import grpc
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    AuthorizeError,
    RefreshToken,
    RegistrationError,
    TokenError,
)
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from pydantic import AnyUrl, ValidationError

from imagegen.oauth.v1 import oauth_service_pb2 as pb
from imagegen_common.redirects import redirect_uri_allowed
from imagegen_common.safe_fetch import FetchError, FetchPolicy, SafeFetcher
from imagegen_gateway.authentication import ALL_SCOPES, SCOPE_ACCOUNT, SCOPE_GENERATE
from imagegen_gateway.oauth.client import OAuthBilling, OAuthCallError

CONSENT_PATH = "/oauth/consent"
SCOPES_SUPPORTED = [SCOPE_GENERATE, SCOPE_ACCOUNT]
#: A metadata document is fetched again after this long (it is cached in billing meanwhile).
DOCUMENT_MAX_AGE_SECONDS = 3600
DOCUMENT_MAX_BYTES = 16 * 1024


def is_metadata_document_id(client_id: str) -> bool:
    return client_id.startswith(("https://", "http://"))


@dataclass(frozen=True, slots=True)
class PendingAuthorization:
    """An authorization request the SDK's handler validated, on its way to the consent page."""

    client_id: str
    redirect_uri: str
    code_challenge: str
    resource: str
    scopes: tuple[str, ...]
    state: str

    def query(self) -> str:
        return urlencode(
            {
                "client_id": self.client_id,
                "redirect_uri": self.redirect_uri,
                "code_challenge": self.code_challenge,
                "resource": self.resource,
                "scope": " ".join(self.scopes),
                "state": self.state,
            }
        )


class BillingOAuthProvider:
    """``OAuthAuthorizationServerProvider[AuthorizationCode, RefreshToken, AccessToken]`` on billing."""

    def __init__(
        self, billing: OAuthBilling, resource: str, document_hosts: frozenset[str] = frozenset()
    ) -> None:
        self.billing = billing
        #: The canonical MCP resource, the one audience of our tokens.
        self.resource = resource
        self.document_hosts = document_hosts
        self.fetcher = SafeFetcher(
            FetchPolicy(
                max_bytes=DOCUMENT_MAX_BYTES,
                timeout_seconds=5.0,
                max_redirects=0,
                allowed_hosts=document_hosts,
            )
        )

    # Clients

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        stored: pb.OAuthClient | None
        try:
            stored = (
                await self.billing.call(lambda s: s.GetClient, pb.GetClientRequest(client_id=client_id))
            ).client
        except OAuthCallError as exc:
            if exc.code != grpc.StatusCode.NOT_FOUND:
                raise
            stored = None
        if is_metadata_document_id(client_id):
            fresh = stored is not None and time.time() - stored.update_time.seconds < DOCUMENT_MAX_AGE_SECONDS
            if not fresh:
                stored = await self._fetch_document(client_id)
        if stored is None:
            return None
        return client_information(stored)

    def _document_url_allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.fragment or parts.username or parts.password or not parts.path.strip("/"):
            return False
        if parts.scheme == "https":
            return True
        netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        return parts.scheme == "http" and netloc.lower() in self.document_hosts

    async def _fetch_document(self, url: str) -> pb.OAuthClient | None:
        """Fetches, validates and stores a Client ID Metadata Document; None when it is not usable."""
        if not self._document_url_allowed(url):
            return None
        try:
            fetched = await self.fetcher.fetch(url)
            document = json.loads(fetched.data)
            metadata = OAuthClientInformationFull.model_validate(document)
        except (FetchError, ValueError, ValidationError):
            return None
        if metadata.client_id != url or not metadata.redirect_uris:
            return None
        if not all(redirect_uri_allowed(str(uri)) for uri in metadata.redirect_uris):
            return None
        if metadata.token_endpoint_auth_method not in (None, "none"):
            return None  # a document cannot carry a secret: public clients only
        metadata.token_endpoint_auth_method = "none"
        answer = await self.billing.call(
            lambda s: s.RegisterClient,
            pb.RegisterClientRequest(
                kind=pb.CLIENT_KIND_METADATA_DOCUMENT,
                client_id=url,
                client_name=metadata.client_name or urlsplit(url).hostname or "",
                metadata_json=metadata.model_dump_json(exclude_none=True),
            ),
        )
        return answer.client

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        uris = [str(uri) for uri in client_info.redirect_uris or []]
        if not uris or not all(redirect_uri_allowed(uri) for uri in uris):
            raise RegistrationError(
                "invalid_redirect_uri", "redirect URIs must be https, or http on a loopback address"
            )
        secret = client_info.client_secret or ""
        public = client_info.model_copy(update={"client_secret": None, "client_secret_expires_at": None})
        await self.billing.call(
            lambda s: s.RegisterClient,
            pb.RegisterClientRequest(
                kind=pb.CLIENT_KIND_DYNAMIC,
                client_id=client_info.client_id,
                client_name=client_info.client_name or "",
                metadata_json=public.model_dump_json(exclude_none=True),
                client_secret_sha256=sha256_hex(secret) if secret else "",
            ),
        )

    # Authorization

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        if not params.resource:
            raise AuthorizeError("invalid_request", "the resource parameter (RFC 8707) is required")
        if params.resource.rstrip("/") != self.resource:
            raise AuthorizeError("invalid_target", f"the only resource here is {self.resource}")
        scopes = tuple(params.scopes or SCOPES_SUPPORTED)
        if not set(scopes) <= ALL_SCOPES:
            raise AuthorizeError("invalid_scope", "unknown scope")
        pending = PendingAuthorization(
            client_id=client.client_id,
            redirect_uri=str(params.redirect_uri),
            code_challenge=params.code_challenge,
            resource=self.resource,
            scopes=scopes,
            state=params.state or "",
        )
        return f"{CONSENT_PATH}?{pending.query()}"

    async def load_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: str
    ) -> AuthorizationCode | None:
        try:
            info = await self.billing.call(
                lambda s: s.GetAuthorizationCode, pb.GetAuthorizationCodeRequest(code=authorization_code)
            )
        except OAuthCallError:
            return None
        return AuthorizationCode(
            code=authorization_code,
            scopes=list(info.scopes),
            expires_at=float(info.expire_time.seconds),
            client_id=info.client_id,
            code_challenge=info.code_challenge,
            redirect_uri=AnyUrl(info.redirect_uri),
            redirect_uri_provided_explicitly=True,
            resource=info.resource,
            subject=info.account_id,
        )

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: AuthorizationCode
    ) -> OAuthToken:
        raise TokenError("invalid_request", "handled by the token endpoint")  # see routes.TokenEndpoint

    async def load_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: str
    ) -> RefreshToken | None:
        try:
            info = await self.billing.call(
                lambda s: s.GetRefreshToken, pb.GetRefreshTokenRequest(refresh_token=refresh_token)
            )
        except OAuthCallError:
            return None
        return RefreshToken(
            token=refresh_token,
            client_id=info.client_id,
            scopes=list(info.scopes),
            expires_at=info.expire_time.seconds,
            resource=info.resource,
            subject=info.account_id,
        )

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: RefreshToken, scopes: list[str]
    ) -> OAuthToken:
        try:
            answer = await self.billing.call(
                lambda s: s.ExchangeRefreshToken,
                pb.ExchangeRefreshTokenRequest(
                    refresh_token=refresh_token.token, client_id=client.client_id, scopes=scopes
                ),
            )
        except OAuthCallError as exc:
            if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
                raise TokenError("invalid_scope", str(exc)) from exc
            raise TokenError(
                "invalid_grant", "the refresh token is invalid, used, expired or revoked"
            ) from exc
        return oauth_token(answer.tokens)

    async def load_access_token(self, token: str) -> AccessToken | None:
        try:
            who = await self.billing.call(
                lambda s: s.VerifyAccessToken, pb.VerifyAccessTokenRequest(access_token=token)
            )
        except OAuthCallError:
            return None
        return AccessToken(
            token=token,
            client_id=who.client_id,
            scopes=list(who.scopes),
            expires_at=who.expire_time.seconds,
            resource=who.resource,
            subject=who.account_id,
        )

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        await self.billing.call(
            lambda s: s.RevokeToken, pb.RevokeTokenRequest(token=token.token, client_id=token.client_id)
        )


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def client_information(stored: pb.OAuthClient) -> OAuthClientInformationFull:
    """The SDK's view of a stored client; ``client_secret`` holds the secret's SHA-256 (see
    ``routes.HashedSecretAuthenticator``), never the secret."""
    data = json.loads(stored.metadata_json or "{}")
    data["client_id"] = stored.client_id
    data["client_name"] = stored.client_name
    data["client_secret"] = stored.client_secret_sha256 or None
    # A client that names no scopes (a metadata document usually does not) may ask for any of ours.
    data["scope"] = data.get("scope") or " ".join(SCOPES_SUPPORTED)
    if not stored.client_secret_sha256:
        data["token_endpoint_auth_method"] = "none"
    elif data.get("token_endpoint_auth_method") in (None, "none"):
        data["token_endpoint_auth_method"] = "client_secret_post"
    return OAuthClientInformationFull.model_validate(data)


def oauth_token(tokens: pb.TokenSet) -> OAuthToken:
    return OAuthToken(
        access_token=tokens.access_token,
        token_type="Bearer",
        expires_in=max(int(tokens.access_expire_time.seconds - time.time()), 0),
        scope=" ".join(tokens.scopes),
        refresh_token=tokens.refresh_token,
    )
