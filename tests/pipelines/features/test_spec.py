"""The feature spec: round trips, versioning, compatibility checks, parameter validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.features import spec as spec_module
from pipelines.features.groups import FEATURE_SET_GROUPS
from pipelines.features.params import FeatureParams, InvalidFeatureParamsError
from pipelines.features.spec import (
    FEATURE_SETS,
    FeatureSpec,
    FeatureSpecMismatchError,
    build_spec,
    default_spec,
    ensure_compatible,
    feature_set_of,
    feature_spec,
    resolve_spec,
)


def test_spec_round_trips_through_dict_and_json_file(tmp_path: Path) -> None:
    spec = default_spec()
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    path = tmp_path / "spec.json"
    spec.save(path)
    assert FeatureSpec.load(path) == spec
    assert json.loads(path.read_text())["version"] == spec.version


def test_version_is_stable_for_the_same_params() -> None:
    assert build_spec(FeatureParams()).version == default_spec().version
    assert len(default_spec().version) == 12


@pytest.mark.parametrize(
    "change",
    [
        {"periods": (5, 10, 30)},
        {"bollinger_stddev": 2.5},
        {"macd_signal": 7},
        {"sar_acceleration": 0.03},
        {"return_horizons": (1, 2, 4)},
    ],
)
def test_version_changes_when_a_param_changes(change: dict[str, object]) -> None:
    changed = build_spec(FeatureParams(**change))  # type: ignore[arg-type]
    assert changed.version != default_spec().version


def test_version_changes_when_the_code_revision_is_bumped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = default_spec().version
    monkeypatch.setattr(spec_module, "REVISION", spec_module.REVISION + 1)
    spec_module._build_spec.cache_clear()
    try:
        assert default_spec().version != before
        with pytest.raises(FeatureSpecMismatchError, match=before):
            ensure_compatible(
                FeatureSpec.from_dict({**default_spec().to_dict(), "version": before})
            )
    finally:
        monkeypatch.undo()
        spec_module._build_spec.cache_clear()
        spec_module._resolve.cache_clear()
    assert default_spec().version == before


def test_warmup_and_lookback_follow_the_params() -> None:
    spec = default_spec()
    assert spec.warmup == 77  # Ichimoku span B: a 52-candle range displaced by 26
    assert spec.lookback >= spec.warmup
    longer = build_spec(FeatureParams(periods=(5, 10, 40)))
    assert longer.lookback > spec.lookback


def test_compatible_specs_pass_and_different_ones_are_refused_naming_features() -> None:
    ensure_compatible(default_spec())
    other = build_spec(FeatureParams(periods=(5, 10, 30)))
    with pytest.raises(FeatureSpecMismatchError, match="rsi_20") as error:
        ensure_compatible(other)
    assert "rsi_30" in str(error.value)


def test_a_spec_without_its_keys_is_refused() -> None:
    with pytest.raises(FeatureSpecMismatchError, match="not a feature spec"):
        FeatureSpec.from_dict({"names": ["a"]})


def test_a_spec_with_unknown_params_cannot_be_computed() -> None:
    data = default_spec().to_dict()
    data["params"] = {**data["params"], "kama_period": 10}
    from pipelines.features.spec import resolve_spec

    with pytest.raises(FeatureSpecMismatchError, match="kama_period"):
        resolve_spec(FeatureSpec.from_dict(data))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"periods": (5, 5)}, "periods must be a non-empty list of distinct"),
        ({"periods": (1, 5)}, "periods must be an integer >= 2, got 1"),
        ({"macd_slow": 10}, "macd_slow must be an integer >= 13"),
        ({"bollinger_stddev": 0.0}, "bollinger_stddev must be in"),
        ({"sar_acceleration": 0.5}, "sar_acceleration and sar_maximum"),
    ],
)
def test_bad_params_are_refused_naming_the_param(change: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidFeatureParamsError, match=message):
        FeatureParams(**change)  # type: ignore[arg-type]


def test_params_round_trip_and_refuse_missing_keys() -> None:
    params = FeatureParams()
    assert FeatureParams.from_dict(params.to_dict()) == params
    data = params.to_dict()
    del data["periods"]
    with pytest.raises(InvalidFeatureParamsError, match="missing \\['periods'\\]"):
        FeatureParams.from_dict(data)


# The default set as models were trained on it before there were named sets.
DEFAULT_VERSION = "61e6b93e9c48"


def test_default_set_keeps_its_names_version_and_params() -> None:
    spec = feature_spec("default")
    assert spec == default_spec()
    assert spec.version == DEFAULT_VERSION
    assert len(spec.names) == 69
    assert (spec.warmup, spec.lookback) == (77, 600)
    assert "feature_set" not in spec.params
    assert feature_set_of(spec) == "default"


def test_feature_sets_are_named_and_each_has_its_groups() -> None:
    assert FEATURE_SETS == ("default", "extended", "raw", "cross")
    assert tuple(FEATURE_SET_GROUPS) == FEATURE_SETS


def test_an_unknown_feature_set_is_refused_listing_the_allowed_ones() -> None:
    with pytest.raises(InvalidFeatureParamsError, match="'fancy': expected one of default, "):
        feature_spec("fancy")


def test_extended_is_default_followed_by_five_features_per_higher_timeframe() -> None:
    spec = feature_spec("extended")
    assert spec.names[:69] == default_spec().names
    assert spec.names[69:] == tuple(
        f"tf{tf}_{stem}"
        for tf in ("4h", "1d")
        for stem in ("ret_1", "range_pos", "sma_dist_14", "rv_14", "rsi_14")
    )
    assert (spec.warmup, spec.lookback) == (382, 600)  # 1d RSI: 15 closed days + 1 skipped
    assert feature_set_of(spec) == "extended"
    assert spec.params["base_timeframe"] == "1h"


def test_raw_is_five_columns_with_a_short_warmup_and_lookback() -> None:
    spec = feature_spec("raw")
    assert spec.names == ("raw_open", "raw_high", "raw_low", "raw_close", "raw_volume")
    assert (spec.warmup, spec.lookback) == (19, 19)
    assert set(spec.params) == {"feature_set", "raw_volume_period"}


@pytest.mark.parametrize(
    ("timeframe", "higher", "warmup"),
    [("15m", ("4h", "1d"), 1_534), ("1h", ("4h", "1d"), 382), ("4h", ("1d",), 94)],
)
def test_extended_keeps_the_higher_timeframes_longer_than_the_base(
    timeframe: str, higher: tuple[str, ...], warmup: int
) -> None:
    spec = feature_spec("extended", timeframe=timeframe)
    assert tuple(spec.params["higher_timeframes"]) == higher
    assert spec.warmup == warmup
    assert spec.lookback >= spec.warmup


@pytest.mark.parametrize(
    ("timeframe", "message"),
    [
        ("1d", "needs candles shorter than its higher timeframes 4h, 1d, got timeframe 1d"),
        ("3h", "higher timeframe 4h must be a whole multiple"),
        ("7m", "higher timeframe 4h must be a whole multiple"),
        ("hourly", "unsupported timeframe 'hourly'"),
    ],
)
def test_extended_refuses_a_timeframe_it_cannot_aggregate(timeframe: str, message: str) -> None:
    with pytest.raises(InvalidFeatureParamsError, match=message):
        feature_spec("extended", timeframe=timeframe)


def test_a_higher_timeframe_that_does_not_divide_a_day_is_refused() -> None:
    with pytest.raises(InvalidFeatureParamsError, match="higher timeframe 1w must divide 1d"):
        FeatureParams(feature_set="extended", higher_timeframes=("4h", "1w"))


@pytest.mark.parametrize(
    ("name", "timeframe"), [("extended", "1h"), ("extended", "15m"), ("raw", "1h")]
)
def test_a_stored_spec_of_a_named_set_round_trips_and_resolves(
    name: str, timeframe: str, tmp_path: Path
) -> None:
    spec = feature_spec(name, timeframe=timeframe)
    path = tmp_path / "spec.json"
    spec.save(path)
    loaded = FeatureSpec.load(path)
    assert loaded == spec
    resolved, params = resolve_spec(loaded)
    assert resolved == spec
    assert params.feature_set == name
    ensure_compatible(loaded)


def test_a_stored_spec_of_an_unknown_set_is_refused_naming_it() -> None:
    data = feature_spec("raw").to_dict()
    data["params"] = {**data["params"], "feature_set": "fancy"}
    with pytest.raises(FeatureSpecMismatchError, match="'fancy': expected one of default"):
        resolve_spec(FeatureSpec.from_dict(data))
    with pytest.raises(FeatureSpecMismatchError, match="'fancy'"):
        ensure_compatible(FeatureSpec.from_dict(data))


def test_a_model_of_one_set_is_not_compatible_with_another_set() -> None:
    with pytest.raises(FeatureSpecMismatchError, match="tf4h_ret_1"):
        ensure_compatible(feature_spec("extended"), default_spec())
    with pytest.raises(FeatureSpecMismatchError, match="raw_open"):
        ensure_compatible(feature_spec("raw"), default_spec())


def test_a_stored_extended_spec_with_other_params_is_not_the_running_extended_set() -> None:
    other = build_spec(FeatureParams(feature_set="extended", higher_period=10))
    resolve_spec(other)  # this code computes it ...
    with pytest.raises(FeatureSpecMismatchError, match="tf4h_rsi_14"):
        ensure_compatible(other)  # ... but it is not the set that is trained and served


def test_params_hold_only_the_keys_of_their_set() -> None:
    with pytest.raises(InvalidFeatureParamsError, match="unknown \\['periods'\\]"):
        FeatureParams.from_dict({**feature_spec("raw").params, "periods": [5]})
    extended = feature_spec("extended").params
    assert FeatureParams.from_dict(extended).to_dict() == extended
