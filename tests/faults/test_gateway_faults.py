"""Gateway replicas: one killed mid-wait leaves an image its client paid for but never saw, which
``GET /api/images`` lists and an idempotency-key repeat on another replica returns; a revoked token
is refused at once on every replica, however long their auth caches are."""

from __future__ import annotations

import asyncio
import secrets
from functools import partial

import grpc
import httpx
import pytest

from imagegen.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from imagegen_testing import eventually
from imagegen_testing.fake_replicate import FakeReplicate
from imagegen_testing.faults import add_gateway, check_books, generate, in_thread, kill, restart
from imagegen_testing.stack import RunningStack

pytestmark = pytest.mark.slow  # starts service processes: `-m "not slow"` skips it


async def test_an_image_paid_for_on_a_gateway_that_died_is_listed_and_returned_by_another(
    stack: RunningStack, fake: FakeReplicate
) -> None:
    other = await in_thread(add_gateway, stack, f"gateway-{secrets.token_hex(3)}")
    account = stack.create_account(credits=100)
    before = len(fake.creates)
    first = asyncio.ensure_future(generate(stack.gateway_url, account, key="retry-me"))
    await eventually(lambda: len(fake.creates) > before, what="the job with the provider")
    await in_thread(kill, stack, "gateway")
    try:
        lost = await first
    finally:
        await in_thread(restart, stack, "gateway")
    assert lost.ok is None, lost  # the client saw no answer at all

    again = await generate(other, account, key="retry-me")
    assert again.ok, again
    assert again.job_id == lost.job_id and len(fake.creates) == before + 1  # the same image, made once
    headers = {"Authorization": f"Bearer {account.token}"}
    async with httpx.AsyncClient(timeout=30) as client:
        listed = (await client.get(f"{other}/api/images", headers=headers)).json()["images"]
    [image] = [i for i in listed if i["id"] == again.job_id]
    assert (image["status_name"], image["url"]) == ("completed", again.image_url)
    check_books(stack, account, [again], other)
    assert stack.credits(account.account_id) == 98  # charged once


async def test_a_revoked_token_is_refused_at_once_by_every_gateway(stack: RunningStack) -> None:
    other = await in_thread(add_gateway, stack, f"gateway-{secrets.token_hex(3)}")
    account = stack.create_account(credits=10)
    headers = {"Authorization": f"Bearer {account.token}"}
    async with httpx.AsyncClient(timeout=30) as client:
        for gateway in (stack.gateway_url, other):  # both replicas now trust the token for an hour
            assert (await client.get(f"{gateway}/api/account", headers=headers)).status_code == 200
        [token] = stack.account(account.account_id).tokens
        async with grpc.aio.insecure_channel(stack.billing_address) as channel:
            await admin_service_pb2_grpc.AdminServiceStub(channel).RevokeToken(
                admin_service_pb2.RevokeTokenRequest(token_id=token.id),
                metadata=(("authorization", f"Bearer {stack.admin_token}"),),
                timeout=10,
            )

        async def refused(gateway: str) -> bool:
            return (await client.get(f"{gateway}/api/account", headers=headers)).status_code == 401

        for gateway in (other, stack.gateway_url):
            await eventually(partial(refused, gateway), what="the revoked token refused")
