"""`tbml features PAIR` over the bundled candles."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.features.compute import compute_features
from pipelines.features.spec import default_spec, feature_spec
from pipelines.settings import PROJECT_ROOT, get_settings
from tbml.cli import app

BUNDLED = PROJECT_ROOT / "data" / "ohlcv"


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings from the environment only (no `.env` in the working directory)."""
    monkeypatch.chdir(tmp_path)
    for name in ("ML_PAIRS", "TRADING_PAIRS", "ML_TIMEFRAME", "ML_QUOTE_CURRENCY", "ML_EXCHANGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ML_BUNDLED_DATA_DIR", str(BUNDLED))
    monkeypatch.setenv("ML_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_features_prints_latest_row_warmup_lookback_and_version(cli_env: None) -> None:
    result = CliRunner().invoke(app, ["features", "BTC"])

    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    spec = default_spec()
    assert "latest candle: 2023-12-30T18:00:00+00:00 (open time, UTC)" in lines
    assert f"warm-up: {spec.warmup} candles" in lines
    assert f"lookback: {spec.lookback} candles" in lines
    assert f"spec version: {spec.version}" in lines
    printed = {
        name.strip(): float(value)
        for name, value in (line.split(":", 1) for line in lines if line.startswith("  "))
    }
    assert list(printed) == list(spec.names)
    from pipelines.candles.store import CandleStore

    expected = compute_features(CandleStore.from_settings(get_settings()).load("BTC")).iloc[-1]
    for name, value in printed.items():
        assert value == pytest.approx(expected[name], rel=1e-5, abs=1e-12), name


def test_lowercase_pair_is_accepted(cli_env: None) -> None:
    result = CliRunner().invoke(app, ["features", "eth"])
    assert result.exit_code == 0, result.stderr
    assert "pair: ETH" in result.stdout.splitlines()


def test_unknown_pair_fails_with_the_allowed_pairs(cli_env: None) -> None:
    result = CliRunner().invoke(app, ["features", "DOGE"])

    assert result.exit_code != 0
    assert "unknown pair 'DOGE'" in result.stderr
    assert "BTC, ETH, XMR, RVN" in result.stderr
    assert result.stdout == ""


def test_pair_without_candles_fails_saying_where_it_looked(
    cli_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ML_PAIRS", "BTC,SOL")
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["features", "SOL"])

    assert result.exit_code != 0
    assert "no candles for SOL" in result.stderr
    assert "SOL-USDT_1h.csv" in result.stderr


def test_features_of_a_named_set_print_its_columns_and_version(cli_env: None) -> None:
    result = CliRunner().invoke(app, ["features", "XMR", "--feature-set", "extended"])

    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    spec = feature_spec("extended")
    assert "feature set: extended" in lines
    assert f"spec version: {spec.version}" in lines
    assert f"warm-up: {spec.warmup} candles" in lines
    assert sum(line.startswith("  tf1d_") for line in lines) == 5


def test_an_unknown_feature_set_fails_with_the_allowed_ones(cli_env: None) -> None:
    result = CliRunner().invoke(app, ["features", "BTC", "--feature-set", "fancy"])

    assert result.exit_code == 2
    assert "unknown feature set 'fancy': expected one of default, extended, raw" in result.stderr
