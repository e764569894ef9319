"""The naive live baselines on real candles (ties included), and the logistic baseline that
ships in the bundle: the run's own logistic, saved, loaded and scored on raw windows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.candles.store import CandleStore
from pipelines.features.scaler import FeatureScaler
from pipelines.features.spec import default_spec
from pipelines.lifecycle.baselines import NAIVE_BASELINES, naive_probabilities
from pipelines.modelbundle import BASELINE_FILE, BundleError, LogisticBaseline, ModelBundle
from tests.conftest import BUNDLED
from tests.pipelines.test_modelbundle import LENGTH, _mean_sigmoid_onnx


def _candles(pair: str) -> pd.DataFrame:
    return CandleStore(bundled_dir=BUNDLED, data_dir=BUNDLED.parent / "none").load(pair)


def _times(candles: pd.DataFrame, positions: np.ndarray) -> np.ndarray:
    return pd.DatetimeIndex(candles.index[positions]).as_unit("ms").asi8


@pytest.mark.parametrize("horizon", [1, 4])
def test_naive_baselines_never_look_ahead(horizon: int) -> None:
    frame = _candles("BTC").iloc[-3000:].copy()
    positions = np.arange(0, len(frame), 7)
    cut = 1500  # candles after this position change; probabilities up to it must not
    before = naive_probabilities(frame, _times(frame, positions), horizon=horizon, lookback=300)

    changed = frame.copy()
    rng = np.random.default_rng(0)
    close = changed["close"].to_numpy(copy=True)
    close[cut + 1 :] *= rng.uniform(0.5, 1.5, size=len(frame) - cut - 1)
    changed["close"] = close
    after = naive_probabilities(changed, _times(frame, positions), horizon=horizon, lookback=300)

    upto = positions <= cut
    for name in NAIVE_BASELINES:
        np.testing.assert_array_equal(before[name][upto], after[name][upto])
    # ...and the change is visible later, so the comparison above could have failed
    assert not np.array_equal(before["base_rate"][~upto], after["base_rate"][~upto])


@pytest.mark.parametrize("horizon", [1, 3])
def test_naive_baselines_follow_their_definitions_and_count_no_tie(horizon: int) -> None:
    # XMR's hourly closes are often unchanged: ties in the windows below are real.
    frame = _candles("XMR").iloc[-1000:]
    close = frame["close"].to_numpy()
    ties = int((close[horizon:] == close[:-horizon]).sum())
    assert ties > 20  # the wrong rule (a tie as down) would change the rates below
    lookback = 50
    positions = np.array([0, 1, horizon, 2 * horizon, 10, 49, 50, 51, 400, 700, 999])

    naive = naive_probabilities(frame, _times(frame, positions), horizon=horizon, lookback=lookback)

    def move(j: int) -> int | None:  # the outcome of candle j: up 1, down 0, tie None
        a, b = close[j], close[j + horizon]
        return 1 if b > a else 0 if b < a else None

    for k, i in enumerate(positions):
        window = range(max(0, i - lookback), i - horizon + 1)
        decided = [int(m) for m in (move(j) for j in window) if m is not None]
        base = np.mean(decided) if decided else 0.5
        repeats = [
            move(j) == move(j - horizon)
            for j in range(max(horizon, i - lookback + horizon), i - horizon + 1)
            if move(j) is not None and move(j - horizon) is not None
        ]
        rate = np.mean(repeats) if repeats else 0.5
        last = None if i < horizon else move(i - horizon)
        expected_last = 0.5 if last is None else (rate if last == 1 else 1 - rate)
        assert naive["coin"][k] == 0.5
        assert naive["base_rate"][k] == pytest.approx(np.clip(base, 0.01, 0.99)), i
        assert naive["last_move"][k] == pytest.approx(np.clip(expected_last, 0.01, 0.99)), i


def test_naive_probabilities_refuse_unknown_times_and_bad_arguments() -> None:
    frame = _candles("BTC").iloc[-100:]
    known = _times(frame, np.array([5, 10]))
    with pytest.raises(ValueError, match="1 candle time"):
        naive_probabilities(frame, np.append(known, known[-1] + 1), horizon=1)
    with pytest.raises(ValueError, match="horizon must be an integer of at least 1, got 0"):
        naive_probabilities(frame, known, horizon=0)
    with pytest.raises(ValueError, match="lookback must be an integer of at least 1, got 0"):
        naive_probabilities(frame, known, horizon=1, lookback=0)
    with pytest.raises(ValueError, match="sorted"):
        naive_probabilities(frame.iloc[::-1], known, horizon=1)


# --- the shipped logistic baseline ---------------------------------------------------------


def _bundle(tmp_path: Path, *, baseline: LogisticBaseline | None) -> ModelBundle:
    spec = default_spec()
    rng = np.random.default_rng(0)
    scaler = FeatureScaler.fit(rng.normal(3.0, 2.0, size=(200, len(spec.names))), names=spec.names)
    metadata = {"pair": "BTC", "model_type": "lstm", "sequence_length": LENGTH, "horizon": 1}
    return ModelBundle(
        onnx_path=_mean_sigmoid_onnx(tmp_path / "source.onnx", len(spec.names)),
        scaler=scaler,
        spec=spec,
        metadata=metadata,
        baseline=baseline,
    )


def _logistic(names: tuple[str, ...], seed: int = 1) -> LogisticBaseline:
    rng = np.random.default_rng(seed)
    return LogisticBaseline(names=names, coef=rng.normal(0, 0.3, len(names)), intercept=0.2)


def test_a_bundle_ships_its_logistic_baseline_and_scores_the_last_step_of_raw_windows(
    tmp_path: Path,
) -> None:
    names = tuple(default_spec().names)
    saved = _bundle(tmp_path, baseline=_logistic(names))
    loaded = ModelBundle.load(saved.save(tmp_path / "bundle"))
    windows = np.random.default_rng(2).normal(3.0, 2.0, size=(6, LENGTH, len(names)))

    p = loaded.baseline_proba(windows)

    assert loaded.baseline is not None
    assert p is not None
    z = saved.scaler.transform(windows[:, -1, :]).astype(np.float64)
    expected = 1.0 / (1.0 + np.exp(-(z @ saved.baseline.coef + 0.2)))  # type: ignore[union-attr]
    np.testing.assert_allclose(p, expected, rtol=1e-12)
    # Only the last step counts: changing an earlier one changes nothing, the last one does.
    earlier = windows.copy()
    earlier[:, 0, :] += 5.0
    np.testing.assert_array_equal(loaded.baseline_proba(earlier), p)
    later = windows.copy()
    later[:, -1, :] += 5.0
    assert not np.allclose(loaded.baseline_proba(later), p)  # type: ignore[arg-type]
    assert json.loads((tmp_path / "bundle" / BASELINE_FILE).read_text())["kind"] == "logistic"


def test_a_bundle_without_a_baseline_loads_and_offers_none(tmp_path: Path) -> None:
    loaded = ModelBundle.load(_bundle(tmp_path, baseline=None).save(tmp_path / "bundle"))
    assert loaded.baseline is None
    assert not (tmp_path / "bundle" / BASELINE_FILE).exists()
    assert loaded.baseline_proba(np.zeros((1, LENGTH, len(loaded.spec.names)))) is None


def test_a_baseline_of_other_features_or_a_broken_file_is_refused(tmp_path: Path) -> None:
    names = tuple(default_spec().names)
    directory = _bundle(tmp_path, baseline=_logistic(names)).save(tmp_path / "bundle")
    other = _logistic((*names[1:], "something_else"))
    (directory / BASELINE_FILE).write_text(json.dumps(other.to_dict()))
    with pytest.raises(BundleError, match="baseline's features differ"):
        ModelBundle.load(directory)
    (directory / BASELINE_FILE).write_text('{"kind": "logistic", "names": []}')
    with pytest.raises(BundleError, match=r"baseline\.json is invalid"):
        ModelBundle.load(directory)


def test_the_shipped_baseline_is_the_logistic_the_run_scores_on_its_test_rows() -> None:
    from mlproject.data import build_dataset, decided_rows, fit_scaler, time_split
    from mlproject.export import logistic_baseline
    from mlproject.scoring import fit_baselines

    dataset = build_dataset(
        _candles("BTC"), spec=default_spec(), sequence_length=12, horizon=1, max_rows=1500
    )
    split = time_split(dataset, val_fraction=0.15, test_fraction=0.2)
    scaler = fit_scaler(dataset, split)

    shipped = logistic_baseline(dataset, split.train, scaler, seed=0)
    scored = fit_baselines(dataset, split, scaler, seed=0)["logistic"].proba

    last = scaler.transform(dataset.features[decided_rows(dataset, split.test)])
    np.testing.assert_allclose(shipped.proba(last), scored, rtol=1e-9, atol=1e-12)
    assert scored.std() > 0.005  # probabilities that vary: a constant would not tell them apart
