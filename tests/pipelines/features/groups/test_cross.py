"""The cross set: the anchor's and the market's returns, as of each row's time, no look-ahead."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import pandas as pd
import pytest

from pipelines.features.compute import InvalidCandlesError, compute_features, latest_features
from pipelines.features.params import InvalidFeatureParamsError
from pipelines.features.references import (
    attach_references,
    cross_references,
    reference_column,
    with_references,
)
from pipelines.features.spec import (
    INCREMENTAL_TOLERANCE,
    FeatureSpec,
    default_spec,
    ensure_compatible,
    feature_spec,
    reference_pairs,
    resolve_spec,
)
from tests.pipelines.features.conftest import _candles_of

PAIRS = ("BTC", "ETH", "XMR", "RVN")
CandlesOf = Callable[[str, str], pd.DataFrame]


def spec_of(pairs: tuple[str, ...] = PAIRS) -> FeatureSpec:
    return feature_spec("cross", references=pairs)


def loader(timeframe: str) -> Callable[[str], pd.DataFrame | None]:
    return lambda pair: _candles_of(pair, timeframe)


@cache
def _attached(pair: str, timeframe: str) -> pd.DataFrame:
    return attach_references(
        _candles_of(pair, timeframe), pair=pair, references=PAIRS, load=loader(timeframe)
    )


@cache
def _full(pair: str, timeframe: str) -> pd.DataFrame:
    return compute_features(_attached(pair, timeframe), spec=spec_of())


def frame(closes: list[float], start: str = "2024-01-01") -> pd.DataFrame:
    index = pd.date_range(start, periods=len(closes), freq="h", tz="UTC")
    c = np.asarray(closes, dtype=float)
    return pd.DataFrame(
        {"open": c, "high": c * 1.01, "low": c * 0.99, "close": c, "volume": 1.0}, index=index
    )


def test_cross_is_default_followed_by_anchor_market_and_relative_returns() -> None:
    spec = spec_of()
    assert spec.names[:69] == default_spec().names
    assert spec.names[69:] == (
        *(f"xbtc_ret_{h}" for h in (1, 5, 20)),
        *(f"xmkt_ret_{h}" for h in (1, 5, 20)),
        *(f"xrel_ret_{h}" for h in (1, 5, 20)),
    )
    assert reference_pairs(spec) == PAIRS
    assert reference_pairs(default_spec()) == ()
    # Another anchor is another model's features: another version, and refused for this one.
    other = spec_of(("ETH", "BTC", "XMR", "RVN"))
    assert other.version != spec.version
    assert other.names[69] == "xeth_ret_1"
    with pytest.raises(ValueError, match="differ from the running version"):
        ensure_compatible(spec, other)
    ensure_compatible(spec)  # rebuilt from its own reference pairs
    assert resolve_spec(FeatureSpec.from_dict(spec.to_dict()))[0] == spec


def test_cross_needs_reference_pairs_that_are_pair_codes() -> None:
    with pytest.raises(InvalidFeatureParamsError, match="needs its reference pairs"):
        feature_spec("cross")
    with pytest.raises(InvalidFeatureParamsError, match="'btc/usdt' is not a pair code"):
        feature_spec("cross", references=("btc/usdt",))
    with pytest.raises(InvalidFeatureParamsError, match="distinct pair codes"):
        feature_spec("cross", references=("BTC", "BTC"))


def test_the_references_are_the_anchor_then_the_other_configured_pairs() -> None:
    assert cross_references("BTC", ["ETH", "BTC", "XMR"]) == ("BTC", "ETH", "XMR")
    assert cross_references("SOL", ["ETH", "BTC"]) == ("SOL", "ETH", "BTC")


def test_values_are_the_anchor_and_market_returns_at_the_rows_time() -> None:
    own = frame([10.0 + i for i in range(30)])
    btc = frame([100.0 * 1.01**i for i in range(30)])
    eth = frame([50.0 * 0.99**i for i in range(30)])
    spec = spec_of(("BTC", "ETH"))
    attached = attach_references(
        own, pair="XMR", references=("BTC", "ETH"), load={"BTC": btc, "ETH": eth}.get
    )
    out = compute_features(attached, spec=spec)
    row = out.iloc[25]
    assert row["xbtc_ret_1"] == pytest.approx(np.log(1.01))
    assert row["xbtc_ret_5"] == pytest.approx(5 * np.log(1.01))
    assert row["xmkt_ret_1"] == pytest.approx((np.log(1.01) + np.log(0.99)) / 2)
    assert row["xrel_ret_5"] == pytest.approx(np.log(35.0 / 30.0) - 5 * np.log(1.01 * 0.99) / 2)
    assert np.isnan(out["xbtc_ret_20"].iloc[19])
    assert np.isfinite(out["xbtc_ret_20"].iloc[20])


def test_a_reference_is_read_as_of_the_row_and_a_missing_one_adds_no_move() -> None:
    own = frame([10.0 + i for i in range(30)])
    # BTC lacks the candles from row 10 on (late, or a gap); ETH starts at row 12.
    btc = frame([100.0 * 1.02**i for i in range(10)])
    eth = frame([50.0 * 1.04**i for i in range(18)], start="2024-01-01 12:00")
    attached = attach_references(
        own, pair="XMR", references=("BTC", "ETH"), load={"BTC": btc, "ETH": eth}.get
    )
    btc_close = attached[reference_column("BTC")]
    assert (btc_close.iloc[10:] == btc["close"].iloc[-1]).all()  # as of row 9: held, not read
    assert attached[reference_column("ETH")].iloc[:12].isna().all()
    out = compute_features(attached, spec=spec_of(("BTC", "ETH")))
    assert out["xbtc_ret_1"].iloc[9] == pytest.approx(np.log(1.02))
    assert out["xbtc_ret_1"].iloc[11] == 0.0  # held close: no move
    assert out["xmkt_ret_1"].iloc[11] == 0.0  # neither moved: ETH has no candle yet
    assert out["xmkt_ret_1"].iloc[14] == pytest.approx(np.log(1.04) / 2)  # BTC held, ETH moved
    assert np.isfinite(out.iloc[20:, 69:].to_numpy()).all()
    # A pair without any candles is a column of NaN: its features add no move either.
    none = attach_references(own, pair="XMR", references=("BTC", "SOL"), load={"BTC": btc}.get)
    assert none[reference_column("SOL")].isna().all()
    cross = compute_features(none, spec=spec_of(("BTC", "SOL"))).iloc[20:, 69:]
    assert np.isfinite(cross.to_numpy()).all()


def test_the_pairs_own_column_is_its_own_closes_and_a_sent_column_is_kept() -> None:
    own = frame([10.0 + i for i in range(30)])
    btc = frame([100.0] * 30)
    attached = attach_references(own, pair="BTC", references=("BTC", "ETH"), load={"ETH": btc}.get)
    assert attached[reference_column("BTC")].equals(own["close"])
    sent = own.assign(**{reference_column("ETH"): 7.0})
    kept = attach_references(sent, pair="BTC", references=("BTC", "ETH"), load={"ETH": btc}.get)
    assert (kept[reference_column("ETH")] == 7.0).all()
    assert with_references(own, pair="BTC", spec=default_spec(), load={"ETH": btc}.get) is own


def test_missing_or_invalid_reference_columns_are_refused_naming_them() -> None:
    own = frame([10.0 + i for i in range(30)])
    with pytest.raises(InvalidCandlesError, match="ref_close_BTC, ref_close_ETH"):
        compute_features(own, spec=spec_of(("BTC", "ETH")))
    bad = own.assign(ref_close_BTC=-1.0, ref_close_ETH=1.0)
    with pytest.raises(InvalidCandlesError, match="ref_close_BTC at 2024-01-01 00:00:00"):
        compute_features(bad, spec=spec_of(("BTC", "ETH")))


@pytest.mark.parametrize("pair", ["ETH", "RVN"])
@pytest.mark.parametrize("cut", [30, 5_000, 12_346])
def test_a_prefix_with_newer_reference_candles_in_the_store_equals_the_whole_series(
    pair: str, cut: int
) -> None:
    # The store holds every reference candle (later ones too): the prefix must not read them.
    prefix = attach_references(
        _candles_of(pair, "1h").iloc[:cut], pair=pair, references=PAIRS, load=loader("1h")
    )
    features = compute_features(prefix, spec=spec_of())
    np.testing.assert_array_equal(features.to_numpy(), _full(pair, "1h").iloc[:cut].to_numpy())


def test_changing_a_future_reference_candle_leaves_earlier_rows_unchanged() -> None:
    changed = {p: _candles_of(p, "1h").copy() for p in PAIRS}
    when = changed["ETH"].index[3_000]
    for pair in ("BTC", "XMR"):
        later = changed[pair].index >= when
        changed[pair].loc[later, ["open", "high", "low", "close"]] *= 1.7
    after = compute_features(
        attach_references(
            _candles_of("ETH", "1h"), pair="ETH", references=PAIRS, load=changed.__getitem__
        ),
        spec=spec_of(),
    )
    before = _full("ETH", "1h")
    np.testing.assert_array_equal(after.iloc[:3_000].to_numpy(), before.iloc[:3_000].to_numpy())
    assert not np.allclose(after.iloc[3_000:, 69:].to_numpy(), before.iloc[3_000:, 69:].to_numpy())


@pytest.mark.parametrize(
    ("pair", "timeframe", "every"), [("ETH", "1h", 997), ("XMR", "15m", 3_001), ("RVN", "4h", 53)]
)
def test_latest_rows_of_cross_equal_full_history_rows(
    pair: str, timeframe: str, every: int
) -> None:
    spec = spec_of()
    series = _attached(pair, timeframe)
    full = _full(pair, timeframe).to_numpy()
    rows = 60
    worst = 0.0
    for end in [*range(spec.lookback + rows, len(series), every), len(series)]:
        latest = latest_features(series.iloc[:end], rows=rows, spec=spec).to_numpy()
        expected = full[end - rows : end]
        np.testing.assert_array_equal(np.isnan(latest), np.isnan(expected))
        worst = max(worst, float(np.nanmax(np.abs(latest - expected))))
    assert worst <= INCREMENTAL_TOLERANCE


@pytest.mark.parametrize("pair", PAIRS)
def test_cross_features_are_finite_after_the_warmup_on_the_bundled_candles(pair: str) -> None:
    spec = spec_of()
    matrix = _full(pair, "1h").to_numpy()
    assert np.isfinite(matrix[spec.warmup :]).all()
    # The market moves with the anchor: not constant, and not the pair's own return.
    assert np.std(matrix[spec.warmup :, 72]) > 0


def test_each_type_trains_on_its_evaluated_set_unless_ml_feature_set_says_otherwise() -> None:
    from pydantic import ValidationError

    from pipelines.settings import Settings

    unset = Settings(_env_file=None)
    assert unset.feature_set is None
    assert unset.feature_set_for("lightgbm") == "cross"
    assert unset.feature_set_for("lstm") == "default"
    assert unset.feature_set_for("pooled") == "default"
    assert Settings(_env_file=None, feature_set="").feature_set is None
    forced = Settings(_env_file=None, feature_set="raw")
    assert forced.feature_set_for("lightgbm") == forced.feature_set_for("lstm") == "raw"
    with pytest.raises(ValidationError, match="'default', 'extended', 'raw' or 'cross'"):
        Settings(_env_file=None, feature_set="fancy")
    assert Settings(_env_file=None, cross_anchor=" eth/usdt").cross_anchor == "ETH"
    with pytest.raises(ValidationError, match=r"ML_CROSS_ANCHOR|cross_anchor"):
        Settings(_env_file=None, cross_anchor="BT C")
