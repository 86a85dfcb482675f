"""A replica waits cheaply: as many predictions in flight at Replicate as it runs jobs (no HTTP pool
below that), and its CPU work bounded by a pool sized to the cores."""

from __future__ import annotations

import asyncio
import threading

from imagegen_common.catalog import load_catalog
from imagegen_generator.config import GeneratorSettings
from imagegen_generator.cpu import CpuPool, usable_cores
from imagegen_generator.providers.base import GenerationRequest
from imagegen_generator.providers.http_pool import SHARD_SIZE, ShardedTransport
from imagegen_generator.providers.local import LocalProvider
from imagegen_generator.providers.replicate import ReplicateOptions, ReplicateProvider
from imagegen_testing import eventually
from imagegen_testing.fake_replicate import FakeReplicate

CATALOG = load_catalog()


def request(number: int, model: str = "nano-banana") -> GenerationRequest:
    return GenerationRequest(
        job_id=f"img_{number}", model=CATALOG.get(model), prompt="a lighthouse", width=512, height=512
    )


async def test_a_replica_holds_as_many_predictions_as_its_concurrency(fake_replicate: FakeReplicate) -> None:
    jobs = 1000
    fake_replicate.behaviour.hold = True  # every create is held open until released
    provider = ReplicateProvider(
        ReplicateOptions(
            api_token=fake_replicate.token,
            base_url=fake_replicate.url,
            wait_seconds=60,
            poll_interval_seconds=0.5,
            request_timeout_seconds=120,
            max_connections=jobs,
        )
    )
    try:
        running = [asyncio.create_task(provider.generate(request(n))) for n in range(jobs)]
        # httpx's default pool would have let 100 through and kept the rest waiting for a connection.
        await eventually(
            lambda: len(fake_replicate.creates) == jobs,
            timeout=180,
            what=f"{jobs} predictions held at once",
            detail=lambda: f"{len(fake_replicate.creates)} created",
        )
        # In small pools: no pool's bookkeeping walks a thousand connections for each request.
        assert isinstance(provider.api_transport, ShardedTransport)
        assert max(provider.api_transport.in_flight) <= SHARD_SIZE
        fake_replicate.release()
        outputs = await asyncio.gather(*running)
        assert all(output.data for output in outputs)
        # The images were downloaded through small pools too.
        assert provider.download_transport.open_connections > 0
    finally:
        await provider.aclose()


def test_the_concurrency_setting_accepts_thousands() -> None:
    settings = GeneratorSettings(generator_concurrency=5000)
    assert settings.generator_concurrency == 5000
    assert settings.generator_cpu_workers == 0  # one per core


async def test_the_cpu_pool_runs_no_more_calls_at_once_than_its_workers() -> None:
    pool = CpuPool(2)
    release = threading.Event()

    def work() -> str:
        release.wait(30)
        return threading.current_thread().name

    try:
        calls = [asyncio.create_task(pool.run(work)) for _ in range(10)]
        await eventually(
            lambda: (pool.busy, pool.waiting) == (2, 8),
            what="two calls running and eight queued",
            detail=lambda: f"busy {pool.busy}, waiting {pool.waiting}",
        )
        release.set()
        threads = set(await asyncio.gather(*calls))
    finally:
        release.set()
        pool.close()
    assert len(threads) <= 2
    assert pool.peak == 2


def test_the_cpu_pool_is_sized_to_the_cores_by_default() -> None:
    pool = CpuPool()
    assert pool.workers == usable_cores()
    pool.close()


async def test_image_work_of_providers_runs_in_the_given_pool() -> None:
    pool = CpuPool(1)
    provider = LocalProvider("png", cpu=pool)
    try:
        output = await provider.generate(request(1, model=next(iter(CATALOG.models))))
    finally:
        await provider.aclose()
        pool.close()
    assert output.data.startswith(b"\x89PNG")
    assert pool.calls == 1
