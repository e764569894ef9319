"""The per-file ingestion lock: two ingestions of one file at once neither drop nor repeat a row."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import filelock
import pandas as pd
import pytest

from pipelines.candles.ingest import (
    IngestError,
    IngestResult,
    ingest_candles,
    ingestion_lock,
    lock_path,
)
from pipelines.candles.store import CandleStore
from pipelines.candles.validate import find_gaps, read_candle_file
from pipelines.settings import Settings
from tests.pipelines.candles.conftest import BUNDLED_LAST, HOUR_MS, NEW_CLOSED
from tests.pipelines.candles.fake_binance import FakeBinance

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


def test_lock_file_sits_beside_the_ingested_file_with_a_dot() -> None:
    path = Path("/data/candles/binance/BTC-USDT_1h.csv")

    assert lock_path(path) == Path("/data/candles/binance/.BTC-USDT_1h.csv.lock")


def test_two_threads_ingesting_the_same_pair_lose_no_candle_and_repeat_none(
    settings: Settings, exchange: FakeBinance
) -> None:
    """Each round, two threads ingest at once from a slow exchange whose clock has moved on by
    three hours: the one that gets the lock second must see the first one's candles."""
    exchange.klines_delay_s = 0.05  # both are mid-fetch together unless one waits for the other
    rounds = 4
    appended: list[list[int]] = [[] for _ in range(rounds)]
    errors: list[BaseException] = []

    def advance() -> None:
        exchange.now_ms += 3 * HOUR_MS

    barrier = threading.Barrier(2, action=advance)

    def worker() -> None:
        try:
            for number in range(rounds):
                barrier.wait(timeout=60)
                appended[number].append(ingest(settings, exchange).appended)
        except BaseException as error:
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=worker, name=f"ingest-{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    # Per round, one thread appended what had closed, the other found nothing left.
    assert [sorted(c) for c in appended] == [[0, NEW_CLOSED + 3]] + [[0, 3]] * (rounds - 1)
    frame = read_candle_file(target(settings))
    expected = pd.date_range(
        BUNDLED_LAST + HOUR, periods=NEW_CLOSED + 3 * rounds, freq="h", tz="UTC"
    )
    assert frame.index.is_unique
    assert frame.index.equals(expected)
    assert find_gaps(frame, "1h") == []
    assert not lock_path(target(settings)).exists()


def test_ingestion_waits_for_the_lock_and_gives_up_naming_the_lock_file(
    settings: Settings, exchange: FakeBinance
) -> None:
    lock_file = lock_path(target(settings))
    lock_file.parent.mkdir(parents=True)
    held = filelock.FileLock(lock_file)
    with held, pytest.raises(IngestError) as caught:
        ingest(settings, exchange, lock_timeout_s=0.2)

    message = str(caught.value)
    assert f"still holds its lock {lock_file} after 0.2 s" in message
    assert "nothing written" in message
    assert not target(settings).exists()
    assert exchange.klines_requests == []  # it waited before reading or fetching anything
    # Once the other holder is gone, the same call goes through.
    assert ingest(settings, exchange, lock_timeout_s=0.2).appended == NEW_CLOSED


def test_a_leftover_lock_file_is_reused_and_never_listed_as_candles(
    settings: Settings, exchange: FakeBinance
) -> None:
    """A process killed while holding the lock leaves its (unheld) lock file behind."""
    lock_file = lock_path(target(settings))
    lock_file.parent.mkdir(parents=True)
    lock_file.write_bytes(b"")
    (lock_file.parent / ".ETH-USDT_1h.csv.lock").write_bytes(b"")
    store = CandleStore.from_settings(settings)

    assert store.pairs() == ["BTC", "ETH", "RVN", "XMR"]
    assert ingest(settings, exchange).appended == NEW_CLOSED
    assert not lock_file.exists()
    assert sorted(p.name for p in lock_file.parent.iterdir()) == [
        ".ETH-USDT_1h.csv.lock",
        "BTC-USDT_1h.csv",
    ]
    assert store.pairs() == ["BTC", "ETH", "RVN", "XMR"]


def test_the_lock_excludes_every_other_holder_although_it_is_removed_on_release(
    tmp_path: Path,
) -> None:
    """Removing the lock file on release must not let two holders in at once: a waiter that
    got the removed file's lock has to take the new file's instead."""
    path = tmp_path / "BTC-USDT_1h.csv"
    inside: list[str] = []
    overlaps: list[list[str]] = []
    entries = 0
    guard = threading.Lock()
    start = threading.Barrier(6)

    def worker(name: str) -> None:
        nonlocal entries
        start.wait(timeout=30)
        for _ in range(40):
            with ingestion_lock(path, timeout_s=60):
                with guard:
                    inside.append(name)
                    entries += 1
                    if len(inside) > 1:
                        overlaps.append(list(inside))
                threading.Event().wait(0.001)  # hold it a moment, so waiters pile up
                with guard:
                    inside.remove(name)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert overlaps == []
    assert entries == 6 * 40
    assert not lock_path(path).exists()
