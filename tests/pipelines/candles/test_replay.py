"""The replay exchange (`tbml replay`) with a real HTTP server on loopback and real ccxt.

Ingestion (`ingest_candles`, ccxt's `binance`) runs against it exactly as the live feed does,
with the service's "bundled" directory cut at the start by `prepare_replay_store`. A fake clock
advances the replay's hours by hand, so what was released is known without waiting.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.candles.ingest import IngestResult, ingest_candles
from pipelines.candles.replay import (
    FORMING_VOLUME,
    MIN_HISTORY,
    ReplayError,
    ReplayExchange,
    ReplayServer,
    default_start,
    prepare_replay_store,
)
from pipelines.candles.store import CandleStore
from pipelines.candles.validate import read_candle_file
from pipelines.settings import get_settings
from tbml.cli import app
from tests.conftest import BUNDLED, free_port
from tests.pipelines.candles.conftest import BUNDLED_LAST, HOUR_MS, to_ms

HOUR = pd.Timedelta(hours=1)
INTERVAL = 0.2
# The default start: 720 candles before the newest bundled one.
START = BUNDLED_LAST - 720 * HOUR


class FakeClock:
    """A clock the test moves: `advance(k)` lets k replayed candles close, plus half of the
    next one, so the candle still forming is always half-way through its hour."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, candles: float) -> None:
        self.now += candles * INTERVAL


@pytest.fixture(scope="module")
def btc() -> pd.DataFrame:
    return read_candle_file(BUNDLED / "BTC-USDT_1h.csv.gz")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def replay(btc: pd.DataFrame, clock: FakeClock, start: pd.Timestamp) -> ReplayExchange:
    return ReplayExchange(
        {"BTC": btc}, start=start, interval_s=INTERVAL, timeframe="1h", clock=clock
    )


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """The service's "bundled" directory: the real BTC candles before `START`."""
    target = tmp_path / "ohlcv"
    prepare_replay_store(BUNDLED, target, pairs=["BTC"], start=START)
    return target


@pytest.fixture
def server(btc: pd.DataFrame, clock: FakeClock) -> Iterator[ReplayServer]:
    with ReplayServer(replay(btc, clock, START)) as running:
        yield running


def ingest(server: ReplayServer, tmp_path: Path, bundled_dir: Path) -> IngestResult:
    return ingest_candles(
        exchange="binance",
        pair="BTC/USDT",
        timeframe="1h",
        data_dir=tmp_path / "data",
        bundled_dir=bundled_dir,
        api_url=server.url,
    )


def ingested(tmp_path: Path) -> pd.DataFrame:
    return read_candle_file(tmp_path / "data" / "candles" / "binance" / "BTC-USDT_1h.csv")


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_prepared_store_holds_the_real_lines_before_the_start(
    store_dir: Path, btc: pd.DataFrame
) -> None:
    source = gzip.decompress((BUNDLED / "BTC-USDT_1h.csv.gz").read_bytes()).decode()
    written = (store_dir / "BTC-USDT_1h.csv.gz").read_bytes()
    before = int((btc.index < START).sum())

    assert gzip.decompress(written).decode().splitlines() == source.splitlines()[: before + 1]
    assert read_candle_file(store_dir / "BTC-USDT_1h.csv.gz").index[-1] == START - HOUR
    # Deterministic: a second preparation writes the same bytes.
    again = prepare_replay_store(BUNDLED, store_dir.parent / "again", pairs=["btc"], start=START)
    assert again == {"BTC": before}
    assert (store_dir.parent / "again" / "BTC-USDT_1h.csv.gz").read_bytes() == written
    assert START.isoformat() in (store_dir / "SOURCES.md").read_text()


def test_default_start_is_720_candles_before_the_newest() -> None:
    assert default_start(BUNDLED, pairs=["BTC", "ETH"]) == START


def test_ingests_exactly_the_released_candles_with_their_real_values(
    server: ReplayServer, clock: FakeClock, store_dir: Path, tmp_path: Path, btc: pd.DataFrame
) -> None:
    clock.advance(3.5)

    first = ingest(server, tmp_path, store_dir)

    assert first.appended == 3
    assert (first.first_new, first.last_new) == (START, START + 2 * HOUR)
    pd.testing.assert_frame_equal(ingested(tmp_path), btc.loc[START : START + 2 * HOUR])

    clock.advance(5)
    second = ingest(server, tmp_path, store_dir)

    assert second.appended == 5
    # The service's view, truncated bundled file plus ingested candles, is the real series.
    store = CandleStore(bundled_dir=store_dir, data_dir=tmp_path / "data")
    pd.testing.assert_frame_equal(store.load("BTC"), btc.loc[: START + 7 * HOUR])


def test_the_forming_candle_is_served_partial_and_never_ingested(
    server: ReplayServer, clock: FakeClock, store_dir: Path, tmp_path: Path, btc: pd.DataFrame
) -> None:
    clock.advance(2.5)
    forming = START + 2 * HOUR

    status, rows = get(f"{server.url}/api/v3/klines?symbol=BTCUSDT&interval=1h&limit=3")
    result = ingest(server, tmp_path, store_dir)

    assert status == 200
    assert [row[0] for row in rows] == [to_ms(START), to_ms(START + HOUR), to_ms(forming)]
    real_open = btc.loc[forming, "open"]
    assert [float(v) for v in rows[-1][1:5]] == [real_open] * 4
    assert rows[-1][5] == FORMING_VOLUME
    assert result.fetched == 3  # the exchange sent the forming candle ...
    assert result.appended == 2  # ... and it was not kept
    assert forming not in ingested(tmp_path).index

    clock.advance(1)
    later = ingest(server, tmp_path, store_dir)

    assert (later.appended, later.last_new) == (1, forming)
    pd.testing.assert_frame_equal(ingested(tmp_path).loc[[forming]], btc.loc[[forming]])


def test_nothing_appears_after_the_newest_bundled_candle(
    btc: pd.DataFrame, clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    start = BUNDLED_LAST - 2 * HOUR
    bundled = tmp_path / "ohlcv"
    prepare_replay_store(BUNDLED, bundled, pairs=["BTC"], start=start)
    exchange = replay(btc, clock, start)
    caplog.set_level(logging.INFO, logger="pipelines.candles.replay")

    with ReplayServer(exchange) as server:
        clock.advance(50)
        result = ingest(server, tmp_path, bundled)
        clock.advance(50)
        again = ingest(server, tmp_path, bundled)
        after = to_ms(BUNDLED_LAST + HOUR)
        status, rows = get(
            f"{server.url}/api/v3/klines?symbol=BTCUSDT&interval=1h&startTime={after}"
        )
        _, clock_now = get(f"{server.url}/api/v3/time")

    assert (result.appended, result.last_new) == (3, BUNDLED_LAST)
    assert again.appended == 0
    assert (status, rows) == (200, [])
    assert clock_now["serverTime"] == to_ms(start) + 100 * HOUR_MS  # the clock keeps running
    assert exchange.newest_released() == BUNDLED_LAST
    ends = [r for r in caplog.records if "reached the end of the bundled candles" in r.message]
    assert len(ends) == 1
    with pytest.raises(ReplayError, match="will ever be released"):
        exchange.wait_until_released(BUNDLED_LAST + HOUR, timeout=1)


def test_release_helpers_follow_the_clock(btc: pd.DataFrame, clock: FakeClock) -> None:
    exchange = replay(btc, clock, START)
    t0 = exchange.start_clock()

    assert exchange.newest_released() == START - HOUR  # history only
    assert exchange.release_time(START + 4 * HOUR) == pytest.approx(t0 + 5 * INTERVAL)
    with pytest.raises(TimeoutError, match="was not released"):
        exchange.wait_until_released(START, timeout=0.01)

    clock.advance(5)

    assert exchange.wait_until_released(START + 4 * HOUR, timeout=0.01) == START + 4 * HOUR
    assert exchange.released("BTC").index[-1] == START + 4 * HOUR
    assert exchange.newest_released() == START + 4 * HOUR


def test_binance_errors_for_another_interval_and_an_unknown_symbol(
    server: ReplayServer,
) -> None:
    assert get(f"{server.url}/api/v3/klines?symbol=BTCUSDT&interval=4h") == (
        400,
        {"code": -1120, "msg": "Invalid interval."},
    )
    assert get(f"{server.url}/api/v3/klines?symbol=DOGEUSDT&interval=1h") == (
        400,
        {"code": -1121, "msg": "Invalid symbol."},
    )
    _, info = get(f"{server.url}/api/v3/exchangeInfo")
    assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT"]
    assert get(f"{server.url}/api/v3/ping") == (200, {})


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings from the environment only, with the bundled files of the repository."""
    monkeypatch.chdir(tmp_path)
    for name in ("ML_TIMEFRAME", "ML_QUOTE_CURRENCY", "ML_PAIRS", "TRADING_PAIRS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ML_BUNDLED_DATA_DIR", str(BUNDLED))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--start", "2019-01-01T00:00Z"],
            [
                "--start 2019-01-01T00:00Z",
                "outside the data",
                f"at least {MIN_HISTORY} candles before",
                "2023-12-30T18:00Z",
            ],
        ),
        (["--start", "2024-02-01T00:00Z"], ["outside the data", "2023-12-30T18:00Z"]),
        (["--start", "2023-12-01T00:30Z"], ["not a candle's open time", "2023-12-01T00:00Z"]),
        (["--start", "yesterday-ish"], ["--start yesterday-ish", "malformed start"]),
        (["--pairs", "DOGE"], ["'DOGE'", "bundled pairs in", "BTC, ETH, RVN, XMR"]),
        (["--pairs", "BTC,b/x"], ["'b/x'", "BTC, ETH, RVN, XMR"]),
        (["--interval", "0"], ["--interval 0", "> 0"]),
    ],
)
def test_bad_arguments_are_refused_with_what_is_allowed(
    cli_env: None, btc: pd.DataFrame, args: list[str], expected: list[str]
) -> None:
    pairs = [] if "--pairs" in args else ["--pairs", "BTC"]  # one file to read is enough
    result = CliRunner().invoke(app, ["replay", "--port", "0", *pairs, *args])

    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    for text in expected:
        assert text in result.stderr
    if "outside the data" in expected:
        assert f"{btc.index[MIN_HISTORY]:%Y-%m-%dT%H:%MZ}" in result.stderr


def test_replay_command_runs_an_hour_per_interval_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/v3/time"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_", "TRADING_"))}
    env["ML_BUNDLED_DATA_DIR"] = str(BUNDLED)
    tbml = Path(sys.executable).parent / "tbml"
    spawned = time.time()
    child = subprocess.Popen(
        [str(tbml), "replay", "--port", str(port), "--interval", str(INTERVAL), "--pairs", "BTC"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # until it listens (or dies)
            assert child.poll() is None, child.communicate()[1]
            try:
                get(url)
                break
            except OSError:
                assert time.monotonic() < deadline, "tbml replay did not listen within 60 s"
                time.sleep(0.05)

        before_1 = time.time()
        first = get(url)[1]["serverTime"]
        after_1 = time.time()
        time.sleep(0.5)
        before_2 = time.time()
        second = get(url)[1]["serverTime"]
        after_2 = time.time()
    finally:
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=20)

    def hours_ms(seconds: float) -> float:
        return seconds / INTERVAL * HOUR_MS

    # The replay's clock ran one hour per 0.2 s of ours, bracketed by when we asked.
    assert hours_ms(before_2 - after_1) - 1 <= second - first <= hours_ms(after_2 - before_1) + 1
    assert to_ms(START) <= first <= to_ms(START) + hours_ms(after_1 - spawned)
    assert child.returncode == 0, err
    assert "Traceback" not in err
    lines = out.splitlines()
    assert lines[0].startswith(f"replay: http://127.0.0.1:{port} serving BTC (BTCUSDT) from ")
    assert lines[-1] == "replay: stopped"
