"""The candle store over the real bundled files and small files of our own."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.candles.atomic import write_atomic
from pipelines.candles.store import CandlesNotFoundError, CandleStore
from pipelines.candles.validate import CandleValidationError
from pipelines.pairs import InvalidNameError
from pipelines.settings import Settings
from tests.pipelines.candles.conftest import BUNDLED_LAST, BUNDLED_ROWS

HEADER = "timestamp,open,high,low,close,volume\n"

# data/ohlcv/SOURCES.md: the same five gaps, 12 missing hours, in every bundled pair.
SOURCES_GAPS = [
    ("2021-04-20T01:00Z", "2021-04-20T04:00Z", 2),
    ("2021-04-25T04:00Z", "2021-04-25T08:00Z", 3),
    ("2021-08-13T01:00Z", "2021-08-13T06:00Z", 4),
    ("2021-09-29T06:00Z", "2021-09-29T09:00Z", 2),
    ("2023-03-24T12:00Z", "2023-03-24T14:00Z", 1),
]


def candle_line(stamp: str, close: float = 101.0) -> str:
    return f"{stamp},100,{max(close, 100) + 1},{min(close, 100) - 1},{close},5\n"


def small_store(
    tmp_path: Path, bundled_rows: list[str], ingested_rows: list[str] | None
) -> CandleStore:
    bundled_dir, data_dir = tmp_path / "bundled", tmp_path / "data"
    bundled_dir.mkdir()
    (bundled_dir / "BTC-USDT_1h.csv.gz").write_bytes(
        gzip.compress((HEADER + "".join(bundled_rows)).encode())
    )
    store = CandleStore(bundled_dir=bundled_dir, data_dir=data_dir)
    if ingested_rows is not None:
        write_atomic(store.ingested_path("BTC", "1h"), (HEADER + "".join(ingested_rows)).encode())
    return store


def test_bundled_btc_loads_as_typed_utc_frame(settings: Settings) -> None:
    frame = CandleStore.from_settings(settings).load("BTC")

    assert len(frame) == BUNDLED_ROWS
    assert frame.index[0] == pd.Timestamp("2021-04-04T21:00Z")
    assert frame.index[-1] == BUNDLED_LAST
    assert str(frame.index.tz) == "UTC"
    assert list(frame.dtypes) == [np.float64] * 5
    # First row of the file, as printed in SOURCES.md.
    assert frame.iloc[0].tolist() == [58025.11, 58184.0, 57976.73, 58116.69, 987.374632]


def test_bundled_btc_gaps_are_exactly_those_in_sources(settings: Settings) -> None:
    gaps = CandleStore.from_settings(settings).gaps("BTC/USDT")

    assert [(g.after, g.before, g.missing) for g in gaps] == [
        (pd.Timestamp(a), pd.Timestamp(b), n) for a, b, n in SOURCES_GAPS
    ]
    assert sum(g.missing for g in gaps) == 12


def test_every_bundled_pair_is_listed_and_shares_the_timestamps(settings: Settings) -> None:
    store = CandleStore.from_settings(settings)

    assert store.pairs() == ["BTC", "ETH", "RVN", "XMR"]
    btc = store.load("BTC").index
    for pair in ("ETH", "XMR", "RVN"):
        assert store.load(pair).index.equals(btc)


def test_unknown_pair_says_where_it_looked(settings: Settings) -> None:
    store = CandleStore.from_settings(settings)

    with pytest.raises(CandlesNotFoundError) as caught:
        store.load("DOGE")

    message = str(caught.value)
    assert "no candles for DOGE at 1h" in message
    assert str(settings.bundled_data_dir / "DOGE-USDT_1h.csv.gz") in message
    assert str(settings.data_dir / "candles" / "binance" / "DOGE-USDT_1h.csv") in message


def test_unknown_timeframe_of_a_known_pair_says_where_it_looked(settings: Settings) -> None:
    with pytest.raises(CandlesNotFoundError, match=r"BTC-USDT_4h\.csv\.gz"):
        CandleStore.from_settings(settings).load("BTC", "4h")


def test_cached_frame_is_reused_while_files_are_unchanged(tmp_path: Path) -> None:
    store = small_store(tmp_path, [candle_line("2024-01-01T00:00:00Z")], None)

    assert store.load("BTC") is store.load("BTC")


def test_cache_reloads_when_a_file_changes(tmp_path: Path) -> None:
    store = small_store(tmp_path, [candle_line("2024-01-01T00:00:00Z")], None)
    assert len(store.load("BTC")) == 1

    path = store.ingested_path("BTC", "1h")
    write_atomic(path, (HEADER + candle_line("2024-01-01T01:00:00Z")).encode())
    assert len(store.load("BTC")) == 2

    with path.open("a") as handle:
        handle.write(candle_line("2024-01-01T02:00:00Z"))
    assert store.load("BTC").index[-1] == pd.Timestamp("2024-01-01T02:00Z")


def test_cache_reloads_a_replaced_file_of_same_size_and_mtime(tmp_path: Path) -> None:
    """A rewrite within the file system's mtime resolution still shows: the inode differs."""
    store = small_store(
        tmp_path,
        [candle_line("2024-01-01T00:00:00Z")],
        [candle_line("2024-01-01T01:00:00Z", close=101.0)],
    )
    path = store.ingested_path("BTC", "1h")
    assert store.load("BTC")["close"].iloc[-1] == 101.0
    before = path.stat()

    write_atomic(path, (HEADER + candle_line("2024-01-01T01:00:00Z", close=102.0)).encode())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

    assert path.stat().st_size == before.st_size
    assert store.load("BTC")["close"].iloc[-1] == 102.0


def test_ingested_candles_merge_after_bundled_with_bundled_winning(tmp_path: Path) -> None:
    store = small_store(
        tmp_path,
        [candle_line("2024-01-01T00:00:00Z"), candle_line("2024-01-01T01:00:00Z", close=101.0)],
        [candle_line("2024-01-01T01:00:00Z", close=150.0), candle_line("2024-01-01T02:00:00Z")],
    )

    frame = store.load("BTC")

    assert frame.index.tolist() == [pd.Timestamp(f"2024-01-01T0{h}:00Z") for h in range(3)]
    assert frame.loc["2024-01-01T01:00Z", "close"] == 101.0  # bundled wins
    assert frame.index.is_monotonic_increasing


def test_a_changed_ingested_file_merges_as_a_fresh_parse_without_reading_bundled_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundled = [candle_line(f"2024-01-01T{h:02d}:00:00Z") for h in (0, 1, 3)]  # a gap at 02:00
    store = small_store(tmp_path, bundled, None)
    store.load("BTC")
    path = store.ingested_path("BTC", "1h")
    read: list[str] = []
    import pipelines.candles.store as module

    original = module.read_candle_file
    monkeypatch.setattr(module, "read_candle_file", lambda p: read.append(p.name) or original(p))
    rounds = [
        # the first ingest: fills the gap, repeats a bundled hour with other prices, goes on
        [("02", 150.0), ("03", 160.0), ("04", 170.0)],
        # an append
        [("02", 150.0), ("03", 160.0), ("04", 170.0), ("05", 180.0)],
        # a rewrite that corrects an ingested candle and drops one
        [("03", 160.0), ("04", 171.0), ("05", 180.0), ("06", 190.0)],
    ]
    for rows in rounds:
        write_atomic(
            path,
            (HEADER + "".join(candle_line(f"2024-01-01T{h}:00:00Z", c) for h, c in rows)).encode(),
        )
        merged = store.load("BTC")
        fresh = CandleStore(bundled_dir=store.bundled_dir, data_dir=store.data_dir).load("BTC")
        pd.testing.assert_frame_equal(merged, fresh)
    assert read.count("BTC-USDT_1h.csv.gz") == len(rounds)  # only the fresh stores read it
    assert merged.loc["2024-01-01T03:00Z", "close"] == 101.0  # bundled still wins
    assert pd.Timestamp("2024-01-01T02:00Z") not in merged.index  # dropped by the rewrite


def test_ingested_file_alone_is_enough(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = CandleStore(bundled_dir=tmp_path / "none", data_dir=data_dir, exchange="kraken")
    write_atomic(
        store.ingested_path("ETH", "15m"), (HEADER + candle_line("2024-01-01T00:15:00Z")).encode()
    )

    assert store.ingested_path("ETH", "15m") == data_dir / "candles/kraken/ETH-USDT_15m.csv"
    assert len(store.load("ETH", "15m")) == 1
    assert store.pairs("15m") == ["ETH"]


def test_broken_ingested_file_is_refused_naming_it(tmp_path: Path) -> None:
    store = small_store(
        tmp_path,
        [candle_line("2024-01-01T00:00:00Z")],
        [candle_line("2024-01-01T01:00:00Z"), "2024-01-01T02:00:00Z,100,99,98,100,1\n"],
    )

    with pytest.raises(CandleValidationError) as caught:
        store.load("BTC")

    assert str(caught.value).startswith(
        f"{store.ingested_path('BTC', '1h')}: line 3: high below max(open, close)"
    )


def test_leftover_temporary_files_are_not_candle_files(tmp_path: Path) -> None:
    store = small_store(tmp_path, [candle_line("2024-01-01T00:00:00Z")], None)
    folder = store.ingested_path("BTC", "1h").parent
    folder.mkdir(parents=True)
    (folder / ".ETH-USDT_1h.csv.abc123.tmp").write_text("half a file")

    assert store.pairs() == ["BTC"]
    assert len(store.load("BTC")) == 1


def test_pair_in_another_quote_is_refused_not_read_as_usdt(settings: Settings) -> None:
    store = CandleStore.from_settings(settings)

    assert len(store.load("BTC/USDT")) == len(store.load("btc-usdt")) == BUNDLED_ROWS
    with pytest.raises(InvalidNameError, match=r"^pair 'ETH/BTC' is quoted in BTC: this store"):
        store.load("ETH/BTC")


@pytest.mark.parametrize("timeframe", ["1x", "/../../x", ""])
def test_malformed_timeframe_is_refused_before_any_file_is_named(
    settings: Settings, timeframe: str
) -> None:
    with pytest.raises(ValueError, match=rf"^unsupported timeframe {timeframe!r}"):
        CandleStore.from_settings(settings).load("BTC", timeframe)
