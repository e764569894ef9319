"""`tbml ingest` end to end against the local Binance-like server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.settings import get_settings
from tbml.cli import app
from tests.conftest import BUNDLED
from tests.pipelines.candles.fake_binance import FakeBinance

SUMMARY = [
    "binance BTC/USDT 1h: fetched 251 candles from 2023-12-30T19:00Z, appended 250 closed",
    "new range: 2023-12-30T19:00Z .. 2024-01-10T04:00Z",
    "gaps: none",
]


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Settings from the environment only (no `.env` in the working directory); the data dir."""
    monkeypatch.chdir(tmp_path)
    for name in ("ML_EXCHANGE", "ML_TIMEFRAME", "ML_QUOTE_CURRENCY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ML_BUNDLED_DATA_DIR", str(BUNDLED))
    monkeypatch.setenv("ML_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield tmp_path / "data"
    get_settings.cache_clear()


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["ingest", *args])
    return result.exit_code, result.stdout, result.stderr


def test_ingest_command_appends_then_finds_nothing_new(
    cli_env: Path, exchange: FakeBinance
) -> None:
    args = ["--exchange", "binance", "--pair", "BTC/USDT", "--timeframe", "1h"]
    code, out, err = run(*args, "--api-url", exchange.url)

    assert code == 0, err
    for line in SUMMARY:
        assert line in out.splitlines()
    path = cli_env / "candles" / "binance" / "BTC-USDT_1h.csv"
    assert f"file: {path}" in out.splitlines()
    before = path.read_bytes()
    assert before.count(b"\n") == 251

    code, out, err = run(*args, "--api-url", exchange.url)

    assert code == 0, err
    assert "appended 0 closed" in out
    assert path.read_bytes() == before


def test_bare_pair_takes_the_configured_quote_and_data_dir_option_wins(
    cli_env: Path, exchange: FakeBinance, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"

    code, out, err = run("--pair", "btc", "--data-dir", str(elsewhere), "--api-url", exchange.url)

    assert code == 0, err
    assert SUMMARY[0] in out
    assert (elsewhere / "candles" / "binance" / "BTC-USDT_1h.csv").is_file()
    assert not cli_env.exists()


def test_since_and_reported_gap(cli_env: Path, exchange: FakeBinance) -> None:
    code, out, err = run(
        "--pair", "BTC/USDT", "--since", "2023-12-31T00:00Z", "--api-url", exchange.url
    )

    assert code == 0, err
    assert "appended 245 closed" in out
    assert "gaps: 1 (5 candles missing)" in out
    assert "  2023-12-30 18:00 -> 2023-12-31 00:00: 5 missing" in out.splitlines()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--exchange", "binanse"], "error: unknown exchange 'binanse' (did you mean binance"),
        (["--timeframe", "90s"], "error: unsupported timeframe '90s' for binance: allowed"),
        (["--since", "2024-13-45"], "error: malformed time '2024-13-45': expected ISO 8601"),
        (["--pair", "BTC-USDT"], "error: malformed pair 'BTC-USDT': expected the exchange's"),
        (["--pair", "DOGE/USDT"], "error: unknown pair 'DOGE/USDT' on binance"),
    ],
    ids=["exchange", "timeframe", "since", "pair-format", "pair"],
)
def test_bad_input_exits_non_zero_with_a_clear_error_and_writes_nothing(
    cli_env: Path, exchange: FakeBinance, args: list[str], message: str
) -> None:
    base = {"--pair": "BTC/USDT", "--api-url": exchange.url}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))

    code, out, err = run(*[item for pair in base.items() for item in pair])

    assert code == 1
    assert message in err
    assert out == ""
    assert not cli_env.exists()
    assert exchange.klines_requests == []


def test_exchange_failure_exits_non_zero_and_keeps_the_file(
    cli_env: Path, exchange: FakeBinance
) -> None:
    assert run("--pair", "BTC/USDT", "--api-url", exchange.url)[0] == 0
    path = cli_env / "candles" / "binance" / "BTC-USDT_1h.csv"
    before = path.read_bytes()
    exchange.now_ms += 500 * 3_600_000
    exchange.fail_klines_after = len(exchange.klines_requests) + 2

    code, _, err = run("--pair", "BTC/USDT", "--api-url", exchange.url)

    assert code == 1
    assert "error: binance: could not fetch BTC/USDT 1h candles from 2024-01-18T" in err
    assert "(nothing written)" in err
    assert path.read_bytes() == before


@pytest.mark.slow
def test_tbml_ingest_as_a_real_process(tmp_path: Path, exchange: FakeBinance) -> None:
    tbml = Path(sys.executable).with_name("tbml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ML_")}
    env.update(ML_BUNDLED_DATA_DIR=str(BUNDLED), ML_DATA_DIR=str(tmp_path / "data"))
    command = [str(tbml), "ingest", "--exchange", "binance", "--pair", "BTC/USDT"]
    command += ["--timeframe", "1h", "--api-url", exchange.url]

    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr
    for line in SUMMARY:
        assert line in done.stdout.splitlines()
    assert (tmp_path / "data/candles/binance/BTC-USDT_1h.csv").read_bytes().count(b"\n") == 251
