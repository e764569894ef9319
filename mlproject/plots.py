"""The run's pictures: learning curves, confusion matrix, reliability curves, equity curves.

Figures are built with matplotlib's object API on the Agg canvas: no pyplot, no global state, no
display needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipelines.calibration import expected_calibration_error, reliability_curve

DPI = 110


def _figure(width: float = 7.0, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def learning_curves(history: dict[str, list[float]], *, best_epoch: int, path: Path) -> Path:
    """Loss and accuracy per epoch, training and validation, with the kept epoch marked."""
    fig = _figure(9.0, 3.6)
    for ax, key, label in zip(
        fig.subplots(1, 2), ("loss", "accuracy"), ("binary cross-entropy", "accuracy"), strict=True
    ):
        for name, style in ((key, "-"), (f"val_{key}", "--")):
            values = history.get(name, [])
            ax.plot(range(1, len(values) + 1), values, style, marker="o", ms=3, label=name)
        ax.axvline(best_epoch + 1, color="grey", lw=0.8, ls=":", label="kept epoch")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    return _save(fig, path)


def confusion_matrix(y: np.ndarray, pred: np.ndarray, *, path: Path) -> Path:
    """Counts of (actual, predicted) on the test window, down = 0 and up = 1."""
    counts = np.zeros((2, 2), dtype=int)
    for actual, guess in zip(np.asarray(y, dtype=int), np.asarray(pred, dtype=int), strict=True):
        counts[actual, guess] += 1
    fig = _figure(4.2, 3.8)
    ax = fig.subplots()
    ax.imshow(counts, cmap="Blues")
    for (i, j), value in np.ndenumerate(counts):
        share = value / counts.sum() if counts.sum() else 0.0
        colour = "white" if value > counts.max() / 2 else "black"
        ax.text(j, i, f"{value}\n{share:.1%}", ha="center", va="center", color=colour)
    ax.set_xticks([0, 1], ["down", "up"])
    ax.set_yticks([0, 1], ["down", "up"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("test window")
    return _save(fig, path)


def reliability(
    y: np.ndarray, probas: dict[str, np.ndarray], *, path: Path, bins: int = 10
) -> Path:
    """Observed rate of "up" per bin of predicted probability (the diagonal is calibrated).

    One curve per entry of `probas` (e.g. the model before and after calibration beside a
    baseline), each labelled with its expected calibration error; the bins are
    `pipelines.calibration.reliability_curve`'s, as in the run's `calibration/reliability.json`.
    """
    fig = _figure(8.0, 3.8)
    curve, hist = fig.subplots(1, 2)
    curve.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="calibrated")
    for name, proba in probas.items():
        p = np.asarray(proba, dtype=float)
        points = reliability_curve(p, y, bins=bins)
        ece = expected_calibration_error(p, y, bins)
        curve.plot(
            [b.mean_predicted for b in points],
            [b.observed_rate for b in points],
            marker="o",
            ms=4,
            label=f"{name} (ECE {ece:.3f})",
        )
        hist.hist(p, bins=40, range=(0, 1), alpha=0.5, label=name)
    curve.set_xlabel("predicted probability of up")
    curve.set_ylabel("observed rate of up")
    curve.legend(fontsize=8)
    hist.set_xlabel("predicted probability of up")
    hist.set_ylabel("test rows")
    hist.legend(fontsize=8)
    return _save(fig, path)


def equity_curves(index: pd.DatetimeIndex, curves: dict[str, np.ndarray], *, path: Path) -> Path:
    """Growth of 1 over the test window, one line per strategy."""
    fig = _figure(9.0, 3.8)
    ax = fig.subplots()
    for name, equity in curves.items():
        ax.plot(index, equity, label=name, lw=1.0)
    ax.axhline(1.0, color="grey", lw=0.6, ls=":")
    ax.set_ylabel("equity (start = 1)")
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    return _save(fig, path)
