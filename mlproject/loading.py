"""A pair's candles and dataset as a training reads them, and the other pairs a pooled model
learns from."""

from __future__ import annotations

import logging
from dataclasses import replace

import pandas as pd

from mlproject.config import TrainConfig
from mlproject.data import Dataset, NotEnoughDataError, build_dataset
from mlproject.tabular import Pool
from pipelines.candles.store import CandlesNotFoundError, CandleStore
from pipelines.features.references import attach_references, cross_references, store_loader
from pipelines.features.spec import FeatureSpec, feature_spec
from pipelines.settings import Settings

logger = logging.getLogger(__name__)


def candle_store(config: TrainConfig, *, settings: Settings) -> CandleStore:
    """The store of bundled candles and of those ingested under the config's data directory."""
    return CandleStore(
        bundled_dir=settings.bundled_data_dir,
        data_dir=config.data_dir if config.data_dir is not None else settings.data_dir,
        quote=settings.quote_currency,
        exchange=settings.exchange,
    )


def load_candles(config: TrainConfig, *, settings: Settings) -> pd.DataFrame:
    """The pair's candles: bundled files plus those ingested under `data_dir`, with the closes
    of the configured cross-pair references attached (`ref_close_<PAIR>`) whatever the feature
    set, so the gate can score a production model of either kind on them."""
    store = candle_store(config, settings=settings)
    candles = known_by(store.load(config.pair, settings.timeframe), config.until)
    return attach_references(
        candles,
        pair=config.pair,
        references=settings_references(settings),
        load=store_loader(store, settings.timeframe),
    )


def known_by(candles: pd.DataFrame, until: str | None) -> pd.DataFrame:
    """The candles at or before `until` (all of them for None): what was known at that hour."""
    if until is None:
        return candles
    return candles.loc[candles.index <= pd.Timestamp(until)]


def settings_references(settings: Settings) -> tuple[str, ...]:
    """The cross-pair references the settings configure: ML_CROSS_ANCHOR, then ML_PAIRS."""
    return cross_references(settings.cross_anchor, settings.pairs)


def training_spec(config: TrainConfig, *, settings: Settings) -> FeatureSpec:
    """The feature spec a training of `config` computes."""
    return feature_spec(
        config.feature_set or settings.feature_set_for(config.model_type),
        timeframe=settings.timeframe,
        references=settings_references(settings),
    )


def load_dataset(config: TrainConfig, *, settings: Settings, max_rows: int = 0) -> Dataset:
    """The pair's candles with the features `config` trains on (`max_rows`: see build_dataset)."""
    return build_dataset(
        load_candles(config, settings=settings),
        spec=training_spec(config, settings=settings),
        sequence_length=config.sequence_length,
        horizon=config.horizon,
        max_rows=max_rows,
    )


def load_pool(config: TrainConfig, *, settings: Settings) -> Pool:
    """Every other configured pair's dataset, for a pooled model of `config.pair`.

    A pair without candles, or with too few for one window, is left out with a warning: the
    pooled model trains on the pairs that have data, and still serves that pair's code.
    """
    others: dict[str, Dataset] = {}
    for pair in settings.pairs:
        if pair == config.pair:
            continue
        try:
            dataset = load_dataset(
                replace(config, pair=pair), settings=settings, max_rows=config.max_rows
            )
        except (CandlesNotFoundError, NotEnoughDataError) as exc:
            logger.warning("pooled %s: %s is left out (%s)", config.pair, pair, exc)
            continue
        others[pair] = dataset
    return Pool(pair=config.pair, pairs=tuple(settings.pairs), others=others)
