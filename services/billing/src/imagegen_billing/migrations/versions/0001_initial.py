"""Accounts, API tokens, reservations and the ledger.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("reserved_credits", sa.BigInteger(), nullable=False),
        sa.Column("create_time", UTC_TIME, nullable=False),
        sa.CheckConstraint("credits >= 0", name=op.f("ck_accounts_credits_not_negative")),
        sa.CheckConstraint("reserved_credits >= 0", name=op.f("ck_accounts_reserved_not_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("email", name=op.f("uq_accounts_email")),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("create_time", UTC_TIME, nullable=False),
        sa.Column("last_used_time", UTC_TIME, nullable=True),
        sa.Column("revoke_time", UTC_TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_api_tokens_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index(op.f("ix_api_tokens_account_id"), "api_tokens", ["account_id"])
    op.create_table(
        "ledger_entries",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("job_id", sa.String(length=128), nullable=True),
        sa.Column("note", sa.String(length=200), nullable=False),
        sa.Column("create_time", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_ledger_entries_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
    )
    op.create_index("ix_ledger_entries_account_id_id", "ledger_entries", ["account_id", "id"])
    op.create_table(
        "reservations",
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("create_time", UTC_TIME, nullable=False),
        sa.Column("expire_time", UTC_TIME, nullable=False),
        sa.Column("settle_time", UTC_TIME, nullable=True),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("request_fingerprint", sa.String(length=128), nullable=False),
        sa.Column("release_reason", sa.String(length=200), nullable=False),
        sa.Column("start_time", UTC_TIME, nullable=True),
        sa.Column("result_image_url", sa.String(length=2048), nullable=False),
        sa.Column("result_mime_type", sa.String(length=200), nullable=False),
        sa.Column("result_width", sa.Integer(), nullable=False),
        sa.Column("result_height", sa.Integer(), nullable=False),
        sa.Column("result_error_code", sa.String(length=200), nullable=False),
        sa.Column("result_error_message", sa.String(length=1000), nullable=False),
        sa.Column("result_finish_time", UTC_TIME, nullable=True),
        sa.CheckConstraint("amount > 0", name=op.f("ck_reservations_amount_positive")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_reservations_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_reservations")),
    )
    op.create_index("ix_reservations_account_id_state", "reservations", ["account_id", "state"])
    op.create_index("ix_reservations_state_expire_time", "reservations", ["state", "expire_time"])


def downgrade() -> None:
    op.drop_table("reservations")
    op.drop_table("ledger_entries")
    op.drop_table("api_tokens")
    op.drop_table("accounts")
