"""Live figures on a real, migrated SQLite history and the real bundled candles."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import update

from pipelines.candles.store import CandleStore
from pipelines.db import migrate, write_session
from pipelines.settings import Settings
from pipelines.verdicts import log_losses
from service.drift import NAIVE_BASELINES, naive_probabilities
from service.history.store import PredictionHistory
from service.history.tables import PredictionRow
from service.live_figures import BaselineScore, LiveFigures, live_figures, wilson_interval
from service.predictor import PredictionRecord, epoch_ms


@pytest.fixture
def history(settings: Settings) -> PredictionHistory:
    migrate(settings)
    return PredictionHistory(url=settings.database_url)


@pytest.fixture
def store(settings: Settings) -> CandleStore:
    return CandleStore.from_settings(settings)


@pytest.fixture
def btc(store: CandleStore) -> pd.DataFrame:
    return store.load("BTC")


def _went_up(candles: pd.DataFrame, position: int) -> bool:
    close = candles["close"].to_numpy()
    return bool(close[position + 1] > close[position])


def _predict(
    history: PredictionHistory,
    candles: pd.DataFrame,
    positions: range | list[int],
    probability: Callable[[int], float],
    *,
    version: str = "1",
) -> None:
    """One horizon-1 prediction per candle position, its probability chosen per position."""
    records = []
    for position in positions:
        p = probability(position)
        records.append(
            PredictionRecord(
                pair="BTC",
                model_type="lstm",
                model_version=version,
                candle_time=candles.index[position],
                horizon=1,
                probability=p,
                direction="up" if p >= 0.5 else "down",
                signal="HOLD",
                unproven=False,
                created_at=1_000 + position,
            )
        )
    history.record(records)


def _figures(history: PredictionHistory, store: CandleStore) -> dict[str, LiveFigures]:
    history.fill_outcomes(store=store, timeframe="1h")
    realised = history.realised_rows(pair="BTC")
    return {f.model_version: f for f in live_figures(realised, store, pair="BTC", timeframe="1h")}


def _wobbly(position: int) -> float:
    """A forecaster that knows nothing, deterministically: p in [0.3, 0.7]."""
    return 0.5 + 0.2 * float(np.sin(position * 1.7))


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        (50, 100, 0.4038, 0.5962),
        (0, 10, 0.0, 0.2775),  # upper bound z^2 / (n + z^2)
        (10, 10, 0.7225, 1.0),
    ],
)
def test_wilson_interval_matches_known_values(
    successes: int, trials: int, low: float, high: float
) -> None:
    assert wilson_interval(successes, trials) == pytest.approx((low, high), abs=1e-4)


@pytest.mark.parametrize(("successes", "trials"), [(81, 263), (3, 7), (999, 1000)])
def test_wilson_bounds_are_where_the_score_test_reaches_z(successes: int, trials: int) -> None:
    # The interval's definition: the proportions p whose score statistic
    # |k/n - p| / sqrt(p (1 - p) / n) is at most z, here 1.959964 (95 %).
    share = successes / trials
    for bound in wilson_interval(successes, trials):
        statistic = abs(share - bound) / np.sqrt(bound * (1 - bound) / trials)
        assert statistic == pytest.approx(1.959964, abs=1e-5)


def test_wilson_interval_widens_with_the_level_and_refuses_bad_counts() -> None:
    narrow = wilson_interval(50, 100, level=0.5)
    wide = wilson_interval(50, 100, level=0.99)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]
    with pytest.raises(ValueError, match=r"successes must lie in \[0, trials=10\], got 11"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="trials must be at least 1, got 0"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match=r"level must lie strictly between 0 and 1, got 1\.0"):
        wilson_interval(5, 10, level=1.0)


def test_accuracy_and_its_interval_count_the_stated_directions(
    history: PredictionHistory, store: CandleStore, btc: pd.DataFrame
) -> None:
    positions = range(len(btc) - 101, len(btc) - 1)
    _predict(history, btc, positions, _wobbly)

    figures = _figures(history, store)["1"]

    hits = sum((_wobbly(i) >= 0.5) == _went_up(btc, i) for i in positions)
    assert (figures.predictions, figures.correct) == (100, hits)
    assert figures.accuracy == hits / 100
    assert figures.accuracy_interval == wilson_interval(hits, 100)
    low, high = figures.accuracy_interval
    assert low < figures.accuracy < high


def test_log_loss_interval_contains_the_mean_and_narrows_with_more_rows(
    history: PredictionHistory, store: CandleStore, btc: pd.DataFrame
) -> None:
    end = len(btc) - 1
    _predict(history, btc, range(end - 48, end), _wobbly, version="few")
    _predict(history, btc, range(end - 960, end), _wobbly, version="many")

    figures = _figures(history, store)

    widths = {}
    for version, rows in (("few", 48), ("many", 960)):
        loss = figures[version].log_loss
        positions = range(end - rows, end)
        expected = log_losses(
            np.array([_wobbly(i) for i in positions]),
            np.array([int(_went_up(btc, i)) for i in positions]),
        ).mean()
        assert loss.value == pytest.approx(expected)
        assert loss.low < loss.value < loss.high
        assert figures[version].block == 24
        widths[version] = loss.high - loss.low
    assert widths["many"] < widths["few"] / 2


def test_baselines_are_scored_on_exactly_the_candles_of_the_version(
    history: PredictionHistory,
    store: CandleStore,
    btc: pd.DataFrame,
    settings: Settings,
) -> None:
    end = len(btc) - 1
    first = list(range(end - 300, end - 200))
    second = list(range(end - 80, end))
    _predict(history, btc, first, _wobbly, version="1")
    _predict(history, btc, first[:10], lambda i: 0.9, version="1")  # repeats: one row each
    _predict(history, btc, [end], _wobbly, version="1")  # its outcome is not known yet
    _predict(history, btc, second, _wobbly, version="2")
    # A realised row of a candle the store does not hold (settled against candles since
    # replaced): no baseline can be scored on it, so no figure counts it.
    off = btc.index[end - 100] + pd.Timedelta(minutes=30)
    history.record(
        [
            PredictionRecord(
                pair="BTC",
                model_type="lstm",
                model_version="1",
                candle_time=off,
                horizon=1,
                probability=0.9,
                direction="up",
                signal="HOLD",
                unproven=False,
                created_at=1,
            )
        ]
    )
    with write_session(settings.database_url) as session:
        session.execute(
            update(PredictionRow)
            .where(PredictionRow.candle_time == epoch_ms(off))
            .values(outcome=1, correct=True)
        )

    figures = _figures(history, store)

    for version, positions in (("1", first), ("2", second)):
        times = pd.DatetimeIndex(btc.index[positions]).as_unit("ms").asi8
        outcome = np.array([int(_went_up(btc, i)) for i in positions])
        naive = naive_probabilities(btc, times, horizon=1)
        expected = {
            name: BaselineScore(
                accuracy=float(np.mean((naive[name] >= 0.5) == (outcome == 1))),
                log_loss=float(log_losses(naive[name], outcome).mean()),
            )
            for name in NAIVE_BASELINES
        }
        got = figures[version]
        assert got.candle_times == tuple(times.tolist())
        assert got.predictions == len(positions)
        assert got.baselines == expected
        assert got.best_baseline == min(expected, key=lambda name: expected[name].log_loss)
        assert got.versus_baseline.rows == len(positions)
        model = log_losses(np.array([_wobbly(i) for i in positions]), outcome)
        assert got.versus_baseline.mean == pytest.approx(
            float(np.mean(model - log_losses(naive[got.best_baseline], outcome)))
        )
    assert figures["1"].baselines != figures["2"].baselines


def test_the_verdict_against_the_best_baseline_says_better_or_worse(
    history: PredictionHistory, store: CandleStore, btc: pd.DataFrame
) -> None:
    positions = range(len(btc) - 201, len(btc) - 1)
    _predict(history, btc, positions, lambda i: 0.6 if _went_up(btc, i) else 0.4, version="1")
    _predict(history, btc, positions, lambda i: 0.1 if _went_up(btc, i) else 0.9, version="2")
    _predict(history, btc, positions, _wobbly, version="3")

    figures = _figures(history, store)

    assert figures["1"].verdict == "better"
    assert figures["1"].versus_baseline.high < 0
    assert figures["2"].verdict == "worse"
    assert figures["2"].versus_baseline.low > 0
    body = figures["3"].to_json()
    assert body["versusBaseline"]["verdict"] == figures["3"].verdict
    assert body["versusBaseline"]["baseline"] == figures["3"].best_baseline
    assert body["firstCandle"] == epoch_ms(btc.index[positions[0]])
    assert body["lastCandle"] == epoch_ms(btc.index[positions[-1]])


def test_a_pair_without_realised_outcomes_has_no_figures(
    history: PredictionHistory, store: CandleStore, btc: pd.DataFrame
) -> None:
    _predict(history, btc, [len(btc) - 1], _wobbly)  # the newest candle: not settled

    assert _figures(history, store) == {}
