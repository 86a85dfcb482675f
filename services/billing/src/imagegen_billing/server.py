"""Billing's process: the gRPC server (billing, admin, health, reflection), the reaper, the settlement
consumer and the operations port, started and stopped in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from datetime import timedelta

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from imagegen.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from imagegen.billing.v1 import billing_service_pb2, billing_service_pb2_grpc
from imagegen.oauth.v1 import oauth_service_pb2_grpc  # oauth
from imagegen.payments.v1 import payments_service_pb2_grpc  # payments
from imagegen.portal.v1 import portal_service_pb2_grpc  # portal
from imagegen_billing import migrate
from imagegen_billing.accounts import Accounts
from imagegen_billing.admin_servicer import AdminServicer
from imagegen_billing.config import BillingSettings, caller_secret_problems
from imagegen_billing.db import Database
from imagegen_billing.interceptors import AdminAuthInterceptor, CallerAuthInterceptor, ObservingInterceptor
from imagegen_billing.ledger import Ledger
from imagegen_billing.oauth_servicer import OAUTH_SERVICE, make_oauth_servicer  # oauth
from imagegen_billing.payments_servicer import PAYMENTS_SERVICE, make_payments_servicer  # payments
from imagegen_billing.portal_servicer import PORTAL_SERVICE, make_portal_servicer  # portal
from imagegen_billing.reaper import run_reaper
from imagegen_billing.revocations import RevocationPublisher
from imagegen_billing.servicer import BillingServicer
from imagegen_billing.settlement import SettlementConsumer
from imagegen_billing.webhooks import Webhooks
from imagegen_common import tracing
from imagegen_common.catalog import load_catalog
from imagegen_common.ops_http import serving_ops
from imagegen_common.settings import split_host_port

log = logging.getLogger(__name__)

BILLING_SERVICE = billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name
ADMIN_SERVICE = admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
#: How often the database is probed for the health status.
HEALTH_PROBE_SECONDS = 5.0


def pending_rpc_options(limit: int) -> list[tuple[str, int]]:
    """gRPC server options that let ``limit`` calls wait to be started. grpc-core sheds calls the
    application has not taken yet (CANCELLED) at random past 1,000 and all of them past 3,000; a burst
    of reservations is what the ledger's group commit is made for, so they queue instead."""
    return [
        ("grpc.server.max_pending_requests", limit),
        ("grpc.server.max_pending_requests_hard_limit", limit),
    ]


class BillingServer:
    """One billing server. ``start()`` returns once it listens; ``stop()`` drains and closes it."""

    def __init__(self, settings: BillingSettings) -> None:
        self.settings = settings
        self.database_url = settings.resolved_database_url()
        self.db = Database.from_url(
            self.database_url,
            pool_size=settings.database_pool_size,
            timeout_seconds=settings.database_timeout_seconds,
        )
        self.accounts = Accounts(self.db)
        self.ledger = Ledger(self.db, timedelta(seconds=settings.billing_reservation_ttl_seconds))
        self.webhooks = Webhooks(self.db)
        self.health = health_aio.HealthServicer()
        self.settlement = (
            SettlementConsumer(
                self.ledger,
                settings.nats_url,
                stream_replicas=settings.nats_stream_replicas,
                connect_timeout_seconds=settings.nats_connect_timeout_seconds,
                graceful_timeout_seconds=settings.billing_shutdown_grace_seconds,
                nats_user=settings.nats_user,
                nats_password=settings.nats_password,
            )
            if settings.billing_settlement_enabled
            else None
        )
        self.revocations = RevocationPublisher(
            lambda: self.settlement.connection if self.settlement is not None else None
        )
        self.grpc_server: grpc.aio.Server | None = None
        self.port = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self.settings.database_auto_migrate:
            await migrate.upgrade_async(self.database_url)
        catalog = load_catalog(self.settings.catalog_path)
        for problem in caller_secret_problems(self.settings):
            log.warning(problem)
        server = grpc.aio.server(
            interceptors=[
                ObservingInterceptor(),
                AdminAuthInterceptor(self.settings.admin_token.get_secret_value()),
                CallerAuthInterceptor(self.settings.caller_secrets()),
            ],
            # gRPC binds with SO_REUSEPORT by default: a second billing on the same port would start
            # "fine" and take half the calls. A taken port must be an error instead.
            options=[("grpc.so_reuseport", 0), *pending_rpc_options(self.settings.billing_max_pending_rpcs)],
        )
        billing_service_pb2_grpc.add_BillingServiceServicer_to_server(
            BillingServicer(self.accounts, self.ledger, catalog, self.webhooks), server
        )
        admin_service_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(self.accounts, self.ledger, self.webhooks, self.revocations), server
        )
        portal_servicer = make_portal_servicer(
            self.settings, self.db, self.accounts, self.ledger, self.revocations
        )
        portal_service_pb2_grpc.add_PortalServiceServicer_to_server(portal_servicer, server)
        payments_service_pb2_grpc.add_PaymentsServiceServicer_to_server(
            make_payments_servicer(self.settings, self.db), server
        )
        oauth_service_pb2_grpc.add_OAuthServiceServicer_to_server(
            make_oauth_servicer(
                self.db, portal_servicer.portal, self.settings.admin_token.get_secret_value()
            ),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                BILLING_SERVICE,
                ADMIN_SERVICE,
                PORTAL_SERVICE,  # portal
                PAYMENTS_SERVICE,  # payments
                OAUTH_SERVICE,  # oauth
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        for service in ("", BILLING_SERVICE, ADMIN_SERVICE, PORTAL_SERVICE):  # PORTAL_SERVICE: portal
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(PAYMENTS_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)  # payments
        await self.health.set(OAUTH_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)  # oauth
        self.port = server.add_insecure_port(self.settings.billing_listen)
        if not self.port:
            raise OSError(f"cannot listen on {self.settings.billing_listen}")
        await server.start()
        self.grpc_server = server
        self._tasks = [
            # Background queries are no generation: untraced, or each would be a trace of its own.
            asyncio.create_task(tracing.untraced(self._watch_database()), name="health"),
            asyncio.create_task(
                tracing.untraced(run_reaper(self.ledger, self.settings.billing_reaper_interval_seconds)),
                name="reaper",
            ),
        ]
        if self.settlement is not None:
            self.settlement.start()
        log.info(
            "billing listening",
            extra={
                "listen": self.settings.billing_listen,
                "database": self.db.engine.dialect.name,
                "settlement": self.settlement is not None,
            },
        )

    async def _watch_database(self) -> None:
        serving: bool | None = None
        while True:
            ok = await self.db.ping(self.settings.database_timeout_seconds)
            if ok != serving:
                serving = ok
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for service in ("", BILLING_SERVICE, ADMIN_SERVICE, PORTAL_SERVICE):  # PORTAL_SERVICE: portal
                    await self.health.set(service, status)
                await self.health.set(PAYMENTS_SERVICE, status)  # payments
                await self.health.set(OAUTH_SERVICE, status)  # oauth
                log.log(
                    logging.INFO if ok else logging.WARNING,
                    "database reachable" if ok else "database unreachable",
                )
            await asyncio.sleep(HEALTH_PROBE_SECONDS)

    async def readiness(self) -> dict[str, bool]:
        return {"database": await self.db.ping(self.settings.database_timeout_seconds)}

    async def stop(self) -> None:
        """NOT_SERVING, then stop taking outcomes, finish RPCs in flight (up to the grace period), stop the
        reaper and close the database."""
        await self.health.enter_graceful_shutdown()
        if self.settlement is not None:
            try:
                await self.settlement.stop()
            except Exception:  # whatever NATS does, the RPCs in flight still get their grace period
                log.exception("settlement consumer did not stop cleanly")
        if self.grpc_server is not None:
            await self.grpc_server.stop(self.settings.billing_shutdown_grace_seconds)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.ledger.aclose()
        await self.db.close()


async def serve(settings: BillingSettings) -> None:
    """Runs billing until SIGTERM or SIGINT, then shuts it down gracefully."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    server = BillingServer(settings)
    tracing.instrument_grpc_server()  # before the server is built: it adds its interceptor
    tracing.instrument_sqlalchemy(*server.db.sync_engines)  # SQLite's writer thread has its own
    host, port = split_host_port(settings.billing_ops_listen)
    try:
        async with serving_ops(host, port, server.readiness):
            try:
                await server.start()
                await stopping.wait()
                log.info("billing stopping")
            finally:
                await server.stop()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("billing stopped")
