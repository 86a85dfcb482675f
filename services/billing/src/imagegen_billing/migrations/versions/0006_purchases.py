"""Buying credits (Stripe Checkout): purchases, ledger entries keyed by their payment, and balances
that refunds and disputes may take below zero.

Revision ID: 0006
Revises: 0005 (on the stripe branch; 0005 comes from the oauth branch and the chain is fixed at merge)
Create Date: 2026-12-02
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIME = sa.DateTime(timezone=True)
_CHECK = "CONSTRAINT ck_accounts_credits_not_negative CHECK (credits >= 0)"
_CHECK_CLAUSE = re.compile(r",\s*CONSTRAINT ck_accounts_credits_not_negative CHECK \(credits >= 0\)")


def upgrade() -> None:
    op.add_column("ledger_entries", sa.Column("payment_key", sa.String(length=255), nullable=True))
    op.create_index("ix_ledger_entries_payment_key", "ledger_entries", ["payment_key"], unique=True)
    op.create_table(
        "purchases",
        sa.Column("checkout_session_id", sa.String(length=255), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("pack_id", sa.String(length=64), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("payment_intent_id", sa.String(length=255), nullable=True),
        sa.Column("credits_taken_back", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("flagged", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("create_time", UTC_TIME, nullable=False),
        sa.Column("paid_time", UTC_TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_purchases_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("checkout_session_id", name=op.f("pk_purchases")),
        sa.UniqueConstraint("payment_intent_id", name=op.f("uq_purchases_payment_intent_id")),
    )
    op.create_index(
        "ix_purchases_account_id_create_time", "purchases", ["account_id", "create_time"], unique=False
    )
    _drop_credits_check()


def _drop_credits_check() -> None:
    """Refunds and disputes may take a balance below zero, so ``credits >= 0`` goes.

    PostgreSQL drops the constraint. SQLite cannot, and a batch copy of ``accounts`` (which every table
    references) fails once there are rows; removing a CHECK changes nothing on disk, so its stored
    schema text is edited as SQLite's ALTER TABLE documentation describes (writable_schema, then a new
    schema_version so every connection re-reads it).
    """
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        op.drop_constraint(op.f("ck_accounts_credits_not_negative"), "accounts", type_="check")
        return
    _set_accounts_sql(lambda sql: _CHECK_CLAUSE.sub("", sql))


def _set_accounts_sql(change: Callable[[str], str]) -> None:
    bind = op.get_bind()
    sql = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type='table' AND name='accounts'"
    ).scalar()
    assert isinstance(sql, str)
    new_sql = change(sql)
    if new_sql == sql:
        return
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar()
    assert isinstance(version, int)
    bind.exec_driver_sql("PRAGMA writable_schema=ON")
    bind.exec_driver_sql("UPDATE sqlite_master SET sql=? WHERE type='table' AND name='accounts'", (new_sql,))
    bind.exec_driver_sql(f"PRAGMA schema_version={version + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema=OFF")


def downgrade() -> None:
    """Fails on PostgreSQL while a balance is below zero (settle those accounts first)."""
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        _set_accounts_sql(lambda sql: sql.rstrip().removesuffix(")").rstrip() + f", {_CHECK}\n)")
    else:
        op.create_check_constraint(op.f("ck_accounts_credits_not_negative"), "accounts", "credits >= 0")
    op.drop_index("ix_purchases_account_id_create_time", table_name="purchases")
    op.drop_table("purchases")
    op.drop_index("ix_ledger_entries_payment_key", table_name="ledger_entries")
    op.drop_column("ledger_entries", "payment_key")
