"""What a fit reports, whatever the model: a network's epochs or a booster's rounds.

Kept apart from `mlproject.fit` (which imports TensorFlow) so the tabular model types and the
scoring code never load it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FitResult:
    """Per-epoch (or per-round) history, the epoch whose weights were kept, and the time the fit
    took."""

    history: dict[str, list[float]]
    best_epoch: int
    epochs_run: int
    fit_seconds: float
