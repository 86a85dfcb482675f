"""The gateway's long-lived parts (connections, clients, the generation flow), built once at start-up."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NATS

from imagegen_common.images import ImageStore, open_image_store
from imagegen_gateway.auth import Authenticator
from imagegen_gateway.billing_client import BillingClient
from imagegen_gateway.catalog import ModelCatalog
from imagegen_gateway.config import GatewaySettings
from imagegen_gateway.generation import Generations
from imagegen_gateway.jobs import JobBus
from imagegen_gateway.mcp_tools import ImagegenTools, build_server
from imagegen_gateway.mcp_transport import McpEndpoint
from imagegen_gateway.providers import ProviderRegistry

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    """Everything the routes use."""

    settings: GatewaySettings
    billing: BillingClient
    nc: NATS
    bus: JobBus
    images: ImageStore
    catalog: ModelCatalog
    providers: ProviderRegistry
    authenticator: Authenticator
    generations: Generations
    mcp: McpEndpoint


async def _connect_nats(settings: GatewaySettings) -> NATS:
    return await nats.connect(
        servers=[url.strip() for url in settings.nats_url.split(",")],
        name="imagegen-gateway",
        connect_timeout=settings.nats_connect_timeout_seconds,
        max_reconnect_attempts=-1,  # keep trying for as long as we run; readiness reports the outage
        reconnect_time_wait=1,
    )


@contextlib.asynccontextmanager
async def open_gateway(settings: GatewaySettings, version: str) -> AsyncIterator[Gateway]:
    billing = BillingClient(settings.billing_address, settings.billing_timeout_seconds)
    nc = await _connect_nats(settings)
    try:
        bus = JobBus(nc, settings.nats_stream_replicas)
        await bus.start()
        catalog = ModelCatalog(billing)
        providers = ProviderRegistry(nc.jetstream(), settings.nats_stream_replicas)
        authenticator = Authenticator(billing, settings.auth_cache_seconds)
        generations = Generations(
            billing=billing,
            bus=bus,
            catalog=catalog,
            job_timeout=settings.job_timeout_seconds,
            reservation_grace=settings.reservation_grace_seconds,
            poll_interval=settings.progress_interval_seconds,
        )
        mcp = McpEndpoint(
            build_server(ImagegenTools(generations, catalog, providers), version),
            authenticator,
            settings.origin_allow_list,
        )
        async with (
            open_image_store(settings, nc, replicas=settings.nats_stream_replicas) as images,
            mcp.run(),
        ):
            yield Gateway(
                settings, billing, nc, bus, images, catalog, providers, authenticator, generations, mcp
            )
        await bus.close()
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
        await billing.close()
