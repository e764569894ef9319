"""The prediction history table (migrations `0002`, `0004`, `0005`, `0006`)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Float, Index, Integer, String, false
from sqlalchemy.orm import Mapped, mapped_column

from pipelines.db import Base


class PredictionRow(Base):
    """One computed prediction of one model version from one candle.

    Times are UTC epoch milliseconds, as in the REST answers. `outcome` (1 = the close
    `horizon` candles later ended above the candle's close, 0 = below) and `correct` stay NULL
    until that candle is in the store; an unchanged close is a tie: `tie` true, `outcome` and
    `correct` NULL for good (neither up nor down, scored nowhere).
    """

    __tablename__ = "prediction_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pair: Mapped[str] = mapped_column(String(16))
    model_type: Mapped[str] = mapped_column(String(16))
    model_version: Mapped[str] = mapped_column(String(32))
    candle_time: Mapped[int] = mapped_column(BigInteger)
    horizon: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(BigInteger)
    probability: Mapped[float] = mapped_column(Float)
    direction: Mapped[str] = mapped_column(String(8))
    signal: Mapped[str] = mapped_column(String(8))
    unproven: Mapped[bool] = mapped_column(Boolean)
    outcome: Mapped[int | None] = mapped_column(Integer, nullable=True)
    correct: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # A challenger's prediction, scored in shadow (migration 0005): never served unasked.
    shadow: Mapped[bool] = mapped_column(Boolean, server_default=false(), default=False)
    # The outcome was a tie (migration 0006).
    tie: Mapped[bool] = mapped_column(Boolean, server_default=false(), default=False)
    # The version's shipped logistic baseline on the same window, scored in shadow (migration
    # 0006); NULL for a version that ships none.
    baseline_probability: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (
        Index("ix_prediction_history_pair_created_at", "pair", "created_at"),
        Index("ix_prediction_history_pair_model_version", "pair", "model_type", "model_version"),
        Index("ix_prediction_history_outcome_pending", "outcome", "pair"),
        # One row per version and candle (migration 0004): a repeat is dropped on insert.
        Index(
            "uq_prediction_history_version_candle",
            "pair",
            "model_type",
            "model_version",
            "candle_time",
            unique=True,
        ),
    )
