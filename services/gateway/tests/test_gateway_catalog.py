"""The gateway's catalog cache: a burst of requests that finds it stale asks billing once."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from imagegen_gateway.catalog import ModelCatalog
from imagegen_gateway.domain import ModelListing


@dataclass
class FakeBilling:
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    calls: int = 0
    fail: bool = False

    async def list_models(self) -> ModelListing:
        self.calls += 1
        await self.gate.wait()
        if self.fail:
            raise ConnectionError("billing is away")
        return ModelListing(models=(), default_model="nano-banana")


async def test_a_burst_on_a_cold_cache_fetches_once_and_a_leaving_caller_fails_no_one() -> None:
    billing = FakeBilling()
    catalog = ModelCatalog(billing)
    burst = [asyncio.ensure_future(catalog.listing()) for _ in range(30)]
    await asyncio.sleep(0)
    burst[0].cancel()
    billing.gate.set()
    listings = await asyncio.gather(*burst[1:])
    assert {listing.default_model for listing in listings} == {"nano-banana"}
    assert billing.calls == 1
    await catalog.listing()
    assert billing.calls == 1  # cached


async def test_a_failed_fetch_fails_its_waiters_and_the_next_request_tries_again() -> None:
    billing = FakeBilling(fail=True)
    catalog = ModelCatalog(billing)
    burst = [asyncio.ensure_future(catalog.listing()) for _ in range(5)]
    billing.gate.set()
    results = await asyncio.gather(*burst, return_exceptions=True)
    assert all(isinstance(result, ConnectionError) for result in results) and billing.calls == 1
    billing.fail = False
    assert (await catalog.listing()).default_model == "nano-banana" and billing.calls == 2
