"""Permutation importance on synthetic windows whose informative feature and step are known."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from mlproject.importance import (
    METRIC_ABOVE_ZERO,
    METRIC_TOP1,
    ImportanceTable,
    log_importance,
    permutation_importance,
    plot_importance,
)

NAMES = ["unused", "step0", "signal", "noise"]
ROWS, STEPS = 2000, 5


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _windows(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((ROWS, STEPS, len(NAMES))).astype(np.float32)


def _labels(p: np.ndarray, seed: int = 2) -> np.ndarray:
    return (np.random.default_rng(seed).random(p.shape) < p).astype(np.int64)


def _last_step_model(x: np.ndarray) -> np.ndarray:
    # Reads "signal" and "noise" at the last step; the outcomes depend on "signal" only.
    return _sigmoid(2.0 * x[:, -1, 2] + 0.5 * x[:, -1, 3])


def _first_step_model(x: np.ndarray) -> np.ndarray:
    return _sigmoid(2.0 * x[:, 0, 1])


@pytest.fixture(scope="module")
def last_step() -> tuple[np.ndarray, np.ndarray, ImportanceTable]:
    x = _windows()
    y = _labels(_sigmoid(2.0 * x[:, -1, 2]))
    return x, y, permutation_importance(_last_step_model, x, y, names=NAMES, repeats=3, seed=0)


def _by_name(table: ImportanceTable) -> dict[str, tuple[float, float, float]]:
    return {f.name: (f.importance, f.low, f.high) for f in table.features}


def test_the_informative_feature_ranks_first_with_an_interval_above_zero(
    last_step: tuple[np.ndarray, np.ndarray, ImportanceTable],
) -> None:
    table = last_step[2]

    assert table.features[0].name == "signal"
    assert table.features[0].low > 0.1  # a logit of 2 x N(0, 1) is worth ~0.2 nats here
    assert [f.importance for f in table.features] == sorted(
        (f.importance for f in table.features), reverse=True
    )


def test_a_feature_the_outcomes_ignore_scores_about_zero_with_an_interval_holding_it(
    last_step: tuple[np.ndarray, np.ndarray, ImportanceTable],
) -> None:
    scores = _by_name(last_step[2])

    importance, low, high = scores["noise"]  # read by the model, useless for the outcomes
    assert abs(importance) < 0.02
    assert low < 0.0 < high
    assert scores["unused"] == (0.0, 0.0, 0.0)  # never read: permuting it changes nothing


def test_a_feature_read_at_the_first_step_of_the_window_is_detected() -> None:
    x = _windows(seed=3)
    y = _labels(_sigmoid(2.0 * x[:, 0, 1]))

    table = permutation_importance(_first_step_model, x, y, names=NAMES, repeats=2, seed=0)

    assert table.features[0].name == "step0"
    assert table.features[0].low > 0.1


def test_the_callers_windows_are_never_written() -> None:
    x = _windows(seed=4)
    y = _labels(_sigmoid(2.0 * x[:, -1, 2]))
    x_before, y_before = x.copy(), y.copy()
    untouched_during_calls = []

    def watching(batch: np.ndarray) -> np.ndarray:
        untouched_during_calls.append(np.array_equal(x, x_before))
        return _last_step_model(batch)

    permutation_importance(watching, x, y, names=NAMES, repeats=2, seed=0, max_rows=500)

    assert len(untouched_during_calls) == 1 + len(NAMES) * 2
    assert all(untouched_during_calls)
    assert np.array_equal(x, x_before)
    assert np.array_equal(y, y_before)


def test_the_same_seed_gives_the_same_table_and_another_seed_another() -> None:
    x = _windows(seed=5)
    y = _labels(_sigmoid(2.0 * x[:, -1, 2]))

    def run(seed: int) -> ImportanceTable:
        return permutation_importance(
            _last_step_model, x, y, names=NAMES, repeats=2, seed=seed, max_rows=800
        )

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_only_the_newest_rows_are_scored_one_batch_per_feature_and_repeat() -> None:
    x = _windows(seed=6)
    y = _labels(_sigmoid(2.0 * x[:, -1, 2]))
    batches: list[np.ndarray] = []

    def recording(batch: np.ndarray) -> np.ndarray:
        batches.append(batch.copy())
        return _last_step_model(batch)

    table = permutation_importance(recording, x, y, names=NAMES, repeats=3, seed=0, max_rows=300)

    assert table.rows == 300
    assert len(batches) == 1 + len(NAMES) * 3
    assert all(batch.shape == (300, STEPS, len(NAMES)) for batch in batches)
    assert np.array_equal(batches[0], x[-300:])


def test_a_permutation_moves_whole_histories_between_rows() -> None:
    x = _windows(seed=7)
    y = _labels(_sigmoid(2.0 * x[:, -1, 2]))
    batches: list[np.ndarray] = []

    def recording(batch: np.ndarray) -> np.ndarray:
        batches.append(batch.copy())
        return _last_step_model(batch)

    permutation_importance(recording, x, y, names=NAMES, repeats=1, seed=0, max_rows=200)

    original = x[-200:]
    permuted = batches[1 + NAMES.index("signal")]
    # Each row's "signal" history is some other row's, whole; the other features stay put.
    rows = {tuple(history) for history in original[:, :, 2]}
    assert all(tuple(history) in rows for history in permuted[:, :, 2])
    assert not np.array_equal(permuted[:, :, 2], original[:, :, 2])
    assert np.array_equal(np.delete(permuted, 2, axis=2), np.delete(original, 2, axis=2))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"names": NAMES[:3]}, "names must be 4 distinct"),
        ({"names": ["a", "a", "b", "c"]}, "names must be 4 distinct"),
        ({"repeats": 0}, "repeats must be an integer of at least 1"),
        ({"max_rows": 1}, "max_rows must be an integer of at least 2"),
    ],
)
def test_bad_arguments_are_named(change: dict[str, object], words: str) -> None:
    x = _windows(seed=8)[:50]
    y = _labels(_sigmoid(x[:, -1, 2]))
    arguments: dict[str, object] = {"names": NAMES, "repeats": 1, "max_rows": 50} | change

    with pytest.raises(ValueError, match=words):
        permutation_importance(_last_step_model, x, y, **arguments)  # type: ignore[arg-type]


def test_a_predict_of_the_wrong_shape_is_named() -> None:
    x = _windows(seed=9)[:50]
    y = _labels(_sigmoid(x[:, -1, 2]))

    with pytest.raises(ValueError, match=r"predict must return one probability per row"):
        permutation_importance(lambda b: _last_step_model(b)[:, None], x, y, names=NAMES)


def test_the_table_reads_as_a_frame_and_as_json(
    last_step: tuple[np.ndarray, np.ndarray, ImportanceTable],
) -> None:
    table = last_step[2]

    frame = table.to_frame()
    record = json.loads(json.dumps(table.to_dict()))

    assert list(frame.columns) == ["name", "importance", "sd", "low", "high"]
    assert list(frame["name"]) == [f.name for f in table.features]
    assert [f["name"] for f in record["features"]] == list(frame["name"])
    assert record["rows"] == ROWS
    assert record["repeats"] == 3
    assert [f.name for f in table.top(2)] == list(frame["name"][:2])


def test_the_plot_is_a_png(
    last_step: tuple[np.ndarray, np.ndarray, ImportanceTable], tmp_path: Path
) -> None:
    path = plot_importance(last_step[2], tmp_path / "deep" / "importance.png", top=3)

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def tracking_uri(tmp_path: Path) -> Iterator[str]:
    """The tracking URI points at a SQLite store in tmp_path, and back afterwards."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.fixture
def experiment(tracking_uri: str, tmp_path: Path) -> str:
    """An experiment of that store, its artifacts in tmp_path."""
    client = MlflowClient(tracking_uri=tracking_uri)
    return client.create_experiment("imp", artifact_location=(tmp_path / "a").as_uri())


def test_log_importance_writes_the_table_the_plot_and_metrics_to_the_active_run(
    last_step: tuple[np.ndarray, np.ndarray, ImportanceTable],
    experiment: str,
    tmp_path: Path,
) -> None:
    table = last_step[2]

    with mlflow.start_run(experiment_id=experiment) as run:
        written = log_importance(table)

    client = MlflowClient()
    listed = {a.path for a in client.list_artifacts(run.info.run_id, "importance")}
    assert (
        listed
        == set(written)
        == {
            "importance/permutation_importance.csv",
            "importance/permutation_importance.json",
            "importance/permutation_importance.png",
        }
    )
    local = Path(client.download_artifacts(run.info.run_id, "importance", str(tmp_path / "dl")))
    csv = pd.read_csv(local / "permutation_importance.csv")
    assert list(csv["name"]) == [f.name for f in table.features]
    assert csv["importance"].tolist() == pytest.approx([f.importance for f in table.features])
    stored = json.loads((local / "permutation_importance.json").read_text())
    assert stored == json.loads(json.dumps(table.to_dict()))
    assert (local / "permutation_importance.png").read_bytes()[:4] == b"\x89PNG"
    metrics = client.get_run(run.info.run_id).data.metrics
    assert metrics[METRIC_TOP1] == pytest.approx(table.features[0].importance)
    assert metrics[METRIC_ABOVE_ZERO] == sum(f.low > 0 for f in table.features)


def test_log_importance_refuses_without_an_active_run(
    last_step: tuple[np.ndarray, np.ndarray, ImportanceTable], tracking_uri: str
) -> None:
    assert mlflow.active_run() is None

    with pytest.raises(RuntimeError, match="needs an active MLflow run"):
        log_importance(last_step[2])
