"""Standardisation of feature columns, fitted on training rows only and stored with the model.

z = (x - mean) / std per column, with the training rows' mean and population std. A column that
is constant on the training rows (std 0) is centred only (scale 1), so it maps to 0 instead of
inf. z-scores are clipped to ±`clip` (default 10): a crash candle can sit 30-40 standard
deviations out, and one such value would otherwise dominate an LSTM's saturating activations
for a whole window. 10 keeps every ordinary tail and bounds only the extreme few: 0.006-0.02 % of
the bundled pairs' feature values lie beyond it (mostly candle wicks and returns of crash hours).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_CLIP = 10.0


@dataclass(frozen=True, eq=False)
class FeatureScaler:
    """Per-column mean and scale of the training rows, applied to any later rows."""

    names: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    clip: float | None = DEFAULT_CLIP
    rows: int = 0

    @classmethod
    def fit(
        cls, matrix: np.ndarray, *, names: Sequence[str], clip: float | None = DEFAULT_CLIP
    ) -> FeatureScaler:
        """Fit on `matrix` (training rows x features); every value must be finite.

        Args:
            matrix: the training rows only (drop the warm-up rows first).
            names: the feature names, one per column.
            clip: bound of the transformed values (|z| <= clip); None disables clipping.
        """
        data = np.asarray(matrix, dtype=np.float64)
        names = tuple(names)
        if data.ndim != 2 or data.shape[1] != len(names):
            raise ValueError(
                f"expected a 2-D matrix with {len(names)} columns (one per name), "
                f"got shape {data.shape}"
            )
        if data.shape[0] < 2:
            raise ValueError(f"need at least 2 training rows to fit a scaler, got {data.shape[0]}")
        finite = np.isfinite(data)
        if not finite.all():
            bad = [names[i] for i in np.flatnonzero(~finite.all(axis=0))]
            raise ValueError(
                f"training rows hold NaN or inf in {', '.join(bad[:5])}"
                f"{' ...' if len(bad) > 5 else ''}: drop the warm-up rows before fitting"
            )
        if clip is not None and not clip > 0:
            raise ValueError(f"clip must be positive or None, got {clip!r}")
        mean = data.mean(axis=0)
        std = data.std(axis=0)
        scale = np.where(std > 0, std, 1.0)
        return cls(names=names, mean=mean, scale=scale, clip=clip, rows=int(data.shape[0]))

    def transform(self, matrix: np.ndarray) -> np.ndarray:
        """Standardise (and clip) `matrix` whose last axis is the features; float32, same shape."""
        data = np.asarray(matrix, dtype=np.float64)
        if data.ndim == 0 or data.shape[-1] != len(self.names):
            raise ValueError(
                f"expected {len(self.names)} features on the last axis, got shape {data.shape}"
            )
        z = (data - self.mean) / self.scale
        if self.clip is not None:
            np.clip(z, -self.clip, self.clip, out=z)
        return z.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        # Python's float repr round-trips exactly through JSON.
        return {
            "names": list(self.names),
            "mean": [float(v) for v in self.mean],
            "scale": [float(v) for v in self.scale],
            "clip": self.clip,
            "rows": self.rows,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureScaler:
        missing = [key for key in ("names", "mean", "scale") if key not in data]
        if missing:
            raise ValueError(f"not a feature scaler: lacks {', '.join(missing)}")
        names = tuple(str(n) for n in data["names"])
        mean = np.asarray(data["mean"], dtype=np.float64)
        scale = np.asarray(data["scale"], dtype=np.float64)
        if mean.shape != (len(names),) or scale.shape != (len(names),):
            raise ValueError(
                f"scaler has {len(names)} names but {mean.size} means and {scale.size} scales"
            )
        if not (np.isfinite(mean).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("scaler means must be finite and scales finite and positive")
        clip = data.get("clip")
        return cls(
            names=names,
            mean=mean,
            scale=scale,
            clip=None if clip is None else float(clip),
            rows=int(data.get("rows", 0)),
        )

    def save(self, path: Path) -> None:
        """Write the scaler as JSON."""
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> FeatureScaler:
        return cls.from_dict(json.loads(path.read_text()))
