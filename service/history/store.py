"""Reading and writing the prediction history; realised outcomes (up, down or a tie) and the
rows the live scorer reads (`pipelines.lifecycle.live.RealisedRows`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from itertools import groupby
from typing import Any, cast

import numpy as np
import pandas as pd
from sqlalchemy import Table, bindparam, delete, false, func, insert, or_, select, true, update

from pipelines.candles.store import CandlesNotFoundError, CandleStore
from pipelines.db import read_session, write_session
from pipelines.lifecycle.live import RealisedRows
from pipelines.lifecycle.scores import outcome as outcome_of
from service.history.tables import PredictionRow
from service.predictor import PredictionRecord

logger = logging.getLogger(__name__)

__all__ = ["PredictionHistory", "RealisedRows", "row_values"]
# A row still waiting for its outcome: neither settled up/down nor a tie.
_OPEN = (PredictionRow.outcome.is_(None), PredictionRow.tie == false())

_TABLE = cast(Table, PredictionRow.__table__)
_SERVED = (
    update(_TABLE)
    .where(
        _TABLE.c.pair == bindparam("k_pair"),
        _TABLE.c.model_type == bindparam("k_model_type"),
        _TABLE.c.model_version == bindparam("k_model_version"),
        _TABLE.c.candle_time == bindparam("k_candle_time"),
        _TABLE.c.shadow == true(),
    )
    .values(shadow=False)
)


def row_values(r: PredictionRecord) -> dict[str, Any]:
    """The `prediction_history` column values of one computed prediction."""
    return {
        "pair": r.pair,
        "model_type": r.model_type,
        "model_version": r.model_version,
        "candle_time": int(r.candle_time.value // 1_000_000),
        "horizon": r.horizon,
        "created_at": r.created_at,
        "probability": r.probability,
        "direction": r.direction,
        "signal": r.signal,
        "unproven": r.unproven,
        "shadow": r.shadow,
        "baseline_probability": r.baseline_probability,
    }


class PredictionHistory:
    """The `prediction_history` table of the service database at `url`."""

    def __init__(self, *, url: str) -> None:
        self.url = url

    def record(self, records: Sequence[PredictionRecord]) -> None:
        """Store computed predictions: one row per (pair, model type, version, candle); a
        repeat of a stored one is skipped."""
        if not records:
            return
        rows = [row_values(r) for r in records]
        served = [
            {f"k_{k}": row[k] for k in ("pair", "model_type", "model_version", "candle_time")}
            for row in rows
            if not row["shadow"]
        ]
        with write_session(self.url) as session:
            session.execute(_insert_once(session.get_bind().dialect.name), rows)
            if served:
                # A candle a challenger predicted in shadow and then, promoted, served: the same
                # prediction (version and candle), now one clients were given.
                session.connection().execute(_SERVED, served)

    def recent(
        self, *, pair: str, limit: int, since_ms: int | None = None, shadow: bool = False
    ) -> list[dict[str, Any]]:
        """Newest first, at most `limit`, optionally only those made at or after `since_ms`;
        production's predictions, or with `shadow` the challengers' (scored in shadow)."""
        query = select(PredictionRow).where(
            PredictionRow.pair == pair, PredictionRow.shadow == shadow
        )
        if since_ms is not None:
            query = query.where(PredictionRow.created_at >= since_ms)
        query = query.order_by(PredictionRow.created_at.desc(), PredictionRow.id.desc()).limit(
            limit
        )
        with read_session(self.url) as session:
            return [_row_json(row) for row in session.scalars(query)]

    def count(self, *, pair: str | None = None, shadow: bool | None = None) -> int:
        query = select(func.count()).select_from(PredictionRow)
        if pair is not None:
            query = query.where(PredictionRow.pair == pair)
        if shadow is not None:
            query = query.where(PredictionRow.shadow == shadow)
        with read_session(self.url) as session:
            return int(session.scalar(query) or 0)

    def fill_outcomes(self, *, store: CandleStore, timeframe: str) -> int:
        """Settle every row whose horizon has passed; returns how many.

        The outcome is the training target's rule (`pipelines.lifecycle.scores.outcome`): the
        close `horizon` candles (rows of the store) after the predicted-from candle is above
        that candle's close (up: `outcome` 1), below it (down: 0), or unchanged (a tie: `tie`
        true, `outcome` and `correct` NULL). Only rows older than the store's newest candle are
        read; a row whose candle the store lacks (a prediction from a client's own candles)
        stays open until retention drops it.
        """
        with read_session(self.url) as session:
            pairs = list(session.scalars(select(PredictionRow.pair).where(*_OPEN).distinct()))
        updates: list[dict[str, Any]] = []
        for pair in pairs:
            try:
                candles = store.load(pair, timeframe)
            except CandlesNotFoundError:
                continue
            updates += _settled_rows(self.url, pair=pair, candles=candles)
        if updates:
            statement = (
                update(_TABLE)
                .where(_TABLE.c.id == bindparam("row_id"))
                .values(
                    outcome=bindparam("outcome"),
                    correct=bindparam("correct"),
                    tie=bindparam("tie"),
                )
            )
            with write_session(self.url) as session:
                session.connection().execute(statement, updates)
        return len(updates)

    def realised_rows(self, *, pair: str) -> list[RealisedRows]:
        """Per model type and version (sorted), every row of `pair` whose outcome is up or
        down, one per candle, oldest candle first, with the count of its ties.

        The history holds only the service's own predictions, made from the store's candles
        (a prediction from candles a client posted is never recorded), so these are store
        candles. Were a candle stored twice (a database without the unique index of migration
        0004), the first stored row counts: two rows that disagree must not make one candle
        count twice.
        """
        first = (
            select(func.min(PredictionRow.id).label("id"))
            .where(
                PredictionRow.pair == pair,
                or_(PredictionRow.outcome.is_not(None), PredictionRow.tie == true()),
            )
            .group_by(
                PredictionRow.model_type, PredictionRow.model_version, PredictionRow.candle_time
            )
            .subquery()
        )
        query = (
            select(
                PredictionRow.model_type,
                PredictionRow.model_version,
                PredictionRow.candle_time,
                PredictionRow.probability,
                PredictionRow.outcome,
                PredictionRow.correct,
                PredictionRow.horizon,
                PredictionRow.baseline_probability,
            )
            .join(first, PredictionRow.id == first.c.id)
            .order_by(
                PredictionRow.model_type, PredictionRow.model_version, PredictionRow.candle_time
            )
        )
        with read_session(self.url) as session:
            rows = session.execute(query).all()
        found = []
        for (model_type, version), group in groupby(rows, key=lambda r: (r[0], r[1])):
            every = list(group)
            part = [r for r in every if r[4] is not None]  # a tie has no outcome
            found.append(
                RealisedRows(
                    model_type=model_type,
                    model_version=version,
                    candle_time=np.array([r[2] for r in part], dtype=np.int64),
                    probability=np.array([r[3] for r in part], dtype=np.float64),
                    outcome=np.array([r[4] for r in part], dtype=np.int8),
                    correct=np.array([bool(r[5]) for r in part], dtype=bool),
                    horizon=np.array([r[6] for r in part], dtype=np.int64),
                    baseline_probability=np.array(
                        [np.nan if r[7] is None else r[7] for r in part], dtype=np.float64
                    ),
                    ties=len(every) - len(part),
                )
            )
        return found

    def cleanup(self, *, max_age_hours: float) -> int:
        """Delete rows older than `max_age_hours`; returns how many were deleted."""
        cutoff = int((time.time() - max_age_hours * 3600) * 1000)
        with write_session(self.url) as session:
            result = session.execute(delete(PredictionRow).where(PredictionRow.created_at < cutoff))
            return int(getattr(result, "rowcount", 0) or 0)


def _insert_once(dialect: str) -> Any:
    """An INSERT that skips a row whose (pair, model type, version, candle) is stored already
    (by this process before a restart, or by another replica)."""
    keys = ["pair", "model_type", "model_version", "candle_time"]
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(_TABLE).on_conflict_do_nothing(index_elements=keys)
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(_TABLE).on_conflict_do_nothing(index_elements=keys)
    return insert(_TABLE)  # other databases: the unique index refuses a repeat


def _settled_rows(url: str, *, pair: str, candles: pd.DataFrame) -> list[dict[str, Any]]:
    """The updates for the open rows of `pair` that `candles` can settle."""
    stamps = pd.DatetimeIndex(candles.index).as_unit("ms").asi8
    if stamps.size < 2:
        return []
    with read_session(url) as session:
        rows = session.execute(
            select(
                PredictionRow.id,
                PredictionRow.candle_time,
                PredictionRow.horizon,
                PredictionRow.direction,
            ).where(
                PredictionRow.pair == pair,
                *_OPEN,
                PredictionRow.candle_time < int(stamps[-1]),
            )
        ).all()
    if not rows:
        return []
    closes = candles["close"].to_numpy()
    times = np.array([r.candle_time for r in rows], dtype=np.int64)
    positions = np.searchsorted(stamps, times)
    updates = []
    for row, pos in zip(rows, positions.tolist(), strict=True):
        ahead = pos + row.horizon
        if pos >= len(stamps) or stamps[pos] != row.candle_time or ahead >= len(stamps):
            continue
        outcome = outcome_of(float(closes[pos]), float(closes[ahead]))
        updates.append(
            {
                "row_id": row.id,
                "outcome": outcome,
                "correct": None if outcome is None else (row.direction == "up") == bool(outcome),
                "tie": outcome is None,
            }
        )
    return updates


def _row_json(row: PredictionRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "pair": row.pair,
        "modelType": row.model_type,
        "modelVersion": row.model_version,
        "candleTime": row.candle_time,
        "horizon": row.horizon,
        "timestamp": row.created_at,
        "prediction": row.probability,
        "direction": row.direction,
        "signal": row.signal,
        "unproven": row.unproven,
        "shadow": bool(row.shadow),
        "outcome": None if row.outcome is None else ("up" if row.outcome else "down"),
        "tie": bool(row.tie),
        "correct": row.correct,
    }
