"""Typed release reasons: ``reservations.release_reason`` holds a ReleaseReason value ("failed",
"cancelled", "timeout", "expired", "not_queued", "operator"; "" until released) and the free text
moves to the new ``release_detail``.

The old column held whatever text a caller sent ("failed: provider_error", "not queued: …"); it is
converted once here, so that nothing reads a reason by matching text again. Text that names no
reason becomes "operator" (someone released it by hand), with the old text kept as its detail.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every right-hand side of one UPDATE reads the row as it was, so detail and reason are both computed
# from the old text.
_UPGRADE = """
UPDATE reservations SET
  release_detail = CASE
    WHEN state <> 'released' OR release_reason IN ('', 'cancelled', 'timeout', 'expired') THEN ''
    ELSE release_reason
  END,
  release_reason = CASE
    WHEN state <> 'released' THEN ''
    WHEN release_reason LIKE 'failed%' OR release_reason LIKE 'job failed%' THEN 'failed'
    WHEN release_reason IN ('cancelled', 'timeout', 'expired') THEN release_reason
    WHEN release_reason LIKE 'not queued%' THEN 'not_queued'
    ELSE 'operator'
  END
"""
# Error codes were free text too; the ones that name no ErrorCode keep the failure but lose the name.
_KNOWN_ERRORS = (
    "invalid_input",
    "input_image_refused",
    "content_rejected",
    "provider_error",
    "provider_unavailable",
    "deadline_exceeded",
    "cancelled",
    "internal",
    "unspecified",
)
_UPGRADE_ERRORS = (
    "UPDATE reservations SET result_error_code = 'unspecified' "
    f"WHERE result_error_code <> '' AND result_error_code NOT IN ({', '.join(repr(e) for e in _KNOWN_ERRORS)})"
)
_DOWNGRADE = """
UPDATE reservations SET release_reason = CASE
  WHEN release_reason = 'failed' THEN 'failed: ' || result_error_code
  WHEN release_detail <> '' THEN release_detail
  WHEN release_reason = 'operator' THEN 'requested'
  ELSE release_reason
END
"""


def upgrade() -> None:
    with op.batch_alter_table("reservations") as batch:
        batch.add_column(
            sa.Column("release_detail", sa.String(length=200), server_default=sa.text("''"), nullable=False)
        )
    op.execute(_UPGRADE)
    op.execute(_UPGRADE_ERRORS)
    with op.batch_alter_table("reservations") as batch:
        batch.alter_column(
            "release_reason",
            existing_type=sa.String(length=200),
            type_=sa.String(length=16),
            existing_nullable=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("reservations") as batch:
        batch.alter_column(
            "release_reason",
            existing_type=sa.String(length=16),
            type_=sa.String(length=200),
            existing_nullable=False,
        )
    op.execute(_DOWNGRADE)
    with op.batch_alter_table("reservations") as batch:
        batch.drop_column("release_detail")
