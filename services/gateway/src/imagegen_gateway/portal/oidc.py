"""Sign-in with an OpenID Connect provider: authorization code with PKCE (S256), state and nonce.

The gateway keeps no state: the state, nonce, PKCE verifier and next path ride in a short-lived
HttpOnly cookie of the browser that started the sign-in (random secrets it alone holds), checked when
the provider sends it back. The ID token is verified with the provider's keys (issuer, audience,
nonce, expiry); billing then matches the (issuer, subject) identity, or a verified email.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

FLOW_COOKIE = "imagegen_oidc"
FLOW_SECONDS = 600
CALLBACK_PATH = "/signin/oidc/callback"
DISCOVERY_SECONDS = 3600
SCOPE = "openid email profile"


class OidcError(Exception):
    """The provider's answer cannot sign anyone in (message safe to show)."""


@dataclass(frozen=True, slots=True)
class Flow:
    """What the browser carries between the redirect to the provider and the way back."""

    state: str
    nonce: str
    verifier: str
    next_path: str

    def encode(self) -> str:
        raw = json.dumps([self.state, self.nonce, self.verifier, self.next_path]).encode()
        return base64.urlsafe_b64encode(raw).decode()

    @classmethod
    def decode(cls, value: str) -> Flow | None:
        try:
            state, nonce, verifier, next_path = json.loads(base64.urlsafe_b64decode(value.encode()))
        except (ValueError, TypeError):
            return None
        if not all(isinstance(v, str) for v in (state, nonce, verifier, next_path)):
            return None
        return cls(state, nonce, verifier, next_path)

    @classmethod
    def new(cls, next_path: str) -> Flow:
        return cls(
            state=secrets.token_urlsafe(24),
            nonce=secrets.token_urlsafe(24),
            verifier=secrets.token_urlsafe(48),
            next_path=next_path,
        )


@dataclass(frozen=True, slots=True)
class Identity:
    issuer: str
    subject: str
    email: str
    email_verified: bool


class OidcProvider:
    """One provider: its discovery document and keys (cached), and the two legs of the flow."""

    def __init__(
        self, issuer: str, client_id: str, client_secret: str, redirect_uri: str, timeout: float = 10.0
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.timeout = timeout
        self._metadata: dict[str, Any] | None = None
        self._metadata_time = 0.0

    def _client(self) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.client_id,
            client_secret=self.client_secret or None,
            scope=SCOPE,
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
            timeout=self.timeout,
        )

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is None or time.monotonic() - self._metadata_time > DISCOVERY_SECONDS:
            async with httpx.AsyncClient(timeout=self.timeout) as http:
                reply = await http.get(f"{self.issuer}/.well-known/openid-configuration")
                reply.raise_for_status()
                metadata: dict[str, Any] = reply.json()
            if metadata.get("issuer", "").rstrip("/") != self.issuer:
                raise OidcError("the provider's discovery document names another issuer")
            self._metadata, self._metadata_time = metadata, time.monotonic()
        return self._metadata

    async def authorization_url(self, flow: Flow) -> str:
        metadata = await self.metadata()
        async with self._client() as client:
            url, _ = client.create_authorization_url(
                metadata["authorization_endpoint"],
                state=flow.state,
                code_verifier=flow.verifier,
                nonce=flow.nonce,
            )
        return str(url)

    async def identity(self, flow: Flow, code: str) -> Identity:
        """Trades the code for tokens and verifies the ID token; raises OidcError."""
        metadata = await self.metadata()
        try:
            async with self._client() as client:
                token = await client.fetch_token(
                    metadata["token_endpoint"], code=code, code_verifier=flow.verifier
                )
                claims = await self._verified_claims(metadata, str(token.get("id_token", "")), flow.nonce)
                if "email" not in claims and metadata.get("userinfo_endpoint"):
                    reply = await client.get(metadata["userinfo_endpoint"])
                    reply.raise_for_status()
                    info = reply.json()
                    if info.get("sub") == claims["sub"]:
                        claims = {**info, **claims}
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise OidcError("the provider did not complete the sign-in") from exc
        return Identity(
            issuer=self.issuer,
            subject=str(claims["sub"]),
            email=str(claims.get("email", "")),
            email_verified=claims.get("email_verified") is True,
        )

    async def _verified_claims(self, metadata: dict[str, Any], id_token: str, nonce: str) -> dict[str, Any]:
        if not id_token:
            raise OidcError("the provider sent no ID token")
        async with httpx.AsyncClient(timeout=self.timeout) as http:
            reply = await http.get(metadata["jwks_uri"])
            reply.raise_for_status()
            keys = KeySet.import_key_set(reply.json())
        try:
            token = jwt.decode(id_token, keys)
            jwt.JWTClaimsRegistry(
                leeway=60,
                # The discovery document's spelling (trailing slash and all), checked against ours.
                iss={"essential": True, "value": metadata["issuer"]},
                aud={"essential": True, "value": self.client_id},
                sub={"essential": True},
                exp={"essential": True},
                nonce={"essential": True, "value": nonce},
            ).validate(token.claims)
        except (JoseError, ValueError) as exc:
            raise OidcError("the provider's ID token is not valid") from exc
        return dict(token.claims)
