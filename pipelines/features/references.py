"""The other pairs' closes that the cross-pair features read, attached to a pair's candles.

A `cross` spec names its reference pairs (the anchor first). Every path that computes a cross
model's features (the training's dataset, the gate's and live scoring's candles, the service's
prediction window, the features endpoint) attaches them here, from the same candle store, in
the same way: for each of the pair's rows, each reference's last close at or before the row's
open time (as of that time), as a `ref_close_<PAIR>` column. A reference without candles yet
gives NaN, which the features read as no move; the pair itself is read from its own closes.
A frame that already holds a reference's column (a client sent it) keeps it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import pandas as pd

from pipelines.candles.store import CandlesNotFoundError, CandleStore
from pipelines.features.groups.cross import REFERENCE_PREFIX, reference_column
from pipelines.features.spec import FeatureSpec, reference_pairs

__all__ = [
    "REFERENCE_PREFIX",
    "Loader",
    "attach_references",
    "cross_references",
    "reference_column",
    "store_loader",
    "with_references",
]

logger = logging.getLogger(__name__)

# A reference pair's candles, or None when it has none.
Loader = Callable[[str], "pd.DataFrame | None"]


def cross_references(anchor: str, pairs: Sequence[str]) -> tuple[str, ...]:
    """The reference pairs of a cross spec: the anchor, then the other configured pairs."""
    return (anchor, *[p for p in dict.fromkeys(pairs) if p != anchor])


def attach_references(
    candles: pd.DataFrame, *, pair: str, references: Sequence[str], load: Loader
) -> pd.DataFrame:
    """`candles` with a `ref_close_<REF>` column per reference (as-of joined), a new frame.

    Args:
        candles: the pair's candles, oldest first (not changed).
        pair: whose candles they are: its own column is its closes.
        references: the reference pairs.
        load: a reference's candles (a store's `load`), or None when it has none.
    """
    columns: dict[str, pd.Series] = {}
    for ref in references:
        column = reference_column(ref)
        if column in candles.columns:
            continue
        if ref == pair:
            columns[column] = candles["close"].astype("float64")
            continue
        frame = load(ref)
        if frame is None or frame.empty:
            columns[column] = pd.Series(float("nan"), index=candles.index, dtype="float64")
            continue
        columns[column] = frame["close"].astype("float64").reindex(candles.index, method="ffill")
    if not columns:
        return candles
    return candles.assign(**columns)


def with_references(
    candles: pd.DataFrame, *, pair: str, spec: FeatureSpec, load: Loader
) -> pd.DataFrame:
    """`candles` with the references `spec` reads attached (the frame itself when none)."""
    refs = reference_pairs(spec)
    if not refs:
        return candles
    return attach_references(candles, pair=pair, references=refs, load=load)


def store_loader(store: CandleStore, timeframe: str) -> Loader:
    """A Loader over a candle store: a pair's candles at `timeframe`, None when it has none."""

    def loader(ref: str) -> pd.DataFrame | None:
        try:
            return store.load(ref, timeframe)
        except CandlesNotFoundError as exc:
            logger.info("reference pair %s has no candles: %s", ref, exc)
            return None

    return loader
