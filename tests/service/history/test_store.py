"""The prediction history on a real, migrated SQLite database and the real candle store."""

from __future__ import annotations

import pandas as pd
import pytest
from sqlalchemy import insert, text

from pipelines.candles.store import CandleStore
from pipelines.db import migrate, write_session
from pipelines.settings import Settings
from service.history.store import PredictionHistory, row_values
from service.history.tables import PredictionRow
from service.predictor import PredictionRecord


@pytest.fixture
def history(settings: Settings) -> PredictionHistory:
    migrate(settings)
    return PredictionHistory(url=settings.database_url)


@pytest.fixture
def store(settings: Settings) -> CandleStore:
    return CandleStore.from_settings(settings)


def _record(
    candle_time: pd.Timestamp,
    *,
    direction: str = "up",
    version: str = "1",
    horizon: int = 1,
    created_at: int = 1_000,
    pair: str = "BTC",
) -> PredictionRecord:
    return PredictionRecord(
        pair=pair,
        model_type="lstm",
        model_version=version,
        candle_time=candle_time,
        horizon=horizon,
        probability=0.7 if direction == "up" else 0.3,
        direction=direction,
        signal="HOLD",
        unproven=False,
        created_at=created_at,
    )


def test_outcomes_follow_the_training_target_rule(
    history: PredictionHistory, store: CandleStore
) -> None:
    candles = store.load("BTC")
    index, close = candles.index, candles["close"].to_numpy()
    went_up = [bool(close[i + 1] > close[i]) for i in range(len(close) - 1)]
    up_at = next(i for i in range(len(went_up) - 10, 0, -1) if went_up[i])
    down_at = next(i for i in range(len(went_up) - 10, 0, -1) if not went_up[i])
    history.record(
        [
            _record(index[up_at], direction="up"),
            _record(index[down_at], direction="up"),
            _record(index[down_at - 5], direction="down", horizon=2),
        ]
    )

    assert history.fill_outcomes(store=store, timeframe="1h") == 3

    rows = {r["candleTime"]: r for r in history.recent(pair="BTC", limit=10)}
    stamp = {i: int(index[i].value // 1_000_000) for i in (up_at, down_at, down_at - 5)}
    assert rows[stamp[up_at]]["outcome"] == "up"
    assert rows[stamp[up_at]]["correct"] is True
    assert rows[stamp[down_at]]["outcome"] == "down"
    assert rows[stamp[down_at]]["correct"] is False
    two_ahead = "up" if close[down_at - 3] > close[down_at - 5] else "down"
    assert rows[stamp[down_at - 5]]["outcome"] == two_ahead
    assert rows[stamp[down_at - 5]]["correct"] is (two_ahead == "down")


def test_rows_whose_horizon_has_not_passed_or_whose_candle_is_unknown_stay_open(
    history: PredictionHistory, store: CandleStore
) -> None:
    index = store.load("BTC").index
    history.record(
        [
            _record(index[-1]),
            _record(index[-2], horizon=2),
            _record(index[-1] - pd.Timedelta(minutes=30)),  # not a candle of the store
        ]
    )

    assert history.fill_outcomes(store=store, timeframe="1h") == 0
    assert all(r["outcome"] is None for r in history.recent(pair="BTC", limit=10))


def test_realised_rows_hold_each_candle_once_per_version_in_candle_order(
    history: PredictionHistory, store: CandleStore
) -> None:
    candles = store.load("BTC")
    index, close = candles.index, candles["close"].to_numpy()
    ups = [i for i in range(len(close) - 40, len(close) - 1) if close[i + 1] > close[i]][:3]
    history.record(
        [_record(index[i], version="1", created_at=5_000 - i) for i in reversed(ups)]
        + [_record(index[ups[0]], version="1")]  # the same candle again (a cache expiry)
        + [_record(index[ups[0]], version="2", direction="down")]
        + [_record(index[-1], version="2")]  # its outcome is not known yet
    )
    history.fill_outcomes(store=store, timeframe="1h")

    rows = {r.model_version: r for r in history.realised_rows(pair="BTC")}

    stamps = [int(index[i].value // 1_000_000) for i in ups]
    assert rows["1"].candle_time.tolist() == stamps
    assert rows["1"].correct.tolist() == [True, True, True]
    assert rows["1"].outcome.tolist() == [1, 1, 1]
    assert rows["2"].candle_time.tolist() == stamps[:1]
    assert rows["2"].correct.tolist() == [False]
    assert rows["2"].probability.tolist() == [0.3]


def test_a_candle_stored_twice_with_disagreeing_rows_counts_once(
    history: PredictionHistory, store: CandleStore, settings: Settings
) -> None:
    # A database without the unique index of migration 0004 (one migrated before it, or any
    # other writer): two rows of one version and candle that disagree. The first one counts.
    with write_session(settings.database_url) as session:
        session.execute(text("DROP INDEX uq_prediction_history_version_candle"))
    candles = store.load("BTC")
    index, close = candles.index, candles["close"].to_numpy()
    up = next(i for i in range(len(close) - 10, 0, -1) if close[i + 1] > close[i])
    rows = [_record(index[up], direction="up"), _record(index[up], direction="down")]
    with write_session(settings.database_url) as session:
        session.execute(
            insert(PredictionRow),
            [row_values(r) for r in rows],
        )
    assert history.fill_outcomes(store=store, timeframe="1h") == 2

    (realised,) = history.realised_rows(pair="BTC")

    assert realised.candle_time.tolist() == [int(index[up].value // 1_000_000)]
    assert realised.correct.tolist() == [True]
    assert realised.probability.tolist() == [0.7]


def test_recent_is_newest_first_limited_and_filtered_by_time(
    history: PredictionHistory, store: CandleStore
) -> None:
    index = store.load("ETH").index
    history.record(
        [_record(index[-i], created_at=1_000 * i, pair="ETH") for i in range(1, 6)]
        + [_record(index[-1], pair="BTC")]
    )

    rows = history.recent(pair="ETH", limit=3)
    assert [r["timestamp"] for r in rows] == [5_000, 4_000, 3_000]
    assert [r["timestamp"] for r in history.recent(pair="ETH", limit=10, since_ms=4_000)] == [
        5_000,
        4_000,
    ]
    assert history.count(pair="ETH") == 5
    assert history.count() == 6


def test_cleanup_deletes_only_rows_older_than_the_age(history: PredictionHistory) -> None:
    now = int(pd.Timestamp.now(tz="UTC").value // 1_000_000)
    stamp = pd.Timestamp("2023-01-01T00:00:00Z")
    history.record(
        [
            _record(stamp, created_at=now - 7_200_000),
            _record(stamp + pd.Timedelta(hours=1), created_at=now),
        ]
    )

    assert history.cleanup(max_age_hours=1) == 1
    assert history.count() == 1
