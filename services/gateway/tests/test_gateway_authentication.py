"""The auth cache and billing's revocation broadcast: every gateway replica drops a revoked token (or a
disabled account's tokens) at once, on a real nats-server, while the cache still saves RPCs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import pytest
from nats.aio.client import Client as NATS

from imagegen_common import nats_names
from imagegen_common.revocations import Revocation
from imagegen_gateway.authentication import Authenticator, Principal, listen_for_revocations
from imagegen_gateway.errors import InvalidTokenError
from imagegen_testing import eventually

ADA = Principal(account_id="acc_ada", email="ada@example.test", token_id="tok_1")
ADA_CI = Principal(account_id="acc_ada", email="ada@example.test", token_id="tok_2")
BOB = Principal(account_id="acc_bob", email="bob@example.test", token_id="tok_3")


@dataclass
class FakeBilling:
    tokens: dict[str, Principal] = field(
        default_factory=lambda: {"igk_ada": ADA, "igk_ada_ci": ADA_CI, "igk_bob": BOB}
    )
    calls: int = 0
    #: When set, every lookup waits for it: requests pile up while one is in flight.
    gate: asyncio.Event | None = None

    async def authenticate(self, token: str) -> Principal:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if token not in self.tokens:
            raise InvalidTokenError("invalid or revoked API token")
        return self.tokens[token]


async def revoked(authenticator: Authenticator, token: str) -> bool:
    try:
        await authenticator.principal(token)
    except InvalidTokenError:
        return True
    return False


async def test_the_cache_saves_a_call_and_forget_drops_only_what_was_revoked() -> None:
    billing = FakeBilling()
    auth = Authenticator(billing, cache_seconds=3600)
    for token in ("igk_ada", "igk_ada_ci", "igk_bob", "igk_ada"):
        await auth.principal(token)
    assert billing.calls == 3
    del billing.tokens["igk_ada"]
    assert auth.forget("acc_ada", "tok_1") == 1
    assert await revoked(auth, "igk_ada")
    assert await auth.principal("igk_ada_ci") == ADA_CI and billing.calls == 4  # still cached
    assert auth.forget("acc_ada") == 1  # a disabled account: all its tokens
    assert await auth.principal("igk_bob") == BOB and billing.calls == 4


async def test_a_burst_with_one_uncached_token_costs_one_lookup() -> None:
    gate = asyncio.Event()
    billing = FakeBilling(gate=gate)
    auth = Authenticator(billing, cache_seconds=3600)
    burst = [asyncio.ensure_future(auth.principal("igk_ada")) for _ in range(50)]
    refused = [asyncio.ensure_future(revoked(auth, "igk_nobody")) for _ in range(5)]
    await asyncio.sleep(0)
    burst[0].cancel()  # the caller that started the lookup goes away: the others still get it
    gate.set()
    assert await asyncio.gather(*burst[1:]) == [ADA] * 49
    assert await asyncio.gather(*refused) == [True] * 5
    assert billing.calls == 2  # one per token
    assert await auth.principal("igk_ada") == ADA and billing.calls == 2  # and it is cached


async def test_a_lookup_answered_before_a_revocation_is_not_cached() -> None:
    gate = asyncio.Event()
    billing = FakeBilling(gate=gate)
    auth = Authenticator(billing, cache_seconds=3600)
    waiting = asyncio.ensure_future(auth.principal("igk_ada"))
    await asyncio.sleep(0)
    auth.forget("acc_ada", "tok_1")  # the broadcast comes while billing's answer is on its way
    gate.set()
    assert await waiting == ADA
    del billing.tokens["igk_ada"]
    assert await revoked(auth, "igk_ada")  # asked billing again rather than trusting that answer


async def test_a_request_after_a_revocation_does_not_join_a_lookup_begun_before_it() -> None:
    gate = asyncio.Event()
    billing = FakeBilling(gate=gate)
    auth = Authenticator(billing, cache_seconds=3600)
    before = asyncio.ensure_future(auth.principal("igk_ada"))
    for _ in range(3):  # the request, then its lookup task, reach billing
        await asyncio.sleep(0)
    assert billing.calls == 1
    del billing.tokens["igk_ada"]  # revoked in billing, and the broadcast arrives
    auth.forget("acc_ada", "tok_1")
    after = asyncio.ensure_future(revoked(auth, "igk_ada"))
    await asyncio.sleep(0)
    gate.set()
    assert await after  # its own lookup, which billing refuses
    assert billing.calls == 2
    await asyncio.gather(before, return_exceptions=True)  # whatever the earlier lookup said


@pytest.mark.parametrize("revocation", [Revocation("acc_ada", "tok_1"), Revocation("acc_ada")])
async def test_every_replica_drops_a_revoked_token_at_once(
    connect: Callable[[], Awaitable[NATS]], revocation: Revocation
) -> None:
    billing = FakeBilling()
    replicas = [Authenticator(billing, cache_seconds=3600) for _ in range(2)]
    for auth in replicas:
        await listen_for_revocations(await connect(), auth)
        assert await auth.principal("igk_ada") == ADA  # cached for an hour
    del billing.tokens["igk_ada"]
    billing_nc = await connect()
    await billing_nc.publish(nats_names.REVOCATIONS_SUBJECT, b"not json")  # dropped, not fatal
    await billing_nc.publish(nats_names.REVOCATIONS_SUBJECT, revocation.encode())
    await billing_nc.flush()
    for auth in replicas:
        await eventually(partial(revoked, auth, "igk_ada"), what="the revoked token refused")
    assert await replicas[0].principal("igk_bob") == BOB
