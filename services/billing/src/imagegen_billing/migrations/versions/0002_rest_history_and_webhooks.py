"""REST API: an index for an account's history, webhook delivery state on reservations, the record of
every webhook attempt, and accounts' webhook settings.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("reservations") as batch:
        batch.add_column(
            sa.Column("webhook_url", sa.String(length=2048), server_default=sa.text("''"), nullable=False)
        )
        batch.add_column(
            sa.Column("webhook_state", sa.String(length=16), server_default=sa.text("''"), nullable=False)
        )
        batch.add_column(
            sa.Column("webhook_attempt_count", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch.add_column(
            sa.Column("webhook_last_status_code", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch.add_column(
            sa.Column(
                "webhook_last_error", sa.String(length=1000), server_default=sa.text("''"), nullable=False
            )
        )
        batch.add_column(sa.Column("webhook_last_attempt_time", UTC_TIME, nullable=True))
    op.create_index(
        "ix_reservations_account_id_create_time", "reservations", ["account_id", "create_time", "job_id"]
    )
    op.create_table(
        "webhook_attempts",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(length=1000), nullable=False),
        sa.Column("attempt_time", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["reservations.job_id"], name=op.f("fk_webhook_attempts_job_id_reservations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
        sa.UniqueConstraint("job_id", "attempt", name=op.f("uq_webhook_attempts_job_id")),
    )
    op.create_table(
        "account_webhooks",
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("create_time", UTC_TIME, nullable=False),
        sa.Column("update_time", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_account_webhooks_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_account_webhooks")),
    )


def downgrade() -> None:
    op.drop_table("account_webhooks")
    op.drop_table("webhook_attempts")
    op.drop_index("ix_reservations_account_id_create_time", table_name="reservations")
    with op.batch_alter_table("reservations") as batch:
        for column in (
            "webhook_last_attempt_time",
            "webhook_last_error",
            "webhook_last_status_code",
            "webhook_attempt_count",
            "webhook_state",
            "webhook_url",
        ):
            batch.drop_column(column)
