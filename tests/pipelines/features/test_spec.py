"""The feature spec: round trips, versioning, compatibility checks, parameter validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.features import spec as spec_module
from pipelines.features.params import FeatureParams, InvalidFeatureParamsError
from pipelines.features.spec import (
    FeatureSpec,
    FeatureSpecMismatchError,
    build_spec,
    default_spec,
    ensure_compatible,
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
