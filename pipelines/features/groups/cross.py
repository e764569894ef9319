"""Cross-pair features: the anchor pair's and the market's returns beside the pair's own.

They read other pairs' closes from `ref_close_<PAIR>` columns of the candle frame, which
`pipelines.features.references.attach_references` fills with each reference pair's last close
at or before the row's open time (its candle of the same hour when it has arrived). A row reads
no reference candle that opened after it, so no row reads a later candle, and every window
counts candles (none smooths forever).

A reference without a close at both ends of a horizon (before its first candle) contributes no
move: the anchor's return is 0 there and the market averages the pairs that have one (0 when
none has). So a pair still computes features while a reference pair lacks candles.
"""

from __future__ import annotations

import numpy as np

from pipelines.features.catalog import Array, Described, Inputs, InvalidCandlesError, feature_group
from pipelines.features.params import FeatureParams

REFERENCE_PREFIX = "ref_close_"


def reference_column(pair: str) -> str:
    """The candle-frame column that holds `pair`'s close for the cross-pair features."""
    return f"{REFERENCE_PREFIX}{pair}"


def _described(p: FeatureParams) -> Described:
    anchor = p.reference_pairs[0]
    market = ", ".join(p.reference_pairs)
    out: Described = []
    for h in p.cross_horizons:
        out.append(
            (
                f"x{anchor.lower()}_ret_{h}",
                h,
                f"ln(C[t] / C[t-{h}]) of {anchor} (the anchor pair), its closes at or before "
                "the row's time; 0 where it has none",
            )
        )
    for h in p.cross_horizons:
        out.append(
            (
                f"xmkt_ret_{h}",
                h,
                f"mean over the market ({market}) of each pair's ln(C[t] / C[t-{h}]), the pairs "
                "that have both closes; 0 when none has",
            )
        )
    for h in p.cross_horizons:
        out.append(
            (
                f"xrel_ret_{h}",
                h,
                f"the pair's own ln(close[t] / close[t-{h}]) minus xmkt_ret_{h}: its strength "
                "against the market",
            )
        )
    return out


@feature_group("Cross-pair returns (anchor and market)", _described)
def cross_pair(x: Inputs, p: FeatureParams) -> list[Array]:
    missing = [pair for pair in p.reference_pairs if pair not in x.references]
    if missing:
        raise InvalidCandlesError(
            "the cross-pair features need the reference closes "
            f"{', '.join(reference_column(m) for m in missing)} beside the candles; attach them "
            "with pipelines.features.references.attach_references (the service and the "
            "training do), or send them as columns"
        )
    rows = len(x.close)
    logs = {pair: np.log(x.references[pair]) for pair in p.reference_pairs}
    anchor: list[Array] = []
    market: list[Array] = []
    relative: list[Array] = []
    for h in p.cross_horizons:
        moves = np.stack([_move(logs[pair], h) for pair in p.reference_pairs])
        known = np.isfinite(moves)
        counts = known.sum(axis=0)
        total = np.where(known, moves, 0.0).sum(axis=0)
        mean = np.divide(total, counts, out=np.zeros(rows), where=counts > 0)
        own = _move(x.log_close, h)
        warm = np.arange(rows) < h  # the pair's own warm-up: NaN like every h-candle return
        first = np.where(known[0], moves[0], 0.0)
        first[warm] = np.nan
        mean[warm] = np.nan
        anchor.append(first)
        market.append(mean)
        relative.append(own - mean)
    return [*anchor, *market, *relative]


def _move(log_close: Array, h: int) -> Array:
    """ln(C[t]) - ln(C[t-h]), NaN for the first h rows and wherever either close is missing."""
    out = np.full(len(log_close), np.nan)
    if h < len(log_close):
        out[h:] = log_close[h:] - log_close[:-h]
    return out
