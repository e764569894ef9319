"""Prediction history: predictions of a challenger, scored in shadow, are marked `shadow`

A version that passed the offline gate while another is production (ML_PROMOTION=shadow) is
the pair's challenger: the service predicts with it on every new candle beside production and
records those predictions, so that live outcomes can decide between the two. They are never
served unasked: the history answers leave them out unless `?alias=challenger` asks for them.
Existing rows are production's (false).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add `shadow` (false for every existing row)."""
    with op.batch_alter_table("prediction_history") as batch:
        batch.add_column(
            sa.Column("shadow", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    """Drop `shadow` (a challenger's rows then read as production's)."""
    with op.batch_alter_table("prediction_history") as batch:
        batch.drop_column("shadow")
