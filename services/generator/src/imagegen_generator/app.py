"""Wiring of one generator replica: the NATS connection (``imagegen_common.messaging.connect``), the
CancelJob and max-deliveries subscriptions, streams and buckets, the provider, the store, the job
consumer, and the operations server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import nats.errors
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from imagegen.jobs.v1 import jobs_pb2
from imagegen_common import nats_names
from imagegen_common.catalog import Catalog, load_catalog
from imagegen_common.ids import random_id
from imagegen_common.images import ImageStore, open_image_store
from imagegen_common.jetstream import ensure_key_value, ensure_stream
from imagegen_common.logging import configure_logging
from imagegen_common.messaging import connect, retry_forever
from imagegen_common.ops_http import serving_ops
from imagegen_common.safe_fetch import FetchPolicy, Resolver, SafeFetcher
from imagegen_common.tracing import instrument_httpx, setup_tracing
from imagegen_generator import metrics
from imagegen_generator.config import GeneratorSettings
from imagegen_generator.consumer import ConsumerOptions, JobConsumer
from imagegen_generator.cpu import CpuPool
from imagegen_generator.inputs import InputImageLoader
from imagegen_generator.messaging import KvCancelledJobs, NatsJobEvents
from imagegen_generator.providers.base import Provider
from imagegen_generator.providers.local import LocalProvider
from imagegen_generator.providers.replicate import ReplicateOptions, ReplicateProvider
from imagegen_generator.worker import JobRunner, RunnerOptions

log = logging.getLogger(__name__)


def make_provider(settings: GeneratorSettings, cpu: CpuPool | None = None) -> Provider:
    """Replicate when configured (or a token is set under `auto`), otherwise the local drawer."""
    if settings.uses_replicate:
        assert settings.replicate_api_token is not None  # checked by the settings
        return ReplicateProvider(
            ReplicateOptions(
                api_token=settings.replicate_api_token.get_secret_value(),
                base_url=settings.replicate_base_url,
                # A create held past the drain would end the process before its id is known, and the
                # prediction of a job handed back to NATS could not be cancelled.
                wait_seconds=max(
                    1,
                    min(
                        settings.replicate_wait_seconds, math.floor(settings.generator_drain_timeout_seconds)
                    ),
                ),
                poll_interval_seconds=settings.replicate_poll_interval_seconds,
                max_retries=settings.replicate_max_retries,
                retry_initial_seconds=settings.replicate_retry_initial_seconds,
                retry_max_seconds=settings.replicate_retry_max_seconds,
                request_timeout_seconds=settings.replicate_request_timeout_seconds,
                output_max_bytes=settings.provider_output_max_bytes,
                max_connections=settings.generator_concurrency,
            ),
            cpu=cpu,
        )
    return LocalProvider(
        settings.image_format,
        instant=settings.local_provider_instant,
        webp_quality=settings.webp_quality,
        cpu=cpu,
    )


@dataclass(slots=True)
class Generator:
    """A running replica (what `running_generator` yields)."""

    settings: GeneratorSettings
    nc: Client
    consumer: JobConsumer
    store: ImageStore
    provider: Provider

    async def ready(self) -> dict[str, bool]:
        checks = {"nats": self.nc.is_connected, "stream": False, "consumer": False}
        if checks["nats"]:
            js = self.nc.jetstream()
            with contextlib.suppress(Exception):
                await js.stream_info(nats_names.JOBS_STREAM)
                checks["stream"] = True
            with contextlib.suppress(Exception):
                await js.consumer_info(nats_names.JOBS_STREAM, nats_names.GENERATOR_CONSUMER, timeout=2.0)
                checks["consumer"] = True
        return checks


@contextlib.asynccontextmanager
async def running_generator(
    settings: GeneratorSettings,
    *,
    catalog: Catalog | None = None,
    provider: Provider | None = None,
    resolver: Resolver | None = None,
    fetch_transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[Generator]:
    """One replica, pulling jobs for the duration of the block; on exit it drains like on SIGTERM.

    ``provider``, ``resolver`` and ``fetch_transport`` replace the configured ones (tests).
    """
    catalog = catalog or load_catalog(settings.catalog_path)
    cpu = CpuPool(settings.generator_cpu_workers)
    provider = provider or make_provider(settings, cpu)
    nc = await connect(
        settings.nats_url,
        name=nats_names.GENERATOR_CLIENT,
        connect_timeout_seconds=settings.nats_connect_timeout_seconds,
        user=settings.nats_user,
        password=settings.nats_password,
    )
    events = NatsJobEvents(nc, known_models=frozenset(catalog.models))
    consumer_ref: list[JobConsumer] = []

    subscriptions = await _subscribe_control(nc, consumer_ref)
    try:
        js = nc.jetstream()
        replicas = settings.nats_stream_replicas

        async def ensure_streams() -> KeyValue:
            await ensure_stream(js, nats_names.jobs_stream_config(replicas))
            await ensure_stream(js, nats_names.events_stream_config(replicas))
            return await ensure_key_value(js, nats_names.cancelled_jobs_kv_config(replicas))

        # JetStream may not be ready yet (a cluster electing its leader, say): keep trying.
        cancelled = KvCancelledJobs(await retry_forever(ensure_streams, what="creating the streams"))
        async with open_image_store(settings, nc, replicas=replicas) as store:
            fetcher = SafeFetcher(
                FetchPolicy.from_settings(settings), resolver=resolver, transport=fetch_transport
            )
            runner = JobRunner(
                catalog=catalog,
                provider=provider,
                store=store,
                inputs=InputImageLoader(fetcher, store, settings.public_base_url, cpu),
                events=events,
                cancelled_jobs=cancelled,
                options=RunnerOptions(
                    public_base_url=settings.public_base_url,
                    image_format=settings.image_format,
                    webp_quality=settings.webp_quality,
                    retry_delay_seconds=settings.generator_retry_delay_seconds,
                ),
                cpu=cpu,
            )
            consumer = JobConsumer(
                js,
                runner,
                events,
                ConsumerOptions(
                    concurrency=settings.generator_concurrency,
                    ack_wait_seconds=settings.generator_ack_wait_seconds,
                    max_deliver=settings.generator_max_deliver,
                    fetch_timeout_seconds=settings.generator_fetch_timeout_seconds,
                ),
            )
            consumer_ref.append(consumer)
            await consumer.start()
            poller = asyncio.create_task(_poll_pending(consumer, settings.generator_pending_poll_seconds))
            registry = await ensure_key_value(js, nats_names.generators_kv_config(replicas))
            announcer = asyncio.create_task(_announce(registry, provider))
            log.info(
                "generator started",
                extra={"provider": provider.name, "concurrency": settings.generator_concurrency},
            )
            try:
                yield Generator(settings, nc, consumer, store, provider)
            finally:
                poller.cancel()
                announcer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await announcer
                await consumer.stop(settings.generator_drain_timeout_seconds)
    finally:
        await provider.aclose()
        cpu.close()
        for subscription in subscriptions:
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()
        await _close(nc)


async def _subscribe_control(nc: Client, consumer_ref: list[JobConsumer]) -> list[Subscription]:
    """CancelJob (to every replica) and the jobs consumer's max-deliveries advisory (to one)."""

    async def on_cancel(message: Msg) -> None:
        try:
            request = jobs_pb2.CancelJob.FromString(message.data)
        except DecodeError:
            log.warning("dropping a message that is not a CancelJob")
            return
        if consumer_ref and consumer_ref[0].cancel(request.job_id):
            log.info(
                "cancelling a running job", extra={"job_id": request.job_id, "reason": request.reason[:200]}
            )

    async def on_max_deliveries(message: Msg) -> None:
        if not consumer_ref:
            return
        try:
            await consumer_ref[0].on_max_deliveries(message.data)
        except Exception:
            # NATS away, say: the job stays queued until its max age; billing's reaper frees its credits.
            log.exception("a job that ran out of deliveries could not be failed")

    return [
        await nc.subscribe(nats_names.CANCEL_SUBJECT, cb=on_cancel),
        # A queue group: exactly one replica turns an exhausted job into its failed outcome.
        await nc.subscribe(
            nats_names.MAX_DELIVERIES_ADVISORY, queue=nats_names.GENERATOR_CONSUMER, cb=on_max_deliveries
        ),
    ]


async def _close(nc: Client) -> None:
    """Drains the connection (what was published is sent); closes it when NATS is away, so that the
    client stops reconnecting."""
    if nc.is_connected:
        try:
            await nc.drain()
            return
        except (nats.errors.Error, TimeoutError):
            pass
    await nc.close()


async def _announce(registry: KeyValue, provider: Provider) -> None:
    """Tells the gateways, through a KV entry that expires unless refreshed, that this replica is
    alive and which provider it uses (``list_models`` reports it)."""
    key = random_id("generator", 8)
    entry = json.dumps({"provider": provider.name}).encode()
    interval = nats_names.GENERATOR_ANNOUNCE_TTL.total_seconds() / 3
    try:
        while True:
            try:
                await registry.put(key, entry)
            except Exception:  # NATS away for a moment: the next round tries again
                log.debug("could not announce the replica", exc_info=True)
            await asyncio.sleep(interval)
    finally:
        with contextlib.suppress(Exception):
            await registry.delete(key)


async def _poll_pending(consumer: JobConsumer, interval: float) -> None:
    while True:
        try:
            metrics.CONSUMER_PENDING.set(await consumer.pending())
        except Exception:  # a metric is not worth a crash; readiness reports NATS trouble
            log.debug("consumer info unavailable", exc_info=True)
        await asyncio.sleep(interval)


async def serve(settings: GeneratorSettings) -> int:
    """Runs one replica until SIGTERM or SIGINT; returns the process exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    current: list[Generator] = []

    async def readiness() -> dict[str, bool]:
        return await current[0].ready() if current else {"started": False}

    host, port = settings.ops_host_port
    async with serving_ops(host, port, readiness), running_generator(settings) as generator:
        current.append(generator)
        await stop.wait()
        log.info("stopping: no new jobs, finishing those in flight")
        current.clear()
    log.info("generator stopped")
    return 0


def main(settings: GeneratorSettings) -> int:
    configure_logging("generator", settings.log_level, settings.log_format)
    if setup_tracing("generator"):
        instrument_httpx()  # calls to Replicate, input images
    return asyncio.run(serve(settings))
