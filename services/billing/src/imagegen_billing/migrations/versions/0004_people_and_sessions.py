"""The account portal: accounts' role and disabled time, OpenID Connect identities, browser sessions,
one-time sign-in links and the sign-in requests that the rate limits count.

Revision ID: 0004
Revises: 0002 (on the portal branch; the chain through 0003 is fixed when the branches meet)
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Plain ADD COLUMN, never a batch copy: on SQLite a copy drops `accounts`, which every other table
    # references, and that fails once there are rows.
    op.add_column(
        "accounts", sa.Column("role", sa.String(length=16), server_default=sa.text("'user'"), nullable=False)
    )
    op.add_column("accounts", sa.Column("disable_time", UTC_TIME, nullable=True))
    op.create_table(
        "sign_in_identities",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("issuer", sa.String(length=512), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("create_time", UTC_TIME, nullable=False),
        sa.Column("last_sign_in_time", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_sign_in_identities_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sign_in_identities")),
        sa.UniqueConstraint("issuer", "subject", name=op.f("uq_sign_in_identities_issuer")),
    )
    op.create_index(
        op.f("ix_sign_in_identities_account_id"), "sign_in_identities", ["account_id"], unique=False
    )
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("create_time", UTC_TIME, nullable=False),
        sa.Column("last_seen_time", UTC_TIME, nullable=False),
        sa.Column("expire_time", UTC_TIME, nullable=False),
        sa.Column("end_time", UTC_TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_sessions_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_sessions_token_hash")),
    )
    op.create_index(op.f("ix_sessions_account_id"), "sessions", ["account_id"], unique=False)
    op.create_index("ix_sessions_expire_time", "sessions", ["expire_time"], unique=False)
    op.create_table(
        "login_links",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=True),
        sa.Column("next_path", sa.String(length=2048), nullable=False),
        sa.Column("create_time", UTC_TIME, nullable=False),
        sa.Column("expire_time", UTC_TIME, nullable=False),
        sa.Column("use_time", UTC_TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_login_links_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_links")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_login_links_token_hash")),
    )
    op.create_index(op.f("ix_login_links_account_id"), "login_links", ["account_id"], unique=False)
    op.create_index("ix_login_links_expire_time", "login_links", ["expire_time"], unique=False)
    op.create_table(
        "sign_in_attempts",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("client_address", sa.String(length=64), nullable=False),
        sa.Column("create_time", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sign_in_attempts")),
    )
    op.create_index(
        "ix_sign_in_attempts_email_create_time", "sign_in_attempts", ["email", "create_time"], unique=False
    )
    op.create_index(
        "ix_sign_in_attempts_client_address_create_time",
        "sign_in_attempts",
        ["client_address", "create_time"],
        unique=False,
    )
    op.create_index("ix_sign_in_attempts_create_time", "sign_in_attempts", ["create_time"], unique=False)


def downgrade() -> None:
    op.drop_table("sign_in_attempts")
    op.drop_index("ix_login_links_expire_time", table_name="login_links")
    op.drop_index(op.f("ix_login_links_account_id"), table_name="login_links")
    op.drop_table("login_links")
    op.drop_index("ix_sessions_expire_time", table_name="sessions")
    op.drop_index(op.f("ix_sessions_account_id"), table_name="sessions")
    op.drop_table("sessions")
    op.drop_index(op.f("ix_sign_in_identities_account_id"), table_name="sign_in_identities")
    op.drop_table("sign_in_identities")
    # DROP COLUMN in place (SQLite 3.35+ and PostgreSQL), for the same reason.
    op.drop_column("accounts", "disable_time")
    op.drop_column("accounts", "role")
