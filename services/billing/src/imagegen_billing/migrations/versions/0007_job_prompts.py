"""Reservations keep their job's prompt, so that an account's own history (the portal's gallery) shows
what each image was asked for. Older reservations have none ("").

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # ADD COLUMN in place (no batch copy): other tables reference reservations' rows on SQLite.
    op.add_column("reservations", sa.Column("prompt", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    op.drop_column("reservations", "prompt")
