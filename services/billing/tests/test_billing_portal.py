"""The portal's PortalService through a real gRPC server, on SQLite and PostgreSQL: sign-in links,
sessions, sign-up policies, rate limits, the account's own tokens, roles and disabled accounts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from sqlalchemy import update

from imagegen.admin.v1 import admin_service_pb2 as admin_pb
from imagegen.admin.v1 import admin_service_pb2_grpc
from imagegen.billing.v1 import billing_service_pb2 as billing_pb
from imagegen.billing.v1 import billing_service_pb2_grpc, resources_pb2
from imagegen.portal.v1 import portal_service_pb2 as pb
from imagegen.portal.v1 import portal_service_pb2_grpc
from imagegen_billing.db import Database
from imagegen_billing.models import login_links, sessions
from imagegen_billing.people import SignupPolicy, SignupRules
from imagegen_billing.server import BillingServer
from imagegen_billing.store import now
from imagegen_common.redirects import safe_next_path
from imagegen_testing.billing_callers import service_channel

if TYPE_CHECKING:
    PortalStub = portal_service_pb2_grpc.PortalServiceAsyncStub
    AdminStub = admin_service_pb2_grpc.AdminServiceAsyncStub
    BillingStub = billing_service_pb2_grpc.BillingServiceAsyncStub


class Stubs:
    def __init__(self, server: BillingServer, channel: grpc.aio.Channel) -> None:
        self.server = server
        self.portal: PortalStub = portal_service_pb2_grpc.PortalServiceStub(channel)
        self.admin: AdminStub = admin_service_pb2_grpc.AdminServiceStub(channel)
        self.billing: BillingStub = billing_service_pb2_grpc.BillingServiceStub(channel)
        self.operator = [("authorization", f"Bearer {server.settings.admin_token.get_secret_value()}")]

    async def create_account(self, email: str, credits: int = 0) -> admin_pb.CreateAccountResponse:
        return await self.admin.CreateAccount(
            admin_pb.CreateAccountRequest(email=email, credits=credits), metadata=self.operator
        )

    async def sign_in(self, email: str, address: str = "192.0.2.1") -> pb.CompleteEmailSignInResponse:
        started = await self.portal.StartEmailSignIn(
            pb.StartEmailSignInRequest(email=email, client_address=address)
        )
        assert started.link_token
        return await self.portal.CompleteEmailSignIn(
            pb.CompleteEmailSignInRequest(link_token=started.link_token)
        )


async def code_of(call: Awaitable[Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code()


@pytest.fixture
async def stubs(
    database_url: str, make_settings: Any, start_billing: Any, request: pytest.FixtureRequest
) -> AsyncIterator[Stubs]:
    overrides = getattr(request, "param", {})
    server = await start_billing(make_settings(database_url, **overrides))
    async with service_channel(server.settings) as channel:
        yield Stubs(server, channel)


async def test_an_email_link_signs_in_once_and_sign_out_ends_the_session(stubs: Stubs) -> None:
    await stubs.create_account("Ada@Example.test", credits=7)
    started = await stubs.portal.StartEmailSignIn(
        pb.StartEmailSignInRequest(
            email=" ADA@example.test", client_address="192.0.2.1", next_path="/account/usage"
        )
    )
    assert started.link_token.startswith("igl_") and started.email == "ada@example.test"
    assert (
        timedelta(minutes=14)
        < started.expire_time.ToDatetime() - now().replace(tzinfo=None)
        <= timedelta(minutes=15)
    )
    done = await stubs.portal.CompleteEmailSignIn(
        pb.CompleteEmailSignInRequest(link_token=started.link_token)
    )
    assert done.session_token.startswith("igs_") and done.next_path == "/account/usage"
    assert done.session.account.account.email == "ada@example.test"
    assert done.session.account.account.credits == 7
    assert done.session.account.role == pb.ROLE_USER
    # A link works once.
    again = stubs.portal.CompleteEmailSignIn(pb.CompleteEmailSignInRequest(link_token=started.link_token))
    assert await code_of(again) == grpc.StatusCode.UNAUTHENTICATED
    got = await stubs.portal.GetSession(pb.GetSessionRequest(session_token=done.session_token))
    assert got.session.id == done.session.id
    await stubs.portal.EndSession(pb.EndSessionRequest(session_token=done.session_token))
    ended = stubs.portal.GetSession(pb.GetSessionRequest(session_token=done.session_token))
    assert await code_of(ended) == grpc.StatusCode.UNAUTHENTICATED


async def test_secrets_are_stored_hashed(stubs: Stubs) -> None:
    await stubs.create_account("ada@example.test")
    done = await stubs.sign_in("ada@example.test")
    db = stubs.server.db
    async with db.read() as conn:
        hashes = [row.token_hash for row in (await conn.execute(sessions.select())).all()]
        hashes += [row.token_hash for row in (await conn.execute(login_links.select())).all()]
    assert hashes and all(done.session_token not in h and not h.startswith("ig") for h in hashes)


async def test_an_expired_link_and_an_idle_session_are_refused(stubs: Stubs) -> None:
    await stubs.create_account("ada@example.test")
    started = await stubs.portal.StartEmailSignIn(pb.StartEmailSignInRequest(email="ada@example.test"))
    db: Database = stubs.server.db
    async with db.write() as conn:
        await conn.execute(update(login_links).values(expire_time=now() - timedelta(seconds=1)))
    expired = stubs.portal.CompleteEmailSignIn(pb.CompleteEmailSignInRequest(link_token=started.link_token))
    assert await code_of(expired) == grpc.StatusCode.UNAUTHENTICATED
    done = await stubs.sign_in("ada@example.test")
    async with db.write() as conn:
        await conn.execute(update(sessions).values(last_seen_time=now() - timedelta(days=8)))
    idle = stubs.portal.GetSession(pb.GetSessionRequest(session_token=done.session_token))
    assert await code_of(idle) == grpc.StatusCode.UNAUTHENTICATED


async def test_invite_policy_makes_no_link_for_strangers(stubs: Stubs) -> None:
    started = await stubs.portal.StartEmailSignIn(pb.StartEmailSignInRequest(email="eve@example.test"))
    assert started.link_token == ""


@pytest.mark.parametrize(
    "stubs", [{"signup_policy": "open", "signup_credits": 25}], indirect=True, ids=["open"]
)
async def test_open_sign_up_makes_the_account_with_its_credits_in_the_ledger(stubs: Stubs) -> None:
    done = await stubs.sign_in("new@example.test")
    assert done.session.account.account.credits == 25
    ledger = await stubs.admin.ListLedgerEntries(
        admin_pb.ListLedgerEntriesRequest(account="new@example.test"), metadata=stubs.operator
    )
    assert [(e.kind, e.amount, e.note) for e in ledger.entries] == [
        (resources_pb2.LedgerEntry.KIND_GRANT, 25, "sign-up credits")
    ]


def test_the_domains_policy_allows_only_its_domains() -> None:
    rules = SignupRules(SignupPolicy.DOMAINS, frozenset({"example.test"}), 0)
    assert rules.allows("ada@example.test")
    assert not rules.allows("ada@evil.test")
    assert not rules.allows("ada@sub.example.test")
    assert not SignupRules(SignupPolicy.INVITE, frozenset(), 0).allows("ada@example.test")


@pytest.mark.parametrize(
    ("path", "safe"),
    [
        ("/account/tokens", "/account/tokens"),
        ("/account/usage?page=2", "/account/usage?page=2"),
        ("//evil.test/x", ""),
        ("/\\evil.test", ""),
        ("https://evil.test/", ""),
        ("javascript:alert(1)", ""),
        ("/ok\r\nSet-Cookie: x", ""),
        ("", ""),
    ],
)
def test_next_paths_stay_on_our_origin(path: str, safe: str) -> None:
    assert safe_next_path(path) == safe


async def test_sign_in_requests_are_rate_limited_per_email_and_per_address(stubs: Stubs) -> None:
    for _ in range(5):
        await stubs.portal.StartEmailSignIn(
            pb.StartEmailSignInRequest(email="x@example.test", client_address="a")
        )
    limited = stubs.portal.StartEmailSignIn(
        pb.StartEmailSignInRequest(email="x@example.test", client_address="b")
    )
    assert await code_of(limited) == grpc.StatusCode.RESOURCE_EXHAUSTED
    for i in range(20):
        await stubs.portal.StartEmailSignIn(
            pb.StartEmailSignInRequest(email=f"p{i}@example.test", client_address="c")
        )
    by_address = stubs.portal.StartEmailSignIn(
        pb.StartEmailSignInRequest(email="other@example.test", client_address="c")
    )
    assert await code_of(by_address) == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_session_manages_only_its_own_tokens(stubs: Stubs) -> None:
    await stubs.create_account("ada@example.test")
    await stubs.create_account("bob@example.test")
    ada = (await stubs.sign_in("ada@example.test")).session_token
    bob = (await stubs.sign_in("bob@example.test")).session_token
    created = await stubs.portal.CreateToken(pb.CreateTokenRequest(session_token=ada, label="laptop"))
    assert created.token_secret.startswith("igk_") and created.token.label == "laptop"
    authed = await stubs.billing.Authenticate(billing_pb.AuthenticateRequest(token=created.token_secret))
    assert authed.account.email == "ada@example.test"
    listed = await stubs.portal.ListTokens(pb.ListTokensRequest(session_token=ada))
    assert created.token.id in [t.id for t in listed.tokens]
    bobs = await stubs.portal.ListTokens(pb.ListTokensRequest(session_token=bob))
    assert created.token.id not in [t.id for t in bobs.tokens]
    foreign = stubs.portal.RevokeToken(pb.RevokeTokenRequest(session_token=bob, token_id=created.token.id))
    assert await code_of(foreign) == grpc.StatusCode.NOT_FOUND
    revoked = await stubs.portal.RevokeToken(
        pb.RevokeTokenRequest(session_token=ada, token_id=created.token.id)
    )
    assert revoked.token.HasField("revoke_time")
    refused = stubs.billing.Authenticate(billing_pb.AuthenticateRequest(token=created.token_secret))
    assert await code_of(refused) == grpc.StatusCode.UNAUTHENTICATED
    ledger = await stubs.portal.ListLedgerEntries(pb.ListLedgerEntriesRequest(session_token=ada))
    assert list(ledger.entries) == []
    nobody = stubs.portal.ListTokens(pb.ListTokensRequest(session_token="igs_nope"))
    assert await code_of(nobody) == grpc.StatusCode.UNAUTHENTICATED


async def test_admin_calls_need_the_role_and_disabling_stops_tokens_and_sessions(stubs: Stubs) -> None:
    await stubs.create_account("root@example.test")
    user = await stubs.create_account("ada@example.test", credits=3)
    root = (await stubs.sign_in("root@example.test")).session_token
    ada = (await stubs.sign_in("ada@example.test")).session_token
    denied = stubs.portal.AdminSearchAccounts(pb.AdminSearchAccountsRequest(session_token=root, query="ada"))
    assert await code_of(denied) == grpc.StatusCode.PERMISSION_DENIED
    no_operator = stubs.portal.SetAccountRole(
        pb.SetAccountRoleRequest(account="root@example.test", role=pb.ROLE_ADMIN)
    )
    assert await code_of(no_operator) == grpc.StatusCode.UNAUTHENTICATED
    made = await stubs.portal.SetAccountRole(
        pb.SetAccountRoleRequest(account="root@example.test", role=pb.ROLE_ADMIN), metadata=stubs.operator
    )
    assert made.account.role == pb.ROLE_ADMIN
    found = await stubs.portal.AdminSearchAccounts(
        pb.AdminSearchAccountsRequest(session_token=root, query="ADA")
    )
    assert [a.account.email for a in found.accounts] == ["ada@example.test"]
    granted = await stubs.portal.AdminGrantCredits(
        pb.AdminGrantCreditsRequest(session_token=root, account=user.account.id, amount=10, note="welcome")
    )
    assert granted.account.credits == 13
    detail = await stubs.portal.AdminGetAccount(
        pb.AdminGetAccountRequest(session_token=root, account=user.account.id)
    )
    assert [t.id for t in detail.tokens] == [user.token.id] and detail.entries[0].note == "welcome"
    disabled = await stubs.portal.AdminSetAccountDisabled(
        pb.AdminSetAccountDisabledRequest(session_token=root, account="ada@example.test", disabled=True)
    )
    assert disabled.account.disabled
    token = stubs.billing.Authenticate(billing_pb.AuthenticateRequest(token=user.token_secret))
    assert await code_of(token) == grpc.StatusCode.UNAUTHENTICATED
    session = stubs.portal.GetSession(pb.GetSessionRequest(session_token=ada))
    assert await code_of(session) == grpc.StatusCode.UNAUTHENTICATED
    link = await stubs.portal.StartEmailSignIn(pb.StartEmailSignInRequest(email="ada@example.test"))
    assert link.link_token == ""
    await stubs.portal.AdminSetAccountDisabled(
        pb.AdminSetAccountDisabledRequest(session_token=root, account="ada@example.test", disabled=False)
    )
    await stubs.billing.Authenticate(billing_pb.AuthenticateRequest(token=user.token_secret))


async def test_an_operator_login_link_signs_in_whatever_the_policy(stubs: Stubs) -> None:
    await stubs.create_account("ada@example.test")
    refused = stubs.portal.CreateLoginLink(pb.CreateLoginLinkRequest(account="ada@example.test"))
    assert await code_of(refused) == grpc.StatusCode.UNAUTHENTICATED
    link = await stubs.portal.CreateLoginLink(
        pb.CreateLoginLinkRequest(account="ada@example.test", next_path="//evil.test"),
        metadata=stubs.operator,
    )
    done = await stubs.portal.CompleteEmailSignIn(pb.CompleteEmailSignInRequest(link_token=link.link_token))
    assert done.session.account.account.email == "ada@example.test" and done.next_path == ""


async def test_oidc_identities_link_by_verified_email(stubs: Stubs) -> None:
    await stubs.create_account("ada@example.test")
    unverified = stubs.portal.CompleteOidcSignIn(
        pb.CompleteOidcSignInRequest(issuer="https://id.test", subject="s1", email="ada@example.test")
    )
    assert await code_of(unverified) == grpc.StatusCode.UNAUTHENTICATED
    first = await stubs.portal.CompleteOidcSignIn(
        pb.CompleteOidcSignInRequest(
            issuer="https://id.test", subject="s1", email="ada@example.test", email_verified=True
        )
    )
    assert first.session.account.account.email == "ada@example.test"
    # Later sign-ins follow the subject, even when the provider's email changed.
    later = await stubs.portal.CompleteOidcSignIn(
        pb.CompleteOidcSignInRequest(issuer="https://id.test", subject="s1", email="renamed@example.test")
    )
    assert later.session.account.account.id == first.session.account.account.id
    stranger = stubs.portal.CompleteOidcSignIn(
        pb.CompleteOidcSignInRequest(
            issuer="https://id.test", subject="s2", email="eve@example.test", email_verified=True
        )
    )
    assert await code_of(stranger) == grpc.StatusCode.UNAUTHENTICATED


async def test_get_image_needs_a_session_and_hides_what_is_not_ours(stubs: Stubs) -> None:
    await stubs.create_account("ada@example.test")
    ada = (await stubs.sign_in("ada@example.test")).session_token
    missing = stubs.portal.GetImage(pb.GetImageRequest(session_token=ada, image_id="img_nope"))
    assert await code_of(missing) == grpc.StatusCode.NOT_FOUND
    anonymous = stubs.portal.GetImage(pb.GetImageRequest(session_token="", image_id="img_nope"))
    assert await code_of(anonymous) == grpc.StatusCode.UNAUTHENTICATED


async def test_0004_upgrades_and_downgrades_a_database_with_accounts(database_url: str) -> None:
    """Accounts that other tables reference: the migration alters them in place, both ways."""
    from alembic import command

    from imagegen_billing import migrate

    await migrate.upgrade_async(database_url, "0002")
    db = Database.from_url(database_url)
    try:
        async with db.write() as conn:
            await conn.exec_driver_sql(
                "INSERT INTO accounts (id, email, credits, reserved_credits, create_time) "
                "VALUES ('acc_1', 'ada@example.test', 0, 0, '2026-01-01 00:00:00')"
            )
            await conn.exec_driver_sql(
                "INSERT INTO api_tokens (id, account_id, token_hash, prefix, label, create_time) "
                "VALUES ('tok_1', 'acc_1', 'h', 'igk_', 'x', '2026-01-01 00:00:00')"
            )
    finally:
        await db.close()
    await migrate.upgrade_async(database_url, "0004")
    db = Database.from_url(database_url)
    try:
        async with db.read() as conn:
            row = (await conn.exec_driver_sql("SELECT role, disable_time FROM accounts")).one()
        assert tuple(row) == ("user", None)
    finally:
        await db.close()
    await asyncio.to_thread(command.downgrade, migrate.alembic_config(database_url), "0002")
    db = Database.from_url(database_url)
    try:
        async with db.read() as conn:
            assert (await conn.exec_driver_sql("SELECT count(*) FROM api_tokens")).scalar() == 1
    finally:
        await db.close()


async def test_old_links_and_sessions_are_purged_by_later_sign_ins(stubs: Stubs) -> None:
    await stubs.create_account("ada@example.test")
    await stubs.sign_in("ada@example.test")
    db: Database = stubs.server.db
    async with db.write() as conn:
        await conn.execute(update(login_links).values(expire_time=now() - timedelta(days=2)))
        await conn.execute(update(sessions).values(expire_time=now() - timedelta(days=2)))
    await stubs.sign_in("ada@example.test")
    async with db.read() as conn:
        assert len((await conn.execute(login_links.select())).all()) == 1
        assert len((await conn.execute(sessions.select())).all()) == 1
