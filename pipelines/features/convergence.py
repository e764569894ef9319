"""How far the incremental path is from full-history features, for a choice of lookback.

Exponential and Wilder smoothings never forget their start, so features computed from the newest
`lookback + rows` candles differ from full-history ones by an amount that shrinks with
`lookback`. This measures the largest difference, per feature, over many end points of a series;
`python -m pipelines.features.convergence` prints it for the bundled pairs (the figures quoted in
docs/features.md, from which `spec.MEMORY_FACTOR` was chosen).
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from pipelines.features.compute import compute_features
from pipelines.features.spec import FeatureSpec, resolve_spec


def incremental_error(
    candles: pd.DataFrame,
    *,
    lookback: int,
    rows: int = 60,
    step: int = 97,
    spec: FeatureSpec | None = None,
) -> pd.Series:
    """Per feature, max |features of the newest lookback+rows candles - full-history features|.

    A value that is NaN in the window but not in the full history counts as infinitely far.

    Evaluated at every `step`-th end row from the first one with a full `lookback + rows`
    history to the end of `candles`.
    """
    resolved, _ = resolve_spec(spec)
    full = compute_features(candles, spec=resolved).to_numpy()
    worst = np.zeros(len(resolved.names))
    for end in range(len(candles), lookback + rows - 1, -step):
        part = compute_features(candles.iloc[end - lookback - rows : end], spec=resolved)
        diff = np.abs(part.to_numpy()[-rows:] - full[end - rows : end])
        # A value missing on one side only (a window shorter than a warm-up) is no agreement.
        diff[np.isnan(diff) & ~np.isnan(full[end - rows : end])] = np.inf
        worst = np.fmax(worst, diff.max(axis=0))
    return pd.Series(worst, index=list(resolved.names), name=f"lookback_{lookback}")


def main() -> None:
    """Print, per lookback, the largest difference over the bundled pairs and where it is."""
    from pipelines.candles.store import CandleStore
    from pipelines.settings import get_settings

    store = CandleStore.from_settings(get_settings())
    series = {pair: store.load(pair) for pair in get_settings().pairs}
    out = sys.stdout
    out.write("| lookback | max abs difference | feature |\n|---:|---:|---|\n")
    for lookback in (100, 200, 300, 400, 500, 600, 800, 1000):
        errors = pd.concat(
            [incremental_error(c, lookback=lookback) for c in series.values()], axis=1
        ).max(axis=1)
        out.write(f"| {lookback} | {errors.max():.1e} | {errors.idxmax()} |\n")


if __name__ == "__main__":
    main()
