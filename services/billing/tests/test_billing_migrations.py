"""The Alembic migrations: one head, and a migrated database matches the ORM tables exactly."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text
from typer.testing import CliRunner

from imagegen_billing import migrate
from imagegen_billing.cli import app as billing_cli
from imagegen_billing.db import Database
from imagegen_billing.domain import JobError, ReleaseReason
from imagegen_billing.ledger import Ledger
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


async def test_0003_turns_release_text_into_reasons(database_url: str) -> None:
    """Reservations written before 0003, with the reasons as the callers wrote them, read as typed
    reasons after it; the text that said more than the reason stays as the detail."""
    await migrate.upgrade_async(database_url, "0002")
    old: list[tuple[str, str, str, str]] = [
        # job id, state, release_reason, result_error_code
        ("img_held", "held", "", ""),
        ("img_captured", "captured", "", ""),
        ("img_failed", "released", "failed: provider_error", "provider_error"),
        ("img_job_failed", "released", "job failed: content_rejected", "content_rejected"),
        ("img_cancelled", "released", "cancelled", "cancelled"),
        ("img_timeout", "released", "timeout", ""),
        ("img_expired", "released", "expired", ""),
        ("img_not_queued", "released", "not queued: the job queue is unavailable", ""),
        ("img_requested", "released", "requested", ""),
        ("img_by_hand", "released", "refund for ticket 42", ""),
        ("img_odd_code", "released", "failed: unknown", "unknown"),
    ]
    db = Database.from_url(database_url)
    try:
        async with db.write() as conn:
            await conn.exec_driver_sql(
                "INSERT INTO accounts (id, email, credits, reserved_credits, create_time) "
                "VALUES ('acc_1', 'ada@example.test', 0, 0, '2026-01-01 00:00:00')"
            )
            for job_id, state, reason, code in old:
                await conn.exec_driver_sql(
                    "INSERT INTO reservations (job_id, account_id, amount, state, create_time, "
                    "expire_time, model, width, height, request_fingerprint, release_reason, "
                    "result_image_url, result_mime_type, result_width, result_height, "
                    "result_error_code, result_error_message) VALUES "
                    f"('{job_id}', 'acc_1', 1, '{state}', '2026-01-01 00:00:00', "
                    f"'2026-01-01 00:15:00', 'm', 0, 0, '', '{reason}', '', '', 0, 0, '{code}', '')"
                )
    finally:
        await db.close()

    await migrate.upgrade_async(database_url)
    db = Database.from_url(database_url)
    try:
        ledger = Ledger(db)
        read = {job_id: await ledger.reservation(job_id) for job_id, *_ in old}
    finally:
        await db.close()
    assert {job_id: (r.release_reason, r.release_detail) for job_id, r in read.items()} == {
        "img_held": (None, ""),
        "img_captured": (None, ""),
        "img_failed": (ReleaseReason.FAILED, "failed: provider_error"),
        "img_job_failed": (ReleaseReason.FAILED, "job failed: content_rejected"),
        "img_cancelled": (ReleaseReason.CANCELLED, ""),
        "img_timeout": (ReleaseReason.TIMEOUT, ""),
        "img_expired": (ReleaseReason.EXPIRED, ""),
        "img_not_queued": (ReleaseReason.NOT_QUEUED, "not queued: the job queue is unavailable"),
        "img_requested": (ReleaseReason.OPERATOR, "requested"),
        "img_by_hand": (ReleaseReason.OPERATOR, "refund for ticket 42"),
        "img_odd_code": (ReleaseReason.FAILED, "failed: unknown"),
    }
    assert read["img_failed"].result.error is JobError.PROVIDER_ERROR
    assert read["img_cancelled"].result.error is JobError.CANCELLED
    assert read["img_odd_code"].result.error is JobError.UNSPECIFIED
    assert read["img_held"].result.error is None


async def test_0003_downgrades_back_to_text(database_url: str) -> None:
    await migrate.upgrade_async(database_url)
    db = Database.from_url(database_url)
    try:
        async with db.write() as conn:
            await conn.exec_driver_sql(
                "INSERT INTO accounts (id, email, credits, reserved_credits, create_time) "
                "VALUES ('acc_1', 'ada@example.test', 0, 0, '2026-01-01 00:00:00')"
            )
            await conn.exec_driver_sql(
                "INSERT INTO reservations (job_id, account_id, amount, state, create_time, "
                "expire_time, model, width, height, request_fingerprint, release_reason, release_detail, "
                "result_image_url, result_mime_type, result_width, result_height, "
                "result_error_code, result_error_message) VALUES "
                "('img_f', 'acc_1', 1, 'released', '2026-01-01 00:00:00', '2026-01-01 00:15:00', 'm', "
                "0, 0, '', 'failed', '', '', '', 0, 0, 'provider_error', '')"
            )
    finally:
        await db.close()
    await asyncio.to_thread(command.downgrade, migrate.alembic_config(database_url), "0002")
    db = Database.from_url(database_url)
    try:
        async with db.read() as conn:
            reason = await conn.scalar(text("SELECT release_reason FROM reservations"))
    finally:
        await db.close()
    assert reason == "failed: provider_error"
