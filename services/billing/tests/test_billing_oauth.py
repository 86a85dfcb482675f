"""The OAuthService through a real gRPC server, on SQLite and PostgreSQL: clients, remembered consent,
one-time codes bound to PKCE, redirect URI and resource, rotating refresh tokens (reuse revokes the
grant), verification, revocation and the account's connected apps."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from sqlalchemy import update

from imagegen.admin.v1 import admin_service_pb2 as admin_pb
from imagegen.admin.v1 import admin_service_pb2_grpc
from imagegen.oauth.v1 import oauth_service_pb2 as pb
from imagegen.oauth.v1 import oauth_service_pb2_grpc
from imagegen.portal.v1 import portal_service_pb2 as portal_pb
from imagegen.portal.v1 import portal_service_pb2_grpc
from imagegen_billing.models import oauth_tokens
from imagegen_billing.server import BillingServer
from imagegen_billing.store import now
from imagegen_testing.billing_callers import service_channel

if TYPE_CHECKING:
    OAuthStub = oauth_service_pb2_grpc.OAuthServiceAsyncStub

RESOURCE = "https://imagegen.example/api/mcp"
REDIRECT = "http://127.0.0.1:33418/callback"
VERIFIER = "v" * 64
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).decode().rstrip("=")
SCOPES = ["account:read", "images:generate"]


class Env:
    def __init__(self, server: BillingServer, channel: grpc.aio.Channel) -> None:
        self.server = server
        self.oauth: OAuthStub = oauth_service_pb2_grpc.OAuthServiceStub(channel)
        self.portal = portal_service_pb2_grpc.PortalServiceStub(channel)
        self.admin = admin_service_pb2_grpc.AdminServiceStub(channel)
        self.operator = [("authorization", f"Bearer {server.settings.admin_token.get_secret_value()}")]

    async def session(self, email: str) -> str:
        await self.admin.CreateAccount(
            admin_pb.CreateAccountRequest(email=email, credits=5), metadata=self.operator
        )
        link = await self.portal.CreateLoginLink(
            portal_pb.CreateLoginLinkRequest(account=email), metadata=self.operator
        )
        signed = await self.portal.CompleteEmailSignIn(
            portal_pb.CompleteEmailSignInRequest(link_token=link.link_token)
        )
        return signed.session_token

    async def client(self) -> str:
        answer = await self.oauth.RegisterClient(
            pb.RegisterClientRequest(kind=pb.CLIENT_KIND_DYNAMIC, client_name="Test app", metadata_json="{}")
        )
        return answer.client.client_id

    async def code(self, session: str, client_id: str, scopes: list[str] | None = None) -> str:
        answer = await self.oauth.CreateAuthorizationCode(
            pb.CreateAuthorizationCodeRequest(
                session_token=session,
                client_id=client_id,
                redirect_uri=REDIRECT,
                code_challenge=CHALLENGE,
                resource=RESOURCE,
                scopes=scopes or SCOPES,
            )
        )
        return answer.code

    async def exchange(self, code: str, client: str, **overrides: str) -> pb.TokenSet:
        request = pb.ExchangeAuthorizationCodeRequest(
            code=code, client_id=client, redirect_uri=REDIRECT, code_verifier=VERIFIER, resource=RESOURCE
        )
        for key, value in overrides.items():
            setattr(request, key, value)
        return (await self.oauth.ExchangeAuthorizationCode(request)).tokens


async def code_of(call: Awaitable[Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code()


@pytest.fixture
async def env(database_url: str, make_settings: Any, start_billing: Any) -> AsyncIterator[Env]:
    server = await start_billing(make_settings(database_url))
    async with service_channel(server.settings) as channel:
        yield Env(server, channel)


async def test_a_code_gives_tokens_once_and_remembers_consent(env: Env) -> None:
    session = await env.session("ada@example.test")
    client_id = await env.client()
    consent = pb.GetConsentRequest(session_token=session, client_id=client_id, scopes=SCOPES)
    assert not (await env.oauth.GetConsent(consent)).granted
    code = await env.code(session, client_id)
    assert code.startswith("igc_")
    info = await env.oauth.GetAuthorizationCode(pb.GetAuthorizationCodeRequest(code=code))
    assert (info.client_id, info.redirect_uri, info.code_challenge, info.resource) == (
        client_id,
        REDIRECT,
        CHALLENGE,
        RESOURCE,
    )
    assert (await env.oauth.GetConsent(consent)).granted
    tokens = await env.exchange(code, client_id)
    assert tokens.access_token.startswith("iga_") and tokens.refresh_token.startswith("igr_")
    who = await env.oauth.VerifyAccessToken(pb.VerifyAccessTokenRequest(access_token=tokens.access_token))
    assert who.email == "ada@example.test" and list(who.scopes) == SCOPES and who.resource == RESOURCE
    assert who.client_id == client_id
    # used once: a second exchange is refused and takes back what the first gave
    assert await code_of(env.exchange(code, client_id)) == grpc.StatusCode.FAILED_PRECONDITION
    assert (
        await code_of(
            env.oauth.VerifyAccessToken(pb.VerifyAccessTokenRequest(access_token=tokens.access_token))
        )
        == grpc.StatusCode.NOT_FOUND
    )


@pytest.mark.parametrize(
    "override",
    [
        {"code_verifier": "w" * 64},
        {"code_verifier": ""},
        {"redirect_uri": "http://127.0.0.1:33418/other"},
        {"resource": "https://elsewhere.example/api/mcp"},
        {"client_id": "igcl_someoneelse"},
    ],
)
async def test_a_code_is_bound_to_its_verifier_redirect_resource_and_client(
    env: Env, override: dict[str, str]
) -> None:
    session = await env.session("bo@example.test")
    client_id = await env.client()
    code = await env.code(session, client_id)
    assert await code_of(env.exchange(code, client_id, **override)) == grpc.StatusCode.FAILED_PRECONDITION
    # the refusal did not use the code up
    assert (await env.exchange(code, client_id)).access_token


async def test_refresh_rotates_and_reuse_revokes_the_grant(env: Env) -> None:
    session = await env.session("cy@example.test")
    client_id = await env.client()
    first = await env.exchange(await env.code(session, client_id), client_id)
    refresh = pb.ExchangeRefreshTokenRequest(refresh_token=first.refresh_token, client_id=client_id)
    escalate = pb.ExchangeRefreshTokenRequest(
        refresh_token=first.refresh_token, client_id=client_id, scopes=["images:generate", "admin"]
    )
    assert await code_of(env.oauth.ExchangeRefreshToken(escalate)) == grpc.StatusCode.INVALID_ARGUMENT
    second = (await env.oauth.ExchangeRefreshToken(refresh)).tokens
    assert second.refresh_token != first.refresh_token and second.access_token != first.access_token
    narrowed = (
        await env.oauth.ExchangeRefreshToken(
            pb.ExchangeRefreshTokenRequest(
                refresh_token=second.refresh_token, client_id=client_id, scopes=["images:generate"]
            )
        )
    ).tokens
    assert list(narrowed.scopes) == ["images:generate"]
    live = pb.VerifyAccessTokenRequest(access_token=narrowed.access_token)
    assert (await env.oauth.VerifyAccessToken(live)).scopes == ["images:generate"]
    # the first refresh token again: the grant and every token of it end
    assert await code_of(env.oauth.ExchangeRefreshToken(refresh)) == grpc.StatusCode.FAILED_PRECONDITION
    assert await code_of(env.oauth.VerifyAccessToken(live)) == grpc.StatusCode.NOT_FOUND
    again = pb.ExchangeRefreshTokenRequest(refresh_token=narrowed.refresh_token, client_id=client_id)
    assert await code_of(env.oauth.ExchangeRefreshToken(again)) == grpc.StatusCode.FAILED_PRECONDITION
    assert not (await env.oauth.ListGrants(pb.ListGrantsRequest(session_token=session))).grants


async def test_expired_access_tokens_are_refused(env: Env) -> None:
    session = await env.session("di@example.test")
    client_id = await env.client()
    tokens = await env.exchange(await env.code(session, client_id), client_id)
    async with env.server.db.write() as conn:
        await conn.execute(update(oauth_tokens).values(expire_time=now() - timedelta(seconds=1)))
    verify = pb.VerifyAccessTokenRequest(access_token=tokens.access_token)
    assert await code_of(env.oauth.VerifyAccessToken(verify)) == grpc.StatusCode.NOT_FOUND


async def test_revocation_and_connected_apps(env: Env) -> None:
    session = await env.session("ed@example.test")
    other = await env.session("fi@example.test")
    client_id = await env.client()
    tokens = await env.exchange(await env.code(session, client_id), client_id)
    verify = pb.VerifyAccessTokenRequest(access_token=tokens.access_token)
    await env.oauth.VerifyAccessToken(verify)
    grants = (await env.oauth.ListGrants(pb.ListGrantsRequest(session_token=session))).grants
    assert [(g.client_name, list(g.scopes)) for g in grants] == [("Test app", SCOPES)]
    assert grants[0].HasField("last_used_time")
    assert not (await env.oauth.ListGrants(pb.ListGrantsRequest(session_token=other))).grants
    foreign = pb.RevokeGrantRequest(session_token=other, grant_id=grants[0].id)
    assert await code_of(env.oauth.RevokeGrant(foreign)) == grpc.StatusCode.NOT_FOUND
    # another client's revocation changes nothing (RFC 7009: answered fine all the same)
    await env.oauth.RevokeToken(pb.RevokeTokenRequest(token=tokens.access_token, client_id="igcl_other"))
    await env.oauth.VerifyAccessToken(verify)
    await env.oauth.RevokeToken(pb.RevokeTokenRequest(token=tokens.refresh_token, client_id=client_id))
    assert await code_of(env.oauth.VerifyAccessToken(verify)) == grpc.StatusCode.NOT_FOUND
    # and the owner revoking from Connected apps
    tokens = await env.exchange(await env.code(session, client_id), client_id)
    grant_id = (await env.oauth.ListGrants(pb.ListGrantsRequest(session_token=session))).grants[0].id
    await env.oauth.RevokeGrant(pb.RevokeGrantRequest(session_token=session, grant_id=grant_id))
    verify = pb.VerifyAccessTokenRequest(access_token=tokens.access_token)
    assert await code_of(env.oauth.VerifyAccessToken(verify)) == grpc.StatusCode.NOT_FOUND


async def test_operator_clients_need_the_admin_token_and_get_a_hashed_secret(env: Env) -> None:
    request = pb.RegisterClientRequest(kind=pb.CLIENT_KIND_OPERATOR, client_name="Ops", metadata_json="{}")
    assert await code_of(env.oauth.RegisterClient(request)) == grpc.StatusCode.UNAUTHENTICATED
    answer = await env.oauth.RegisterClient(request, metadata=env.operator)
    assert answer.client_secret.startswith("igcs_")
    stored = (await env.oauth.GetClient(pb.GetClientRequest(client_id=answer.client.client_id))).client
    assert stored.client_secret_sha256 == hashlib.sha256(answer.client_secret.encode()).hexdigest()
    unknown = pb.GetClientRequest(client_id="igcl_nobody")
    assert await code_of(env.oauth.GetClient(unknown)) == grpc.StatusCode.NOT_FOUND


async def test_codes_need_a_session_a_challenge_a_resource_and_known_scopes(env: Env) -> None:
    session = await env.session("gu@example.test")
    client_id = await env.client()
    base: dict[str, Any] = {
        "session_token": session,
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "code_challenge": CHALLENGE,
        "resource": RESOURCE,
        "scopes": SCOPES,
    }
    for change, code in (
        ({"session_token": "igs_nope"}, grpc.StatusCode.UNAUTHENTICATED),
        ({"code_challenge": ""}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"resource": ""}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"scopes": ["admin"]}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"client_id": "igcl_nobody"}, grpc.StatusCode.NOT_FOUND),
    ):
        request = pb.CreateAuthorizationCodeRequest(**{**base, **change})
        assert await code_of(env.oauth.CreateAuthorizationCode(request)) == code, change


async def test_the_admin_cli_registers_a_confidential_client(env: Env) -> None:
    import asyncio
    import json

    from typer.testing import CliRunner

    from imagegen_billing.admin_cli import app as admin_app

    options = ["--billing", env.server.settings.billing_listen, "--admin-token"]
    options.append(env.server.settings.admin_token.get_secret_value())
    args = ["oauth-client", "create", "--name", "Ops app", "--redirect-uri", "https://app.example/cb"]

    def invoke(*extra: str) -> Any:
        return CliRunner().invoke(
            admin_app, [*options, "--json", *args, *extra], env={"IMAGEGEN_ADMIN_TOKEN": ""}
        )

    result = await asyncio.to_thread(invoke)
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)
    assert created["client_secret"].startswith("igcs_") and created["name"] == "Ops app"
    stored = (await env.oauth.GetClient(pb.GetClientRequest(client_id=created["client_id"]))).client
    assert stored.kind == pb.CLIENT_KIND_OPERATOR
    assert stored.client_secret_sha256 == hashlib.sha256(created["client_secret"].encode()).hexdigest()
    assert json.loads(stored.metadata_json)["redirect_uris"] == ["https://app.example/cb"]
    refused = await asyncio.to_thread(invoke, "--redirect-uri", "http://evil.example/cb")
    assert refused.exit_code == 2 and "http://evil.example/cb" in refused.output


async def test_long_expired_codes_and_tokens_are_purged_by_the_next_authorization(env: Env) -> None:
    from sqlalchemy import func, select

    from imagegen_billing.models import oauth_codes

    session = await env.session("ha@example.test")
    client_id = await env.client()
    await env.exchange(await env.code(session, client_id), client_id)
    await env.code(session, client_id)  # unused, still live
    async with env.server.db.write() as conn:
        await conn.execute(update(oauth_tokens).values(expire_time=now() - timedelta(days=2)))
        await conn.execute(update(oauth_codes).values(expire_time=now() - timedelta(days=2)))
    await env.code(session, client_id)
    async with env.server.db.read() as conn:
        assert (await conn.execute(select(func.count()).select_from(oauth_tokens))).scalar_one() == 0
        assert (await conn.execute(select(func.count()).select_from(oauth_codes))).scalar_one() == 1
