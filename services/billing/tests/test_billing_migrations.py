"""The Alembic migrations: one head, and a migrated database matches the ORM tables exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from typer.testing import CliRunner

from imagegen_billing import migrate
from imagegen_billing.cli import app as billing_cli
from imagegen_billing.db import Database
from imagegen_billing.models import Base


def test_the_migrations_have_one_head() -> None:
    assert len(migrate.heads()) == 1


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_the_migrated_schema_is_the_orm_schema(database_url: str) -> None:
    await migrate.upgrade_async(database_url)
    await migrate.upgrade_async(database_url)  # a second run changes nothing
    db = Database.from_url(database_url)
    try:
        async with db.read() as conn:
            assert await conn.run_sync(_differences) == []
            version = await conn.exec_driver_sql("SELECT version_num FROM alembic_version")
            assert [row[0] for row in version] == migrate.heads()
    finally:
        await db.close()


@pytest.mark.usefixtures("isolated_logging")
def test_imagegen_billing_migrate_creates_the_sqlite_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "missing" / "data"
    result = CliRunner().invoke(
        billing_cli,
        ["migrate"],
        env={"IMAGEGEN_DATA_DIR": str(data_dir), "IMAGEGEN_DATABASE_URL": "", "IMAGEGEN_LOG_FORMAT": "text"},
    )
    assert result.exit_code == 0, result.output
    assert (data_dir / "billing.db").exists()
