"""The gateway's long-lived parts (connections, clients, the generation flow), built once at start-up."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.aio.client import Client as NATS

from imagegen_common import nats_names
from imagegen_common.images import ImageStore, open_image_store
from imagegen_common.jetstream import ensure_key_value
from imagegen_common.messaging import connect
from imagegen_common.safe_fetch import FetchPolicy, SafeFetcher
from imagegen_common.service_auth import Caller
from imagegen_gateway.authentication import Authenticator, listen_for_revocations
from imagegen_gateway.billing_client import BillingClient
from imagegen_gateway.catalog import ModelCatalog
from imagegen_gateway.config import GatewaySettings
from imagegen_gateway.generation import Generations
from imagegen_gateway.generators import GeneratorRegistry
from imagegen_gateway.idempotency import IdempotencyKeys
from imagegen_gateway.jobs import JobBus
from imagegen_gateway.mcp_server.tools import ImagegenTools, build_server
from imagegen_gateway.mcp_server.transport import McpEndpoint
from imagegen_gateway.oauth.client import OAuthBilling  # oauth
from imagegen_gateway.ratelimit import RateLimiter
from imagegen_gateway.status_watch import StatusWatch
from imagegen_gateway.webhooks.dispatcher import WebhookDispatcher
from imagegen_gateway.webhooks.sender import WebhookSender
from imagegen_gateway.webhooks.targets import WebhookTargets

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
    generators: GeneratorRegistry
    authenticator: Authenticator
    generations: Generations
    #: Billing's record of every waiting job, one batched read per poll interval (the waits' fallback).
    status_watch: StatusWatch
    mcp: McpEndpoint
    rate_limiter: RateLimiter
    idempotency: IdempotencyKeys
    webhook_targets: WebhookTargets
    webhooks: WebhookDispatcher
    #: Billing as the `webhooks` identity: the one that may read webhook settings (signing secrets).
    webhook_billing: BillingClient


async def _connect_nats(settings: GatewaySettings) -> NATS:
    # Reconnects forever: readiness reports an outage while it lasts.
    return await connect(
        settings.nats_url,
        name=nats_names.GATEWAY_CLIENT,
        connect_timeout_seconds=settings.nats_connect_timeout_seconds,
        reconnect_wait_seconds=1.0,
        user=settings.nats_user,
        password=settings.nats_password,
    )


@contextlib.asynccontextmanager
async def open_gateway(settings: GatewaySettings, version: str) -> AsyncIterator[Gateway]:
    billing = BillingClient(
        settings.billing_address,
        settings.billing_timeout_seconds,
        Caller.GATEWAY,
        settings.billing_gateway_secret,
        reserve_timeout=settings.billing_reserve_timeout_seconds,
    )
    # The webhook dispatcher is billing's `webhooks` identity: the only one that reads signing secrets.
    webhook_billing = BillingClient(
        settings.billing_address,
        settings.billing_timeout_seconds,
        Caller.WEBHOOKS,
        settings.billing_webhooks_secret,
    )
    nc = await _connect_nats(settings)
    try:
        bus = JobBus(nc, settings.nats_stream_replicas)
        await bus.start()
        catalog = ModelCatalog(billing)
        generators = GeneratorRegistry(nc.jetstream(), settings.nats_stream_replicas)
        authenticator = Authenticator(
            billing,
            settings.auth_cache_seconds,
            oauth=OAuthBilling(
                settings.billing_address,
                settings.billing_timeout_seconds,
                settings.billing_gateway_secret.get_secret_value(),
            ),
            resource=settings.public_base_url.rstrip("/") + "/api/mcp",  # the OAuth tokens' one audience
        )
        await listen_for_revocations(nc, authenticator)  # ends with the connection's drain
        status_watch = StatusWatch(billing, settings.progress_interval_seconds)
        generations = Generations(
            billing=billing,
            bus=bus,
            catalog=catalog,
            status=status_watch,
            job_timeout=settings.job_timeout_seconds,
            reservation_grace=settings.reservation_grace_seconds,
            poll_interval=settings.progress_interval_seconds,
        )
        tools = ImagegenTools(generations, catalog, generators)
        mcp = McpEndpoint(
            build_server(tools, version),
            authenticator,
            tools.in_flight,
            settings.origin_allow_list,
            settings.max_request_body_bytes,
        )
        js = nc.jetstream()
        replicas = settings.nats_stream_replicas
        rate_limiter = RateLimiter(
            await ensure_key_value(js, nats_names.rate_limits_kv_config(replicas))
            if settings.rate_limit_per_minute
            else None,
            settings.rate_limit_per_minute,
        )
        idempotency = IdempotencyKeys(await ensure_key_value(js, nats_names.idempotency_kv_config(replicas)))
        sender = WebhookSender(webhook_fetcher(settings), settings.webhook_timeout_seconds)
        webhooks = WebhookDispatcher(
            js,
            webhook_billing,
            sender,
            retry_delays=settings.webhook_retry_delays_seconds,
            concurrency=settings.webhook_concurrency,
            stream_replicas=replicas,
        )
        await webhooks.start()
        status_watch.start()
        try:
            async with (
                open_image_store(settings, nc, replicas=replicas) as images,
                mcp.run(),
            ):
                yield Gateway(
                    settings,
                    billing,
                    nc,
                    bus,
                    images,
                    catalog,
                    generators,
                    authenticator,
                    generations,
                    status_watch,
                    mcp,
                    rate_limiter=rate_limiter,
                    idempotency=idempotency,
                    webhook_targets=WebhookTargets(webhook_billing, sender, settings.auth_cache_seconds),
                    webhooks=webhooks,
                    webhook_billing=webhook_billing,
                )
        finally:
            await status_watch.stop()
            await webhooks.stop()
        await bus.close()
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
        await billing.close()
        await webhook_billing.close()


def webhook_fetcher(settings: GatewaySettings) -> SafeFetcher:
    """The SSRF guard of webhooks: input images' rules, bar the explicitly allowed ``host:port`` pairs."""
    allowed = frozenset(entry.strip().lower() for entry in settings.webhook_allowed_hosts if entry.strip())
    return SafeFetcher(
        FetchPolicy(timeout_seconds=settings.webhook_timeout_seconds, max_redirects=0, allowed_hosts=allowed)
    )
