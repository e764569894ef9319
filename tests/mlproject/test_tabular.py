"""The tabular model types: early stopping, the refit's rounds, the blend's weights, the baselines
each type must beat, and pooled rows that never reach past their span."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlproject import tabular
from mlproject.config import TrainConfig
from mlproject.data import Dataset, build_dataset, decided_rows, time_split
from mlproject.fold import fit_and_score, fit_and_score_folds, verdict_splits
from mlproject.scoring import VerdictRule, judge, required_baselines
from mlproject.tabular import Part, Pool
from pipelines.features.spec import default_spec
from pipelines.lifecycle.scores import log_losses
from pipelines.settings import NETWORK_TYPES, TABULAR_TYPES
from tests.conftest import stores_under


def _part(rows: int, *, seed: int, learnable: bool) -> Part:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 1, 6)).astype(np.float32)
    signal = np.where(x[:, 0, 0] > 0, x[:, 0, 1], -x[:, 0, 2]) if learnable else 0.0
    y = (signal + rng.normal(size=rows) > 0).astype(np.float32)
    return Part(x=x, y=y)


def test_lightgbm_stops_early_on_noise_and_boosts_on_until_a_rule_is_learnt() -> None:
    noise, noise_val = _part(3000, seed=0, learnable=False), _part(1000, seed=1, learnable=False)
    rule, rule_val = _part(3000, seed=2, learnable=True), _part(1000, seed=3, learnable=True)

    _, on_noise = tabular.fit_lightgbm(noise, noise_val, seed=0)
    learnt, on_rule = tabular.fit_lightgbm(rule, rule_val, seed=0)

    # Validation loss stops improving early on noise: early stopping ends the boosting
    # EARLY_STOPPING_ROUNDS after its best round, far before MAX_ROUNDS.
    assert on_noise.epochs_run == on_noise.best_epoch + 1 + tabular.EARLY_STOPPING_ROUNDS
    assert on_noise.best_epoch + 1 < 300
    assert on_rule.best_epoch + 1 > 3 * (on_noise.best_epoch + 1)
    assert learnt.rounds == on_rule.best_epoch + 1
    held = _part(1000, seed=4, learnable=True)
    assert np.mean(log_losses(learnt.predict(held.x), held.y)) < np.log(2) - 0.05


def test_a_refit_boosts_exactly_the_rounds_it_is_given() -> None:
    rule = _part(2000, seed=2, learnable=True)

    model, fit = tabular.fit_lightgbm(rule, None, seed=0, rounds=37)

    assert fit.epochs_run == 37
    assert model.rounds == 37
    assert "val_loss" not in fit.history


def test_the_blend_weight_is_the_one_of_lowest_validation_loss() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(4000) < 0.5).astype(float)
    truth = np.where(y == 1, 0.7, 0.3)
    useless = np.full(4000, 0.5)

    assert tabular.choose_weight(y, truth, useless)[0] == 1.0
    assert tabular.choose_weight(y, useless, truth)[0] == 0.0
    # Two equally informative, independent forecasts: the blend beats both alone.
    a = np.clip(truth + rng.normal(0, 0.15, 4000), 0.02, 0.98)
    b = np.clip(truth + rng.normal(0, 0.15, 4000), 0.02, 0.98)
    weight, losses = tabular.choose_weight(y, a, b)
    assert 0.2 <= weight <= 0.8
    assert losses[weight] < min(losses[0.0], losses[1.0])


def test_a_blend_refit_keeps_its_weights() -> None:
    rule, val = _part(2000, seed=2, learnable=True), _part(800, seed=3, learnable=True)
    first, _ = tabular.fit_blend(rule, val, seed=0)

    again, _ = tabular.fit_blend(rule, None, seed=0, rounds=first.rounds, weights=first.weights)

    assert again.weights == first.weights
    assert sum(first.weights) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="chooses its weights on validation rows"):
        tabular.fit_blend(rule, None, seed=0, rounds=10)


def test_networks_must_beat_lightgbm_and_tabular_types_are_not_judged_against_it() -> None:
    for kind in NETWORK_TYPES:
        assert "lightgbm" in required_baselines(kind)
    for kind in TABULAR_TYPES:
        assert set(required_baselines(kind)) == {"majority", "last_move", "logistic"}
    rng = np.random.default_rng(0)
    y = (rng.random(3000) < 0.5).astype(np.int8)
    good = np.where(y == 1, 0.6, 0.4)
    probas = {
        "model": good,
        "majority": np.full(3000, 0.5),
        "logistic": np.full(3000, 0.5),
        "lightgbm": np.where(y == 1, 0.7, 0.3),  # better than the model
    }
    rule = VerdictRule(margin=0.0)

    assert judge(y, probas, rule=rule).beats_baseline is False
    tabular_judgement = judge(y, probas, rule=rule, required=required_baselines("lightgbm"))
    assert tabular_judgement.beats_baseline is True
    assert tabular_judgement.strongest_baseline != "lightgbm"
    assert "lightgbm" in tabular_judgement.verdicts  # still scored and reported


@pytest.fixture(scope="module")
def pooled_datasets(btc_candles: pd.DataFrame) -> tuple[Dataset, Dataset]:
    spec = default_spec()
    btc = build_dataset(btc_candles, spec=spec, sequence_length=8, horizon=1, max_rows=1200)
    # A second "pair": BTC's candles starting later, so it lacks the oldest candles.
    other = build_dataset(
        btc_candles.iloc[-900:], spec=spec, sequence_length=8, horizon=1, max_rows=0
    )
    return btc, other


def test_pooled_rows_stay_inside_their_span_and_carry_the_pair_code(
    pooled_datasets: tuple[Dataset, Dataset],
) -> None:
    btc, other = pooled_datasets
    split = time_split(btc, val_fraction=0.15, test_fraction=0.15)
    scaler = tabular.fit_scaler_on(btc, split.train)
    pool = Pool(pair="BTC", pairs=("BTC", "ETH"), others={"ETH": other})
    end = btc.candles.index[split.train.stop - 1]

    parts = pool.parts(btc, scaler, split.train, start=None, end=end, scaled_until=end)
    rows = tabular.pooled_rows(parts, pool.pairs)

    eth = parts["ETH"]
    eth_rows = tabular.rows_between(other, None, end)
    assert len(eth.y) == len(decided_rows(other, eth_rows))
    assert other.candles.index[eth_rows.stop - 1] <= end
    assert len(rows.y) == len(parts["BTC"].y) + len(eth.y)
    assert set(np.unique(rows.x[:, -1])) == {0.0, 1.0}
    assert (rows.x[: len(parts["BTC"].y), -1] == 0.0).all()
    # A later candle of the other pair changes nothing of these rows (nor of their scaling).
    later = other.features.copy()
    later[eth_rows.stop + 5 :] += 100.0
    shifted = Pool(
        pair="BTC",
        pairs=("BTC", "ETH"),
        others={"ETH": dataclasses.replace(other, features=later)},
    )
    again = shifted.parts(btc, scaler, split.train, start=None, end=end, scaled_until=end)
    np.testing.assert_array_equal(again["ETH"].x, eth.x)


def test_a_pair_without_rows_in_the_span_is_left_out(
    pooled_datasets: tuple[Dataset, Dataset],
) -> None:
    btc, other = pooled_datasets
    split = time_split(btc, val_fraction=0.15, test_fraction=0.15)
    scaler = tabular.fit_scaler_on(btc, split.train)
    pool = Pool(pair="BTC", pairs=("BTC", "ETH"), others={"ETH": other})
    before_other = other.candles.index[0] - pd.Timedelta(hours=1)
    first = btc.candles.index[btc.samples.start]
    rows = range(btc.samples.start, int(btc.candles.index.searchsorted(before_other)))
    assert first <= before_other
    assert len(rows) > 10

    parts = pool.parts(btc, scaler, rows, start=None, end=before_other, scaled_until=before_other)

    assert set(parts) == {"BTC"}


def test_a_tabular_verdict_walks_forward_and_a_network_keeps_one_split(
    btc_candles: pd.DataFrame, tmp_path: Path
) -> None:
    settings = stores_under(tmp_path)
    full = build_dataset(btc_candles, spec=default_spec(), sequence_length=60, horizon=1)

    splits = verdict_splits(
        full, config=TrainConfig(pair="BTC", model_type="blend"), settings=settings
    )
    network = verdict_splits(
        full, config=TrainConfig(pair="BTC", model_type="lstm"), settings=settings
    )

    assert len(splits) == settings.verdict_folds == 6
    assert splits[-1].test.stop == full.samples.stop
    assert all(len(s.test) == settings.verdict_test_rows for s in splits)
    assert all(a.test.stop == b.test.start for a, b in itertools.pairwise(splits))
    assert all(s.train.stop <= s.test.start - full.gap for s in splits)
    assert len(network) == 1
    # Candles for three folds only: three; for none: the single split.
    short = build_dataset(
        btc_candles, spec=default_spec(), sequence_length=60, horizon=1, max_rows=9000
    )
    tiny = build_dataset(
        btc_candles, spec=default_spec(), sequence_length=12, horizon=1, max_rows=1500
    )
    assert (
        len(
            verdict_splits(
                short, config=TrainConfig(pair="BTC", model_type="lightgbm"), settings=settings
            )
        )
        == 3
    )
    assert (
        len(
            verdict_splits(
                tiny, config=TrainConfig(pair="BTC", model_type="lightgbm"), settings=settings
            )
        )
        == 1
    )


def test_the_folds_verdict_is_judged_on_every_folds_test_rows(
    btc_candles: pd.DataFrame, tmp_path: Path
) -> None:
    settings = stores_under(tmp_path, verdict_test_rows=300)
    dataset = build_dataset(
        btc_candles, spec=default_spec(), sequence_length=12, horizon=1, max_rows=2400
    )
    config = TrainConfig(pair="BTC", model_type="logistic", sequence_length=12)
    splits = verdict_splits(dataset, config=config, settings=settings)
    assert len(splits) == 6

    joined = fit_and_score_folds(dataset, splits, config=config, settings=settings)
    newest = fit_and_score(dataset, splits[-1], config=config, settings=settings)

    rows = sum(len(decided_rows(dataset, s.test)) for s in splits)
    assert joined.scores.y.size == rows == joined.raw_proba.size
    assert joined.split.test == range(splits[0].test.start, splits[-1].test.stop)
    assert joined.scores.verdict.rows == rows
    # The newest fold's model is the one kept: same predictions on its own test rows.
    np.testing.assert_allclose(
        joined.scores.predictions["model"].proba[-newest.scores.y.size :],
        newest.scores.predictions["model"].proba,
    )
