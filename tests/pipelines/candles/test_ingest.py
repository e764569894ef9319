"""Ingestion with ccxt for real, against a Binance-like server on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipelines.candles.exchange import IngestInputError
from pipelines.candles.ingest import IngestError, IngestProgress, IngestResult, ingest_candles
from pipelines.candles.store import CandleStore
from pipelines.candles.validate import CandleValidationError, Gap
from pipelines.settings import Settings
from tests.pipelines.candles.conftest import (
    BUNDLED_LAST,
    BUNDLED_ROWS,
    HOUR_MS,
    NEW_CLOSED,
    PAGE_CAP,
    to_ms,
)
from tests.pipelines.candles.fake_binance import FakeBinance, candle_at

HOUR = pd.Timedelta(hours=1)


def ingest(settings: Settings, server: FakeBinance, /, **overrides: Any) -> IngestResult:
    kwargs: dict[str, Any] = {
        "exchange": "binance",
        "pair": "BTC/USDT",
        "timeframe": "1h",
        "data_dir": settings.data_dir,
        "bundled_dir": settings.bundled_data_dir,
        "api_url": server.url,
    }
    kwargs.update(overrides)
    return ingest_candles(**kwargs)


def target(settings: Settings) -> Path:
    return settings.data_dir / "candles" / "binance" / "BTC-USDT_1h.csv"


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_pages_through_more_candles_than_one_page(
    settings: Settings, exchange: FakeBinance
) -> None:
    result = ingest(settings, exchange)

    assert result.appended == NEW_CLOSED > PAGE_CAP
    assert result.start == BUNDLED_LAST + HOUR
    starts = [int(q["startTime"]) for q in exchange.klines_requests]
    # Each page starts one hour after the last candle of the one before.
    assert starts == [to_ms(BUNDLED_LAST + HOUR) + i * PAGE_CAP * HOUR_MS for i in range(3)]
    frame = pd.read_csv(target(settings), index_col="timestamp")
    assert len(frame) == NEW_CLOSED
    assert frame.index[0] == "2023-12-30T19:00:00Z"
    assert frame.index.is_unique
    # The values written are those the exchange sent, read back through text.
    ms = to_ms(BUNDLED_LAST + 7 * HOUR)
    assert frame.loc["2023-12-31T01:00:00Z"].tolist() == [float(v) for v in candle_at(ms)]


def test_page_size_asked_for_is_the_page_limit(settings: Settings, exchange: FakeBinance) -> None:
    result = ingest(settings, exchange, page_limit=40)

    assert result.appended == NEW_CLOSED
    assert {q["limit"] for q in exchange.klines_requests} == {"40"}
    assert len(exchange.klines_requests) == 7  # 6 full pages of 40, then 10 + the forming one


def test_only_closed_candles_are_appended(settings: Settings, exchange: FakeBinance) -> None:
    """The server's clock stands in 2024 while ours is later: only the exchange's clock can tell
    that its newest candle is still forming, so this also shows which clock decides."""
    forming = pd.Timestamp(exchange.now_ms // HOUR_MS * HOUR_MS, unit="ms", tz="UTC")

    result = ingest(settings, exchange)

    assert result.last_new == forming - HOUR
    assert result.fetched == result.appended + 1  # the forming candle came, and was dropped
    frame = CandleStore.from_settings(settings).load("BTC")
    assert frame.index[-1] == forming - HOUR
    assert forming not in frame.index


def test_second_run_appends_nothing_and_leaves_file_byte_identical(
    settings: Settings, exchange: FakeBinance
) -> None:
    ingest(settings, exchange)
    path = target(settings)
    before, stat = path.read_bytes(), path.stat()

    again = ingest(settings, exchange)

    assert again.appended == 0
    assert again.first_new is None
    assert path.read_bytes() == before
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == (stat.st_mtime_ns, stat.st_ino)
    assert files_under(settings.data_dir) == [path]


def test_same_history_fetched_twice_gives_the_same_bytes(
    settings: Settings, exchange: FakeBinance, tmp_path: Path
) -> None:
    ingest(settings, exchange)
    other = settings.model_copy(update={"data_dir": tmp_path / "other"})
    ingest(other, exchange)

    assert target(settings).read_bytes() == target(other).read_bytes()


def test_later_run_appends_only_what_closed_since_and_keeps_old_bytes(
    settings: Settings, exchange: FakeBinance
) -> None:
    first = ingest(settings, exchange)
    before = target(settings).read_bytes()
    exchange.now_ms += 5 * HOUR_MS

    second = ingest(settings, exchange)

    assert second.start == first.last_new + HOUR
    assert second.appended == 5
    assert second.last_new == first.last_new + 5 * HOUR
    after = target(settings).read_bytes()
    assert after.startswith(before)
    assert after.count(b"\n") == before.count(b"\n") + 5


def test_appended_candles_are_visible_through_store_merged_with_bundled(
    settings: Settings, exchange: FakeBinance
) -> None:
    store = CandleStore.from_settings(settings)
    assert store.load("BTC").index[-1] == BUNDLED_LAST

    result = ingest(settings, exchange)
    frame = store.load("BTC")

    assert len(frame) == BUNDLED_ROWS + result.appended
    assert frame.index[-1] == result.last_new
    assert frame.index[BUNDLED_ROWS - 1 : BUNDLED_ROWS + 1].tolist() == [
        BUNDLED_LAST,
        BUNDLED_LAST + HOUR,
    ]
    # The bundled gaps are still the only ones: the new candles join without a hole.
    assert len(store.gaps("BTC")) == 5
    assert frame.loc[BUNDLED_LAST + HOUR].tolist() == [
        float(v) for v in candle_at(to_ms(BUNDLED_LAST + HOUR))
    ]


def test_since_before_known_candles_fetches_only_after_them(
    settings: Settings, exchange: FakeBinance
) -> None:
    result = ingest(settings, exchange, since=pd.Timestamp("2023-06-01T00:00Z"))

    assert result.start == BUNDLED_LAST + HOUR
    assert int(exchange.klines_requests[0]["startTime"]) == to_ms(BUNDLED_LAST + HOUR)
    assert result.appended == NEW_CLOSED


def test_since_after_known_candles_leaves_a_gap_that_is_reported(
    settings: Settings, exchange: FakeBinance
) -> None:
    since = BUNDLED_LAST + 5 * HOUR

    result = ingest(settings, exchange, since=since.to_pydatetime())

    assert result.first_new == since
    assert result.appended == NEW_CLOSED - 4
    assert result.gaps == [Gap(after=BUNDLED_LAST, before=since, missing=4)]


def test_candles_missing_at_the_exchange_are_reported_not_filled(
    settings: Settings, exchange: FakeBinance
) -> None:
    hole = [to_ms(BUNDLED_LAST + h * HOUR) for h in (120, 121, 122)]
    exchange.missing.update(hole)

    result = ingest(settings, exchange)

    assert result.appended == NEW_CLOSED - 3
    assert result.gaps == [
        Gap(after=BUNDLED_LAST + 119 * HOUR, before=BUNDLED_LAST + 123 * HOUR, missing=3)
    ]
    frame = CandleStore.from_settings(settings).load("BTC")
    assert not frame.index.isin(pd.to_datetime(hole, unit="ms", utc=True)).any()


def test_progress_is_reported_per_page_up_to_the_expected_total(
    settings: Settings, exchange: FakeBinance
) -> None:
    updates: list[IngestProgress] = []

    ingest(settings, exchange, progress=updates.append)

    assert [u.kept for u in updates] == [100, 200, 250]
    assert {u.expected for u in updates} == {NEW_CLOSED}
    assert updates[-1].last_open == BUNDLED_LAST + NEW_CLOSED * HOUR


def test_pair_with_no_known_candles_needs_since(
    settings: Settings, exchange: FakeBinance, tmp_path: Path
) -> None:
    empty = tmp_path / "no-bundled"
    with pytest.raises(IngestInputError) as caught:
        ingest(settings, exchange, bundled_dir=empty)

    message = str(caught.value)
    assert "no BTC/USDT 1h candles known yet" in message
    assert str(empty / "BTC-USDT_1h.csv.gz") in message
    assert "pass --since" in message
    assert exchange.klines_requests == []
    assert files_under(settings.data_dir) == []

    result = ingest(settings, exchange, bundled_dir=empty, since=BUNDLED_LAST - 9 * HOUR)
    assert result.appended == NEW_CLOSED + 10
    assert result.gaps == []


@pytest.mark.parametrize(
    ("overrides", "fragments", "network"),
    [
        (
            {"exchange": "binanse"},
            ["unknown exchange 'binanse' (did you mean binance", "expected a ccxt exchange id"],
            False,
        ),
        (
            {"timeframe": "7h"},
            ["unsupported timeframe '7h' for binance", "allowed timeframes are 1m, 3m, 5m"],
            False,
        ),
        ({"timeframe": "1M"}, ["unsupported timeframe '1M'"], False),
        ({"pair": "BTCUSDT"}, ["malformed pair 'BTCUSDT'", "such as BTC/USDT"], False),
        ({"pair": "../x/USDT"}, ["malformed pair '../x/USDT'"], False),
        (
            {"pair": "BTC/USDC"},
            ["unknown pair 'BTC/USDC' on binance", "2 spot markets", "close matches: BTC/USDT"],
            True,
        ),
        ({"api_url": "ftp://example"}, ["malformed API URL 'ftp://example'"], False),
    ],
    ids=["exchange", "timeframe", "month-timeframe", "pair-format", "pair-path", "pair", "url"],
)
def test_bad_input_is_refused_clearly_and_writes_nothing(
    settings: Settings,
    exchange: FakeBinance,
    overrides: dict[str, Any],
    fragments: list[str],
    network: bool,
) -> None:
    with pytest.raises(IngestInputError) as caught:
        ingest(settings, exchange, **overrides)

    for fragment in fragments:
        assert fragment in str(caught.value)
    assert files_under(settings.data_dir) == []
    assert exchange.klines_requests == []
    # Whatever can be checked locally is, before the first request.
    assert bool(exchange.requests) is network


def test_server_failing_midway_leaves_previous_file_intact(
    settings: Settings, exchange: FakeBinance
) -> None:
    ingest(settings, exchange)
    before = target(settings).read_bytes()
    exchange.now_ms += 300 * HOUR_MS
    exchange.fail_klines_after = len(exchange.klines_requests) + 1  # one page, then HTTP 500

    with pytest.raises(IngestError, match=r"binance: could not fetch BTC/USDT 1h candles from"):
        ingest(settings, exchange)

    assert target(settings).read_bytes() == before
    assert files_under(settings.data_dir) == [target(settings)]


def test_failure_after_temp_file_is_written_leaves_previous_file_intact(
    settings: Settings, exchange: FakeBinance, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest(settings, exchange)
    path = target(settings)
    before = path.read_bytes()
    exchange.now_ms += 3 * HOUR_MS
    staged: list[bytes] = []

    def failing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        staged.append(Path(src).read_bytes())  # the whole new content is on disk by now
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        ingest(settings, exchange)
    monkeypatch.undo()

    assert staged[0].startswith(before)
    assert len(staged[0]) > len(before)
    assert path.read_bytes() == before
    assert files_under(settings.data_dir) == [path]  # the temporary file was removed


@pytest.mark.slow
def test_process_killed_before_rename_leaves_previous_file_intact(
    settings: Settings, exchange: FakeBinance
) -> None:
    """A real crash: the process dies by SIGKILL with the new content written but not renamed."""
    ingest(settings, exchange)
    path = target(settings)
    before = path.read_bytes()
    exchange.now_ms += 3 * HOUR_MS
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from pipelines.candles.ingest import ingest_candles

        os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)
        ingest_candles(
            exchange="binance", pair="BTC/USDT", timeframe="1h",
            data_dir=Path({str(settings.data_dir)!r}),
            bundled_dir=Path({str(settings.bundled_data_dir)!r}),
            api_url={exchange.url!r},
        )
        """
    )

    child = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)

    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    assert path.read_bytes() == before
    # The lock file of the killed ingestion stays too (the next one reuses it).
    leftovers = [p for p in files_under(settings.data_dir) if p != path and p.suffix != ".lock"]
    assert len(leftovers) == 1
    assert leftovers[0].name.startswith(".BTC-USDT_1h.csv.")
    assert leftovers[0].read_bytes().startswith(before)
    # The leftover is ignored by the store, and the next run completes the append.
    store = CandleStore.from_settings(settings)
    assert store.pairs() == ["BTC", "ETH", "RVN", "XMR"]
    assert ingest(settings, exchange).appended == 3
    assert store.load("BTC").index[-1] == BUNDLED_LAST + (NEW_CLOSED + 3) * HOUR


def test_malformed_candles_from_the_exchange_are_refused_and_not_written(
    settings: Settings, exchange: FakeBinance
) -> None:
    bad_open = to_ms(BUNDLED_LAST + 3 * HOUR)
    exchange.overrides[bad_open] = ["100", "90", "80", "95", "1"]  # high below open

    with pytest.raises(CandleValidationError) as caught:
        ingest(settings, exchange)

    message = str(caught.value)
    assert message.startswith(f"{target(settings)} (after fetching from binance; not written)")
    assert "not written): line 4: high below max(open, close): high=90.0" in message
    assert files_under(settings.data_dir) == []


def test_ccxt_without_the_url_override_would_leave_loopback(
    settings: Settings, exchange: FakeBinance, loopback_only: list[str]
) -> None:
    """The offline guard works: without `api_url` ccxt heads for Binance and is stopped."""
    with pytest.raises(IngestError, match=r"binance: could not load markets"):
        ingest(settings, exchange, api_url=None)

    assert "api.binance.com" in loopback_only
    assert exchange.requests == []
    assert files_under(settings.data_dir) == []


def test_a_ccxt_client_can_be_passed_in(settings: Settings, exchange: FakeBinance) -> None:
    import ccxt

    client = ccxt.binance({"enableRateLimit": False, "options": {"fetchMarkets": ["spot"]}})
    api = client.urls["api"]
    client.urls["api"] = {
        k: v.replace("https://api.binance.com", exchange.url) for k, v in api.items()
    }
    try:
        result = ingest(settings, exchange, api_url=None, client=client)
        assert result.appended == NEW_CLOSED
        # A client we were given is left open for its owner.
        assert client.fetch_time() == exchange.now_ms
    finally:
        client.close()
