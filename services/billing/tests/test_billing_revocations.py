"""Billing broadcasts a revoked token on NATS before RevokeToken answers, so that every gateway can drop
it from its auth cache at once; without NATS the revocation still happens (the cache is the bound)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import pytest
from nats.aio.client import Client

from imagegen.admin.v1 import admin_service_pb2 as admin_pb
from imagegen.admin.v1 import admin_service_pb2_grpc
from imagegen.portal.v1 import portal_service_pb2 as portal_pb
from imagegen.portal.v1 import portal_service_pb2_grpc
from imagegen_billing.config import BillingSettings
from imagegen_billing.revocations import RevocationPublisher
from imagegen_billing.server import BillingServer
from imagegen_common import nats_names
from imagegen_common.revocations import Revocation
from imagegen_testing.billing_callers import service_channel
from imagegen_testing.nats_server import NatsServer

SettingsFactory = Callable[..., BillingSettings]
ServerFactory = Callable[[BillingSettings], Awaitable[BillingServer]]


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


async def test_a_revoked_token_is_broadcast_before_the_call_returns(
    nats_server: NatsServer,
    nc: Client,
    sqlite_url: str,
    make_settings: SettingsFactory,
    start_billing: ServerFactory,
) -> None:
    server = await start_billing(
        make_settings(sqlite_url, billing_settlement_enabled=True, nats_url=nats_server.url)
    )
    assert server.settlement is not None
    await asyncio.wait_for(server.settlement.started.wait(), timeout=30)
    account, token, _ = await server.accounts.create("ada@example.test", 10)
    heard = await nc.subscribe(nats_names.REVOCATIONS_SUBJECT)
    await nc.flush()

    async with service_channel(server.settings) as channel:
        admin = admin_service_pb2_grpc.AdminServiceStub(channel)
        metadata = [("authorization", f"Bearer {server.settings.admin_token.get_secret_value()}")]
        await admin.RevokeToken(admin_pb.RevokeTokenRequest(token_id=token.id), metadata=metadata)

    message = await heard.next_msg(timeout=5)
    assert Revocation.decode(message.data) == Revocation(account_id=account.id, token_id=token.id)
    assert token.id.encode() in message.data and b"igk_" not in message.data  # ids, never a secret


async def test_without_nats_a_revocation_is_not_broadcast_and_does_not_fail() -> None:
    assert not await RevocationPublisher(lambda: None).publish(Revocation("acc_1", "tok_1"))


@pytest.mark.parametrize("data", [b"", b"{}", b"[]", b'{"account_id": 3}', b'{"account_id": ""}', b"\xff"])
def test_a_malformed_revocation_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a revocation"):
        Revocation.decode(data)


async def test_the_portal_broadcasts_a_token_it_revokes_and_an_account_it_disables(
    nats_server: NatsServer,
    nc: Client,
    sqlite_url: str,
    make_settings: SettingsFactory,
    start_billing: ServerFactory,
) -> None:
    server = await start_billing(
        make_settings(sqlite_url, billing_settlement_enabled=True, nats_url=nats_server.url)
    )
    assert server.settlement is not None
    await asyncio.wait_for(server.settlement.started.wait(), timeout=30)
    ada, ada_token, _ = await server.accounts.create("ada@example.test", 10)
    root, _, _ = await server.accounts.create("root@example.test", 0)
    heard = await nc.subscribe(nats_names.REVOCATIONS_SUBJECT)
    await nc.flush()
    operator = [("authorization", f"Bearer {server.settings.admin_token.get_secret_value()}")]

    async with service_channel(server.settings) as channel:
        portal = portal_service_pb2_grpc.PortalServiceStub(channel)

        async def session_of(email: str) -> str:
            started = await portal.StartEmailSignIn(
                portal_pb.StartEmailSignInRequest(email=email, client_address="192.0.2.7")
            )
            done = await portal.CompleteEmailSignIn(
                portal_pb.CompleteEmailSignInRequest(link_token=started.link_token)
            )
            return str(done.session_token)

        await portal.SetAccountRole(
            portal_pb.SetAccountRoleRequest(account=root.email, role=portal_pb.ROLE_ADMIN), metadata=operator
        )
        await portal.RevokeToken(
            portal_pb.RevokeTokenRequest(session_token=await session_of(ada.email), token_id=ada_token.id)
        )
        assert Revocation.decode((await heard.next_msg(timeout=5)).data) == Revocation(ada.id, ada_token.id)

        await portal.AdminSetAccountDisabled(
            portal_pb.AdminSetAccountDisabledRequest(
                session_token=await session_of(root.email), account=ada.email, disabled=True
            )
        )
        # the account alone: every gateway drops all of its tokens
        assert Revocation.decode((await heard.next_msg(timeout=5)).data) == Revocation(ada.id)
