"""Prediction history: ties, and the shipped logistic baseline scored in shadow

An unchanged close is neither up nor down: the outcome filler marks such a row `tie` (its
`outcome` and `correct` stay NULL), and live figures leave it out of every score. Existing
settled rows keep their outcome (an old tie reads as down, as it was filled). `baseline_probability`
is the version's logistic baseline's probability of "up" on the same window, recorded beside
each prediction (NULL for versions that ship none, and for existing rows).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add `tie` (false for every existing row) and `baseline_probability` (NULL)."""
    with op.batch_alter_table("prediction_history") as batch:
        batch.add_column(sa.Column("tie", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("baseline_probability", sa.Float(), nullable=True))


def downgrade() -> None:
    """Drop both (a tie then reads as an open row, and is filled again by the old rule)."""
    with op.batch_alter_table("prediction_history") as batch:
        batch.drop_column("baseline_probability")
        batch.drop_column("tie")
