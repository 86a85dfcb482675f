"""The Authenticator with OAuth access tokens (issue 12): audience, scopes, the cache bounded by the
token's expiry; ``igk_`` API tokens unchanged (every scope)."""

from __future__ import annotations

import time

import pytest

from imagegen_gateway.authentication import (
    ALL_SCOPES,
    SCOPE_ACCOUNT,
    SCOPE_GENERATE,
    Authenticator,
    InsufficientScopeError,
    OAuthAccess,
    Principal,
    required_scope,
)
from imagegen_gateway.errors import InvalidTokenError

RESOURCE = "https://img.example/api/mcp"


class Billing:
    def __init__(self) -> None:
        self.calls = 0

    async def authenticate(self, token: str) -> Principal:
        self.calls += 1
        return Principal("acct_1", "ada@example.test", "tok_1")


class OAuth:
    def __init__(
        self, resource: str = RESOURCE, expires_in: float = 3600, scopes: frozenset[str] = ALL_SCOPES
    ) -> None:
        self.resource = resource
        self.expires_in = expires_in
        self.scopes = scopes
        self.calls = 0

    async def verify_access_token(self, token: str) -> OAuthAccess:
        self.calls += 1
        principal = Principal("acct_1", "ada@example.test", "oauth:grant_1", self.scopes, "client_1")
        return OAuthAccess(principal, self.resource, time.time() + self.expires_in)


async def test_api_tokens_carry_every_scope_and_never_ask_the_oauth_service() -> None:
    oauth = OAuth()
    authenticator = Authenticator(Billing(), 5.0, oauth=oauth, resource=RESOURCE)
    principal = await authenticator.principal("igk_abc")
    assert principal.scopes == ALL_SCOPES and oauth.calls == 0
    principal.require(SCOPE_GENERATE)


async def test_an_access_token_for_another_resource_is_refused() -> None:
    authenticator = Authenticator(
        Billing(), 5.0, oauth=OAuth(resource="https://other.example/api/mcp"), resource=RESOURCE
    )
    with pytest.raises(InvalidTokenError, match="another resource"):
        await authenticator.principal("iga_abc")


async def test_scopes_are_enforced_and_the_cache_ends_with_the_token() -> None:
    oauth = OAuth(expires_in=0.0, scopes=frozenset({SCOPE_ACCOUNT}))
    authenticator = Authenticator(Billing(), 60.0, oauth=oauth, resource=RESOURCE)
    principal = await authenticator.principal("iga_abc")
    principal.require(SCOPE_ACCOUNT)
    with pytest.raises(InsufficientScopeError):
        principal.require(SCOPE_GENERATE)
    await authenticator.principal("iga_abc")
    assert oauth.calls == 2  # expired at once: not served from the cache


def test_the_scope_each_rest_path_needs() -> None:
    assert required_scope("/api/account") == SCOPE_ACCOUNT
    assert required_scope("/api/images/generate") == SCOPE_GENERATE
    assert required_scope("/api/images/img_1") == SCOPE_GENERATE
    assert required_scope("/api/images") == SCOPE_GENERATE
    assert required_scope("/api/models") is None
