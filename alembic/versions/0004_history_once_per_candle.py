"""Prediction history: one row per (pair, model type, version, candle)

A prediction is a pure function of its candle and its version, so a second row for the same
pair can only repeat the first (a recomputation after a restart, or another API replica): the
unique index makes the database keep one, and live figures count every candle once. Existing
repeats are removed first, keeping the oldest row (the one whose outcome may be filled).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "uq_prediction_history_version_candle"
COLUMNS = ["pair", "model_type", "model_version", "candle_time"]


def upgrade() -> None:
    """Delete repeated rows (keeping the first of each), then add the unique index."""
    op.execute(
        sa.text(
            "DELETE FROM prediction_history WHERE id NOT IN ("
            "SELECT MIN(id) FROM prediction_history "
            "GROUP BY pair, model_type, model_version, candle_time)"
        )
    )
    op.create_index(INDEX, "prediction_history", COLUMNS, unique=True)


def downgrade() -> None:
    """Drop the unique index (the rows stay)."""
    op.drop_index(INDEX, table_name="prediction_history")
