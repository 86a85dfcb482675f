"""Alembic environment of billing: runs the migrations on the async engine billing itself uses."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from imagegen_billing.config import BillingSettings
from imagegen_billing.db import Database
from imagegen_billing.models import Base

config = context.config


def _database_url() -> str:
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    return str(url) if url else BillingSettings().resolved_database_url()


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=True,
        # SQLite alters tables by copying them; batch mode lets later migrations do that.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    db = Database.from_url(_database_url())
    try:
        async with db.write() as connection:
            await connection.run_sync(_run)
    finally:
        await db.close()


if context.is_offline_mode():
    context.configure(url=_database_url(), target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
