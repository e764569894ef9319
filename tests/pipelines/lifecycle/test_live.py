"""The live scorer on real candles: ties left out of every score, baselines on the same
candles, the shipped logistic where it was recorded, and one paired interval per baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.candles.store import CandleStore
from pipelines.lifecycle.baselines import NAIVE_BASELINES, naive_probabilities
from pipelines.lifecycle.intervals import paired_interval
from pipelines.lifecycle.live import RealisedRows, score
from pipelines.lifecycle.scores import log_losses, outcomes, wilson_interval
from tests.conftest import BUNDLED


@pytest.fixture(scope="module")
def xmr() -> pd.DataFrame:
    return CandleStore(bundled_dir=BUNDLED, data_dir=BUNDLED.parent / "none").load("XMR")


def _rows(candles: pd.DataFrame, positions: np.ndarray, *, logistic_from: int) -> RealisedRows:
    """Realised rows as the history gives them: decided candles only, ties counted."""
    close = candles["close"].to_numpy()
    y = outcomes(close[positions], close[positions + 1])
    keep = np.isfinite(y)
    rng = np.random.default_rng(0)
    p = np.clip(0.5 + 0.25 * (2 * np.nan_to_num(y) - 1) * rng.uniform(0, 1, y.size), 0.05, 0.95)
    p = np.where(rng.uniform(size=y.size) < 0.4, 1 - p, p)  # often wrong too
    times = pd.DatetimeIndex(candles.index[positions]).as_unit("ms").asi8
    logistic = np.full(y.size, np.nan)
    logistic[logistic_from:] = rng.uniform(0.4, 0.6, max(0, y.size - logistic_from))
    outcome = y[keep].astype(np.int8)
    return RealisedRows(
        model_type="lstm",
        model_version="3",
        candle_time=times[keep],
        probability=p[keep],
        outcome=outcome,
        correct=(p[keep] >= 0.5) == (outcome == 1),
        horizon=np.ones(int(keep.sum()), dtype=np.int64),
        baseline_probability=logistic[keep],
        ties=int((~keep).sum()),
    )


def test_figures_score_decided_candles_against_every_baseline_on_the_same_candles(
    xmr: pd.DataFrame,
) -> None:
    positions = np.arange(len(xmr) - 601, len(xmr) - 1)
    rows = _rows(xmr, positions, logistic_from=200)
    assert rows.ties > 10  # real unchanged closes in these candles

    figures = score(rows, xmr)

    assert figures is not None
    n = rows.candle_time.size
    assert figures.predictions == n
    assert figures.ties == rows.ties
    assert figures.correct == int(rows.correct.sum())
    assert figures.accuracy_interval == wilson_interval(figures.correct, n)
    losses = log_losses(rows.probability, rows.outcome)
    assert figures.log_loss.value == pytest.approx(losses.mean())
    naive = naive_probabilities(xmr, rows.candle_time, horizon=1)
    assert set(figures.baselines) == {*NAIVE_BASELINES, "logistic"}
    for name in NAIVE_BASELINES:
        theirs = log_losses(naive[name], rows.outcome)
        assert figures.baselines[name].log_loss == pytest.approx(theirs.mean()), name
        assert figures.baselines[name].versus == paired_interval(losses - theirs), name
    # The logistic counts only where it was recorded.
    recorded = np.isfinite(rows.baseline_probability)  # type: ignore[arg-type]
    assert 0 < recorded.sum() < n
    theirs = log_losses(rows.baseline_probability[recorded], rows.outcome[recorded])  # type: ignore[index]
    logistic = figures.baselines["logistic"]
    assert logistic.rows == int(recorded.sum())
    assert logistic.versus == paired_interval(losses[recorded] - theirs)
    times, differences = figures.differences("logistic")
    np.testing.assert_array_equal(times, rows.candle_time[recorded])
    np.testing.assert_allclose(differences, losses[recorded] - theirs)
    assert figures.best_baseline == min(
        NAIVE_BASELINES, key=lambda name: figures.baselines[name].log_loss
    )
    body = figures.to_json()
    assert body["ties"] == rows.ties
    assert body["logLoss"]["method"] == "newey-west"
    assert body["versusBaseline"]["baseline"] == figures.best_baseline
    assert body["versusBaseline"]["lag"] == figures.versus_baseline.lag
    assert body["baselines"]["logistic"]["rows"] == logistic.rows


def test_a_version_without_a_shipped_baseline_has_no_logistic_figure(xmr: pd.DataFrame) -> None:
    positions = np.arange(len(xmr) - 201, len(xmr) - 1)
    rows = _rows(xmr, positions, logistic_from=10**9)
    figures = score(rows, xmr)
    assert figures is not None
    assert set(figures.baselines) == set(NAIVE_BASELINES)


def test_candles_the_store_does_not_hold_are_left_out(xmr: pd.DataFrame) -> None:
    positions = np.arange(len(xmr) - 101, len(xmr) - 1)
    rows = _rows(xmr, positions, logistic_from=0)
    older = score(rows, xmr.iloc[: len(xmr) - 50])
    assert older is not None
    assert older.predictions == int((rows.candle_time <= older.candle_times[-1]).sum())
    assert older.predictions < rows.candle_time.size
    assert score(rows, xmr.iloc[:100]) is None
