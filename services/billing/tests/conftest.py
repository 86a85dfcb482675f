"""Fixtures of billing's tests: migrated databases (SQLite and PostgreSQL) and real gRPC servers.

Test modules cannot import each other here (pytest's importlib mode), so helpers are fixtures too.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select

from imagegen.admin.v1 import admin_service_pb2_grpc
from imagegen.billing.v1 import billing_service_pb2_grpc
from imagegen_billing import migrate
from imagegen_billing.accounts import Accounts
from imagegen_billing.config import BillingSettings
from imagegen_billing.db import Database
from imagegen_billing.ledger import Ledger
from imagegen_billing.models import accounts, ledger_entries, reservations
from imagegen_billing.server import BillingServer
from imagegen_common.service_auth import Caller
from imagegen_testing.billing_callers import AsServices, generate_secrets, secrets_settings
from imagegen_testing.net import free_port

SettingsFactory = Callable[..., BillingSettings]
ServerFactory = Callable[[BillingSettings], Awaitable[BillingServer]]
ConsistencyCheck = Callable[[Database], Awaitable[None]]
#: Service credentials of every billing server of these tests (billing refuses calls without them).
CALLER_SECRETS = generate_secrets()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a SQLite file, or a PostgreSQL database of this test."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'billing.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'billing.db'}"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """The database, migrated to the latest schema."""
    await migrate.upgrade_async(database_url)
    database = Database.from_url(database_url)
    yield database
    await database.close()


@pytest.fixture
def accounts_repo(db: Database) -> Accounts:
    return Accounts(db)


@pytest.fixture
async def ledger(db: Database) -> AsyncIterator[Ledger]:
    ledger = Ledger(db)
    yield ledger
    await ledger.aclose()


@pytest.fixture
def check_consistent() -> ConsistencyCheck:
    """Asserts that every balance equals the sum of its ledger entries and every held total the sum of
    its held reservations."""

    async def check(db: Database) -> None:
        async with db.read() as conn:
            rows = (
                await conn.execute(select(accounts.c.id, accounts.c.credits, accounts.c.reserved_credits))
            ).all()
            for row in rows:
                total = await conn.scalar(
                    select(func.coalesce(func.sum(ledger_entries.c.amount), 0)).where(
                        ledger_entries.c.account_id == row.id
                    )
                )
                held = await conn.scalar(
                    select(func.coalesce(func.sum(reservations.c.amount), 0)).where(
                        reservations.c.account_id == row.id, reservations.c.state == "held"
                    )
                )
                assert (row.credits, row.reserved_credits) == (total, held), row.id

    return check


@pytest.fixture
def isolated_logging() -> Iterator[None]:
    """For tests that run a CLI in this process: its logging set-up is undone afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def make_settings() -> SettingsFactory:
    """Settings of a billing server on free ports: ``make_settings(database_url, **overrides)``."""

    def make(database_url: str, **overrides: Any) -> BillingSettings:
        values: dict[str, Any] = {
            "billing_listen": f"127.0.0.1:{free_port()}",
            "billing_ops_listen": f"127.0.0.1:{free_port()}",
            "database_url": database_url,
            "admin_token": "test-admin-" + secrets.token_urlsafe(24),
            "billing_settlement_enabled": False,
            "billing_shutdown_grace_seconds": 2.0,
            "log_format": "text",
            **secrets_settings(CALLER_SECRETS),
            **overrides,
        }
        return BillingSettings(**values)

    return make


@pytest.fixture
async def start_billing() -> AsyncIterator[ServerFactory]:
    """Starts billing servers in this process; they are stopped after the test."""
    started: list[BillingServer] = []

    async def start(settings: BillingSettings) -> BillingServer:
        server = BillingServer(settings)
        started.append(server)
        await server.start()
        return server

    yield start
    for server in reversed(started):
        await server.stop()


@pytest.fixture
async def billing_server(
    sqlite_url: str, make_settings: SettingsFactory, start_billing: ServerFactory
) -> BillingServer:
    """A billing gRPC server in this process, on a free port, over a SQLite file."""
    return await start_billing(make_settings(sqlite_url))


@pytest.fixture
async def channel(billing_server: BillingServer) -> AsyncIterator[grpc.aio.Channel]:
    """A channel that calls as the services do: each method with the identity that may call it."""
    async with grpc.aio.insecure_channel(
        billing_server.settings.billing_listen, interceptors=AsServices.channel_list(CALLER_SECRETS)
    ) as channel:
        yield channel


@pytest.fixture
def caller_secrets() -> dict[Caller, str]:
    """The service credentials the test servers accept."""
    return CALLER_SECRETS


@pytest.fixture
def billing_stub(channel: grpc.aio.Channel) -> billing_service_pb2_grpc.BillingServiceAsyncStub:
    return billing_service_pb2_grpc.BillingServiceStub(channel)


@pytest.fixture
def admin_stub(channel: grpc.aio.Channel) -> admin_service_pb2_grpc.AdminServiceAsyncStub:
    return admin_service_pb2_grpc.AdminServiceStub(channel)


@pytest.fixture
def admin_metadata(billing_server: BillingServer) -> list[tuple[str, str]]:
    """The metadata that authorises AdminService calls."""
    return [("authorization", f"Bearer {billing_server.settings.admin_token.get_secret_value()}")]
