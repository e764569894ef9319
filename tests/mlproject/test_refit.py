"""The refit: after its held-out verdict a training registers the model refitted on every sample
but the newest `ML_GATE_MIN_ROWS`, which it never learns and on which the gate scores it.

Two tiny real trainings on the newest 400 BTC candles into one temporary tracking store: the
first with the refit (the default, `ML_REFIT`), registered as version 1; the second with
`ML_REFIT=false`, registered as version 2 without gating. The gate is then run between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from mlproject.config import TrainConfig
from mlproject.data import NotEnoughDataError, decided_rows
from mlproject.gate import apply_gate
from mlproject.scoring import MODEL, WindowScore, score_bundle
from mlproject.train import TrainingOutcome, _refit_rows, load_dataset, train
from mlproject.verdict import PREDICTIONS_ARTIFACT, TIMESTAMP
from pipelines.lifecycle.scores import log_loss
from pipelines.modelbundle import ModelBundle, download_bundle
from pipelines.settings import Settings
from tests.conftest import stores_under

pytestmark = pytest.mark.slow

NAME = "BTC-lstm"
HOLD = 100  # ML_GATE_MIN_ROWS, the default
SMALL: dict[str, Any] = {
    "pair": "BTC",
    "epochs": 3,
    "sequence_length": 12,
    "units": 8,
    "layers": 1,
    "max_rows": 400,
}


@dataclass(frozen=True)
class Trained:
    settings: Settings
    client: MlflowClient
    refit: TrainingOutcome  # version 1
    held_out: TrainingOutcome  # version 2, trained with ML_REFIT=false
    root: Path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("refit")
    settings = stores_under(root)
    assert settings.refit is True  # the default
    assert settings.gate_min_rows == HOLD
    refit = train(TrainConfig(**SMALL), settings=settings)
    held_out = train(
        TrainConfig(**SMALL, promote=False), settings=settings.model_copy(update={"refit": False})
    )
    return Trained(settings, MlflowClient(settings.tracking_uri), refit, held_out, root)


def _bundle(trained: Trained, version: str) -> ModelBundle:
    return download_bundle(
        trained.client, name=NAME, version=version, dst=trained.root / f"bundle-{version}"
    )


def _held_out_predictions(trained: Trained, run_id: str) -> pd.DataFrame:
    path = trained.client.download_artifacts(
        run_id, PREDICTIONS_ARTIFACT, str(trained.root / f"verdict-{run_id}")
    )
    frame = pd.read_csv(path)
    frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP], utc=True)
    return frame


def _rows(window: dict[str, Any], candles: pd.DataFrame, horizon: int = 1) -> pd.DatetimeIndex:
    """The candles of `window` whose close moved over the horizon (ties are no rows)."""
    index = candles.index
    inside = (index >= pd.Timestamp(window["start"])) & (index <= pd.Timestamp(window["end"]))
    close = candles["close"].to_numpy()
    positions = np.flatnonzero(inside)
    moved = close[positions + horizon] != close[positions]
    return pd.DatetimeIndex(index[positions[moved]])


def _score(bundle: ModelBundle, candles: pd.DataFrame, rows: pd.DatetimeIndex) -> WindowScore:
    return score_bundle(bundle, candles=candles, timestamps=rows, horizon=bundle.horizon)


def test_the_refit_rows_hold_out_the_newest_samples_and_a_horizon_before_them(
    trained: Trained,
) -> None:
    for horizon in (1, 3):
        config = TrainConfig(**{**SMALL, "horizon": horizon})
        dataset = load_dataset(config, settings=trained.settings, max_rows=400)

        learnt, held = _refit_rows(dataset, hold=HOLD)

        assert held.stop == dataset.samples.stop
        assert len(decided_rows(dataset, held)) == HOLD
        assert learnt.start == dataset.samples.start
        # The last learnt label (horizon candles after the last learnt row) precedes `held`.
        assert learnt.stop - 1 + horizon == held.start - 1


def test_a_refit_without_room_for_its_held_rows_fails_naming_the_numbers(
    trained: Trained,
) -> None:
    dataset = load_dataset(TrainConfig(**SMALL), settings=trained.settings, max_rows=400)
    samples = len(decided_rows(dataset, dataset.samples))

    with pytest.raises(NotEnoughDataError, match=f"holds out the newest {samples - 5}") as error:
        _refit_rows(dataset, hold=samples - 5)
    assert "ML_GATE_MIN_ROWS" in str(error.value)
    assert f"{samples} samples (ties dropped)" in str(error.value)
    # A training fails so before it fits anything (no run is left behind).
    settings = trained.settings.model_copy(update={"gate_min_rows": samples})
    with pytest.raises(NotEnoughDataError, match="not enough candles to refit"):
        train(TrainConfig(**SMALL), settings=settings)


def test_the_registered_refit_never_learnt_its_test_window(
    trained: Trained, btc_candles: pd.DataFrame
) -> None:
    assert trained.refit.version == "1"
    meta = _bundle(trained, "1").metadata
    index = btc_candles.index
    window = meta["test_window"]

    assert meta["refit"] is True
    # Its test window is the newest samples (horizon 1: through the candle before the newest),
    # HOLD of them with an outcome; the last label it learnt is the candle before them.
    assert pd.Timestamp(window["end"]) == index[-2]
    assert len(_rows(window, btc_candles)) == HOLD
    first = int(index.searchsorted(pd.Timestamp(window["start"])))
    assert pd.Timestamp(meta["fit_end"]) == index[first - 1]
    assert pd.Timestamp(meta["refit_window"]["end"]) == index[first - 2]
    # The held-out model's record stays, with its own window and fit_end.
    held_out = meta["held_out"]
    assert pd.Timestamp(held_out["fit_end"]) < pd.Timestamp(held_out["test_window"]["start"])
    assert held_out["test_window"]["end"] == window["end"]
    version = trained.client.get_model_version(NAME, "1")
    assert version.tags["tbml.refit"] == "true"
    assert str(version.description).startswith("Refit (newest samples held out for the gate)")


def test_the_refit_has_no_calibrator_of_its_own_nor_the_held_out_models(
    trained: Trained,
) -> None:
    bundle = _bundle(trained, "1")

    assert bundle.calibrator.method == "none"
    assert bundle.calibrator.rows == 0
    calibration = bundle.metadata["calibration"]
    assert calibration["method"] == "none"
    assert calibration["kept"] is False
    assert "never borrows the held-out model's" in calibration["reason"]
    # What the held-out model was asked and kept is still recorded beside it.
    assert calibration["held_out"]["mode"] == trained.settings.calibration


def test_the_run_logs_the_refit_beside_the_held_out_record(
    trained: Trained, btc_candles: pd.DataFrame
) -> None:
    run = trained.client.get_run(trained.refit.run_id)
    best_epoch = int(run.data.metrics["best_epoch"])
    refit_epochs = best_epoch + 1  # the epochs whose weights the held-out run kept

    assert run.data.params["refit"] == "true"
    assert run.data.params["refit_epochs"] == str(refit_epochs)
    history = trained.client.get_metric_history(run.info.run_id, "refit_loss")
    assert [m.step for m in history] == list(range(refit_epochs))
    assert run.data.metrics["refit_final_loss"] == history[-1].value
    assert run.data.metrics["refit_held_rows"] == HOLD
    meta = _bundle(trained, "1").metadata
    assert meta["refit_epochs"] == refit_epochs
    assert run.data.tags["refit_data_end"] == meta["fit_end"]
    assert run.data.tags["refit_data_start"] == meta["refit_window"]["data_start"]
    # The run read every candle through the newest; its held-out record is still the run's.
    assert run.data.tags["data_range"].endswith(btc_candles.index[-1].isoformat())
    assert "test_log_loss" in run.data.metrics
    assert meta["test_metrics"]["log_loss"] == run.data.metrics["test_log_loss"]


def test_the_refit_predicts_otherwise_than_the_held_out_model(
    trained: Trained, btc_candles: pd.DataFrame
) -> None:
    bundle = _bundle(trained, "1")
    held_out = _held_out_predictions(trained, trained.refit.run_id)
    scored = _score(bundle, btc_candles, pd.DatetimeIndex(held_out[TIMESTAMP]))

    assert not np.allclose(scored.proba, held_out[MODEL].to_numpy(), atol=1e-3)


def test_without_refit_the_registered_model_is_the_held_out_one_ending_at_validation(
    trained: Trained, btc_candles: pd.DataFrame
) -> None:
    bundle = _bundle(trained, "2")
    meta = bundle.metadata
    run = trained.client.get_run(trained.held_out.run_id)

    assert meta["refit"] is False
    assert "held_out" not in meta
    assert pd.Timestamp(meta["fit_end"]) < pd.Timestamp(meta["test_window"]["start"])
    assert pd.Timestamp(meta["fit_end"]) == pd.Timestamp(meta["val_window"]["end"]) + pd.Timedelta(
        hours=1
    )
    assert run.data.params["refit"] == "false"
    assert "refit_final_loss" not in run.data.metrics
    assert "refit_data_end" not in run.data.tags
    assert trained.client.get_model_version(NAME, "2").tags["tbml.refit"] == "false"
    # Its bundle gives the run's held-out predictions.
    held_out = _held_out_predictions(trained, trained.held_out.run_id)
    scored = _score(bundle, btc_candles, pd.DatetimeIndex(held_out[TIMESTAMP]))
    np.testing.assert_allclose(scored.proba, held_out[MODEL].to_numpy(), atol=1e-5)


def test_the_gate_scores_the_refit_itself_on_rows_it_never_learnt(
    trained: Trained, btc_candles: pd.DataFrame
) -> None:
    client = trained.client
    refit = _bundle(trained, "1")
    production = _bundle(trained, "2")
    window = _rows(refit.metadata["test_window"], btc_candles)
    assert len(window) == HOLD
    assert window[0] > pd.Timestamp(refit.metadata["fit_end"])
    # The held-out production version learnt labels into the refit's test window, so only the
    # rows after its fit_end are compared (these tiny trainings leave fewer than HOLD).
    rows = window[window > pd.Timestamp(production.metadata["fit_end"])]
    assert 10 <= len(rows) < HOLD
    settings = trained.settings.model_copy(
        update={"promotion_mode": "offline", "gate_min_rows": len(rows)}
    )
    apply_gate(client, name=NAME, version="2", candles=btc_candles, settings=settings, force=True)

    # The refit challenger against it: compared through its own bundle on its own test window.
    decision = apply_gate(client, name=NAME, version="1", candles=btc_candles, settings=settings)

    assert decision.rows == len(rows)
    assert decision.verdict is not None
    assert decision.verdict.rows == len(rows)
    own = _score(refit, btc_candles, rows)
    assert decision.challenger == pytest.approx(log_loss(own.proba, own.y), abs=1e-9)
    held_out = _held_out_predictions(trained, trained.refit.run_id)
    on_held_out = held_out[held_out[TIMESTAMP].isin(rows)]
    assert decision.challenger != pytest.approx(
        log_loss(on_held_out[MODEL].to_numpy(), on_held_out["outcome"].to_numpy()), abs=1e-6
    )

    # With the refit in production, a challenger is compared on the rows after its fit_end:
    # the held-out version's test window lies wholly after it, so every one of those rows.
    apply_gate(client, name=NAME, version="1", candles=btc_candles, settings=settings, force=True)
    challenger_rows = _rows(production.metadata["test_window"], btc_candles)
    assert challenger_rows[0] > pd.Timestamp(refit.metadata["fit_end"])
    lowered = settings.model_copy(update={"gate_min_rows": len(challenger_rows)})
    again = apply_gate(client, name=NAME, version="2", candles=btc_candles, settings=lowered)

    assert again.rows == len(challenger_rows)
    assert again.verdict is not None
