"""Permutation feature importance: how much worse the model scores when one feature is shuffled.

For each feature, its values are permuted across rows, with the same row permutation applied at
every step of the window: each window keeps its own time structure but carries another row's
history of that feature, so a model that reads any step (a network) or only the last one
(logistic regression, LightGBM) is measured alike. The importance is the increase of mean log
loss (nats) over the unpermuted rows, averaged over a few permutations; the paired interval of
the per-row increase tells which importances are distinguishable from zero.

The interval is conditional on the permutations drawn and states nothing about retraining
without the feature: a feature whose information another feature also carries can score ~0.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mlproject.plots import DPI
from pipelines.lifecycle.intervals import LEVEL, paired_interval
from pipelines.lifecycle.scores import log_losses

logger = logging.getLogger(__name__)

ARTIFACT_DIR = "importance"
ARTIFACT_STEM = "permutation_importance"
METRIC_TOP1 = "importance_top1_nats"
METRIC_ABOVE_ZERO = "importance_features_above_zero"
COLUMNS = ("name", "importance", "sd", "low", "high")

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class FeatureImportance:
    """One feature: mean increase of log loss when permuted (nats), its spread and interval.

    `sd` is the standard deviation over repeats of the increase of mean log loss; `low`/`high`
    bound the mean per-row increase (paired interval over rows, in time order).
    """

    name: str
    importance: float
    sd: float
    low: float
    high: float

    @property
    def above_zero(self) -> bool:
        """The whole interval lies above zero: permuting the feature surely costs loss."""
        return self.low > 0.0


@dataclass(frozen=True)
class ImportanceTable:
    """Permutation importances, most important first, and what they were measured on."""

    features: tuple[FeatureImportance, ...]
    baseline_log_loss: float  # mean log loss of the unpermuted rows
    rows: int
    repeats: int
    seed: int
    level: float = LEVEL

    def top(self, k: int) -> tuple[FeatureImportance, ...]:
        """The `k` most important features."""
        if k < 0:
            raise ValueError(f"k must be at least 0, got {k!r}")
        return self.features[:k]

    def to_frame(self) -> pd.DataFrame:
        """One row per feature, most important first: name, importance, sd, low, high."""
        return pd.DataFrame(
            [[getattr(f, column) for column in COLUMNS] for f in self.features],
            columns=list(COLUMNS),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the settings, the baseline loss and the features in order."""
        return {
            "method": "permutation (same row permutation at every step of the window)",
            "interval": "newey-west t-interval of the per-row increase, mean over repeats",
            "loss": "log loss (nats)",
            "baseline_log_loss": self.baseline_log_loss,
            "rows": self.rows,
            "repeats": self.repeats,
            "seed": self.seed,
            "level": self.level,
            "features": [{column: getattr(f, column) for column in COLUMNS} for f in self.features],
        }


def permutation_importance(
    predict: Predict,
    x: np.ndarray,
    y: np.ndarray,
    *,
    names: Sequence[str],
    repeats: int = 3,
    seed: int = 0,
    max_rows: int = 5000,
) -> ImportanceTable:
    """Permutation importance of each feature of the windows `x` (rows, steps, features).

    Args:
        predict: maps windows (n, L, F) to probabilities of up (n,); called once on the
            unpermuted rows and once per feature and repeat, each time on all rows.
        x: scaled windows in time order, oldest first; left unchanged.
        y: 0/1 outcomes of the rows.
        names: the F feature names, in the order of the last axis of `x`.
        repeats: permutations per feature, averaged.
        seed: seeds the numpy Generator that draws the permutations.
        max_rows: only the newest `max_rows` rows are used.
    """
    windows = np.asarray(x)
    labels = np.asarray(y)
    if windows.ndim != 3:
        raise ValueError(f"x must be windows of shape (rows, steps, features), got {windows.shape}")
    if len(names) != windows.shape[2] or len(set(names)) != len(names):
        raise ValueError(
            f"names must be {windows.shape[2]} distinct feature names (one per feature of x), "
            f"got {len(names)}: {list(names)!r}"
        )
    if labels.shape != (windows.shape[0],):
        raise ValueError(
            f"y must hold one outcome per row of x, shape {(windows.shape[0],)}, got {labels.shape}"
        )
    _check_count("repeats", repeats, least=1)
    _check_count("max_rows", max_rows, least=2)
    n = min(windows.shape[0], max_rows)
    if n < 2:
        raise ValueError(f"x has {windows.shape[0]} rows: permutation importance needs at least 2")

    started = time.perf_counter()
    # Copies: the caller's arrays are never written, not even for a moment.
    original = np.array(windows[-n:], copy=True)
    work = original.copy()
    labels = np.array(labels[-n:], copy=True)
    baseline = _losses(predict, work, labels)
    rng = np.random.default_rng(seed)
    features = []
    for f, name in enumerate(names):
        increases = np.empty((repeats, n))
        for r in range(repeats):
            work[:, :, f] = original[rng.permutation(n), :, f]
            increases[r] = _losses(predict, work, labels) - baseline
            work[:, :, f] = original[:, :, f]
        per_repeat = increases.mean(axis=1)
        verdict = paired_interval(increases.mean(axis=0))
        features.append(
            FeatureImportance(
                name=str(name),
                importance=float(per_repeat.mean()),
                sd=float(per_repeat.std(ddof=1)) if repeats > 1 else 0.0,
                low=verdict.low,
                high=verdict.high,
            )
        )
    features.sort(key=lambda item: -item.importance)  # stable: ties keep the feature order
    logger.info(
        "permutation importance of %d features on %d rows x %d repeats in %.1f s",
        len(features),
        n,
        repeats,
        time.perf_counter() - started,
    )
    return ImportanceTable(
        features=tuple(features),
        baseline_log_loss=float(baseline.mean()),
        rows=n,
        repeats=repeats,
        seed=seed,
    )


def _check_count(label: str, value: int, *, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        raise ValueError(f"{label} must be an integer of at least {least}, got {value!r}")


def _losses(predict: Predict, windows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    proba = np.asarray(predict(windows), dtype=np.float64)
    if proba.shape != labels.shape:
        raise ValueError(
            f"predict must return one probability per row, shape {labels.shape}, got {proba.shape}"
        )
    return log_losses(proba, labels)


def plot_importance(table: ImportanceTable, path: Path, *, top: int = 20) -> Path:
    """Horizontal bars of the `top` most important features, their intervals as error bars.

    Features whose interval lies above zero are drawn in colour, the others in grey.
    """
    shown = table.top(top)
    fig = Figure(figsize=(7.0, 1.2 + 0.28 * max(len(shown), 1)), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    positions = np.arange(len(shown))
    values = np.array([f.importance for f in shown])
    errors = np.array(
        [[f.importance - f.low for f in shown], [f.high - f.importance for f in shown]]
    )
    ax.barh(
        positions,
        values,
        xerr=np.where(np.isfinite(errors), errors, 0.0),  # one row has no finite interval
        color=["tab:blue" if f.above_zero else "tab:gray" for f in shown],
        error_kw={"lw": 0.8, "capsize": 2},
    )
    ax.set_yticks(positions, [f.name for f in shown], fontsize=8)
    ax.invert_yaxis()  # the most important on top
    ax.axvline(0.0, color="black", lw=0.6)
    ax.set_xlabel("increase of log loss when permuted (nats)")
    ax.set_title(
        f"permutation importance: {table.rows} rows, {table.repeats} repeats, "
        f"{table.level * 100:g} % intervals (blue: above zero)",
        fontsize=9,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def log_importance(table: ImportanceTable, *, artifact_dir: str = ARTIFACT_DIR) -> list[str]:
    """Log the table (CSV, JSON), its plot (PNG) and two metrics to the active MLflow run.

    The CSV shows as a table in the run's artifact viewer. Metrics: the top importance
    (nats) and the number of features whose interval lies above zero. Returns the artifact
    paths written, relative to the run's artifact root.
    """
    if mlflow.active_run() is None:
        raise RuntimeError("log_importance needs an active MLflow run (inside mlflow.start_run())")
    stem = f"{artifact_dir}/{ARTIFACT_STEM}"
    mlflow.log_text(table.to_frame().to_csv(index=False), f"{stem}.csv")
    mlflow.log_dict(table.to_dict(), f"{stem}.json")
    with tempfile.TemporaryDirectory(prefix="tbml-importance-") as tmp:
        png = plot_importance(table, Path(tmp) / f"{ARTIFACT_STEM}.png")
        mlflow.log_artifact(str(png), artifact_dir)
    metrics = {METRIC_ABOVE_ZERO: float(sum(f.above_zero for f in table.features))}
    if table.features and math.isfinite(table.features[0].importance):
        metrics[METRIC_TOP1] = table.features[0].importance
    mlflow.log_metrics(metrics)
    return [f"{stem}.csv", f"{stem}.json", f"{stem}.png"]
