"""Live figures through the real path: a migrated SQLite history, its outcome filler (ties
included) and the real bundled candles, scored by `pipelines.lifecycle.live`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import update

from pipelines.candles.store import CandleStore
from pipelines.db import migrate, write_session
from pipelines.lifecycle.baselines import NAIVE_BASELINES, naive_probabilities
from pipelines.lifecycle.intervals import paired_interval
from pipelines.lifecycle.live import LiveFigures, live_figures
from pipelines.lifecycle.scores import log_losses, wilson_interval
from pipelines.settings import Settings
from service.history.store import PredictionHistory
from service.history.tables import PredictionRow
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
    pair: str = "BTC",
    baseline: Callable[[int], float | None] = lambda position: None,
) -> None:
    """One horizon-1 prediction per candle position, its probability chosen per position."""
    records = []
    for position in positions:
        p = probability(position)
        records.append(
            PredictionRecord(
                pair=pair,
                model_type="lstm",
                model_version=version,
                candle_time=candles.index[position],
                horizon=1,
                probability=p,
                direction="up" if p >= 0.5 else "down",
                signal="HOLD",
                unproven=False,
                created_at=1_000 + position,
                baseline_probability=baseline(position),
            )
        )
    history.record(records)


def _figures(
    history: PredictionHistory, store: CandleStore, pair: str = "BTC"
) -> dict[str, LiveFigures]:
    history.fill_outcomes(store=store, timeframe="1h")
    realised = history.realised_rows(pair=pair)
    return {f.model_version: f for f in live_figures(realised, store, pair=pair, timeframe="1h")}


def _wobbly(position: int) -> float:
    """A forecaster that knows nothing, deterministically: p in [0.3, 0.7]."""
    return 0.5 + 0.2 * float(np.sin(position * 1.7))


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
        assert loss.lag >= 1
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
        model = log_losses(np.array([_wobbly(i) for i in positions]), outcome)
        got = figures[version]
        assert got.candle_times == tuple(times.tolist())
        assert got.predictions == len(positions)
        for name in NAIVE_BASELINES:
            theirs = log_losses(naive[name], outcome)
            score = got.baselines[name]
            assert score.accuracy == float(np.mean((naive[name] >= 0.5) == (outcome == 1)))
            assert score.log_loss == pytest.approx(float(theirs.mean()))
            assert score.versus == paired_interval(model - theirs)
        assert got.best_baseline == min(
            NAIVE_BASELINES, key=lambda name: got.baselines[name].log_loss
        )
        assert got.versus_baseline.rows == len(positions)
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


def test_a_tie_is_recorded_as_such_and_left_out_of_every_figure(
    history: PredictionHistory, store: CandleStore, settings: Settings
) -> None:
    xmr = store.load("XMR")
    close = xmr["close"].to_numpy()
    end = len(xmr) - 1
    positions = list(range(end - 300, end))
    ties = [i for i in positions if close[i + 1] == close[i]]
    assert len(ties) >= 5  # real unchanged closes of the bundled candles
    # Confident "up" on every tie: were a tie scored as down, accuracy and log loss would move.
    _predict(
        history,
        xmr,
        positions,
        lambda i: 0.95 if i in ties else _wobbly(i),
        pair="XMR",
        baseline=lambda i: 0.45 if i % 3 else None,  # the shipped logistic, on some rows
    )

    figures = _figures(history, store, pair="XMR")["1"]

    decided = [i for i in positions if i not in ties]
    outcome = np.array([int(close[i + 1] > close[i]) for i in decided])
    p = np.array([_wobbly(i) for i in decided])
    assert figures.ties == len(ties)
    assert figures.predictions == len(decided)
    assert figures.correct == int(((p >= 0.5) == (outcome == 1)).sum())
    assert figures.log_loss.value == pytest.approx(float(log_losses(p, outcome).mean()))
    # The logistic shadow probabilities: scored where recorded, on decided candles only.
    shadow = [k for k, i in enumerate(decided) if i % 3]
    logistic = figures.baselines["logistic"]
    assert logistic.rows == len(shadow)
    assert logistic.log_loss == pytest.approx(
        float(log_losses(np.full(len(shadow), 0.45), outcome[shadow]).mean())
    )
    assert figures.to_json()["ties"] == len(ties)
    # The history answer says tie, neither up nor down.
    rows = {r["candleTime"]: r for r in history.recent(pair="XMR", limit=400)}
    tied = rows[epoch_ms(xmr.index[ties[0]])]
    assert (tied["outcome"], tied["tie"], tied["correct"]) == (None, True, None)
    assert history.fill_outcomes(store=store, timeframe="1h") == 0  # a tie is settled for good
