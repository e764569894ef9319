"""The live candle feed against a Binance-like server on loopback that fails in every way we know:
down, answering 500s or garbage, a clock mid-candle, ahead of ours, or jumping back."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from pipelines.candles.feed import (
    THREAD_NAME,
    CandleFeed,
    feed_view,
    market_now_ms,
    read_feed_status,
    status_path,
)
from pipelines.candles.ingest import LOCAL_CLOCK_TOLERANCE_MS, ingest_candles
from pipelines.candles.store import CandleStore
from pipelines.candles.validate import find_gaps, read_candle_file
from pipelines.settings import Settings
from tests.pipelines.candles.conftest import BUNDLED_LAST, HOUR_MS, NEW_CLOSED, PAGE_CAP, to_ms
from tests.pipelines.candles.fake_binance import FakeBinance, FakeBinanceServer

HOUR = pd.Timedelta(hours=1)
NEWEST = BUNDLED_LAST + NEW_CLOSED * HOUR  # the newest closed candle at the fake's first clock
FEED_LOGGER = "pipelines.candles.feed"


class Clock:
    """The local clock, in epoch seconds, moved by the test."""

    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


class Market:
    """The fake exchange, which can be stopped (connections refused) and started again at the
    same URL."""

    def __init__(self, state: FakeBinance) -> None:
        self.state = state
        self._server: FakeBinanceServer | None = None
        self.port = 0
        self.start()

    def start(self) -> None:
        self._server = FakeBinanceServer(self.state, port=self.port)
        self.port = self._server.port
        self._server.__enter__()

    def stop(self) -> None:
        if self._server is not None:
            self._server.__exit__(None, None, None)
            self._server = None


@pytest.fixture
def market() -> Iterator[Market]:
    """As the `exchange` fixture: its clock half an hour into the candle after NEWEST."""
    state = FakeBinance(
        now_ms=to_ms(NEWEST + HOUR + pd.Timedelta(minutes=30)),
        first_open_ms=to_ms(pd.Timestamp("2021-01-01T00:00Z")),
        max_limit=PAGE_CAP,
    )
    running = Market(state)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def feed_settings(settings: Settings, market: Market) -> Settings:
    return settings.model_copy(
        update={
            "pairs": ["BTC"],
            "exchange_url": market.state.url,
            "feed_delay_s": 10.0,
            "feed_max_wait_s": 0.0,
        }
    )


def exchange_clock(market: Market, *, ahead_s: float = 0.0) -> Clock:
    """A local clock standing `ahead_s` after the exchange's."""
    return Clock(market.state.now_ms / 1000 + ahead_s)


def candles_file(settings: Settings, pair: str = "BTC") -> Path:
    return settings.data_dir / "candles" / "binance" / f"{pair}-USDT_1h.csv"


def stored(settings: Settings, pair: str = "BTC") -> pd.DatetimeIndex:
    return pd.DatetimeIndex(read_candle_file(candles_file(settings, pair)).index)


def assert_contiguous_through(settings: Settings, newest: pd.Timestamp) -> None:
    """The ingested file holds every candle after the bundled ones through `newest`, once."""
    index = stored(settings)
    assert index.is_unique
    assert index.equals(pd.date_range(BUNDLED_LAST + HOUR, newest, freq="h", tz="UTC"))


def feed_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == FEED_LOGGER and r.levelno >= logging.INFO and text in r.getMessage()
    ]


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    """Poll `condition` (a guard against hanging, not a measure of speed)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


# --- a round, its status and its schedule ---------------------------------------------------------


def test_first_round_fetches_every_pair_and_reports_it_to_every_process(
    feed_settings: Settings, market: Market
) -> None:
    settings = feed_settings.model_copy(update={"pairs": ["BTC", "ETH"]})
    clock = exchange_clock(market, ahead_s=2.5)
    calls: list[tuple[str, pd.Timestamp]] = []
    feed = CandleFeed(
        settings, on_new=lambda pair, newest: calls.append((pair, newest)), clock=clock
    )

    feed.run_once()

    assert calls == [("BTC", NEWEST), ("ETH", NEWEST)]
    for pair in ("BTC", "ETH"):
        assert stored(settings, pair)[-1] == NEWEST
    status = read_feed_status(settings)
    assert sorted(status) == ["BTC", "ETH"]
    now_ms = int(clock() * 1000)
    assert status["BTC"] == {
        "newestCandle": to_ms(NEWEST),
        "lastSuccess": now_ms,
        "lastAttempt": now_ms,
        "lastError": None,
        "lastErrorAt": None,
        "consecutiveFailures": 0,
        "nextAttempt": status["BTC"]["nextAttempt"],
        "clockOffsetMs": -2500,
        "fetcher": f"{socket.gethostname()}:{os.getpid()}",
    }
    # What /api/health shows, from the store and the status file.
    store = CandleStore.from_settings(settings)
    views = feed_view(settings, store, now_ms=market.state.now_ms)
    assert views["ETH"]["state"] == "ok"
    assert views["BTC"]["newestCandle"] == to_ms(NEWEST)
    assert views["BTC"]["newestClose"] == to_ms(NEWEST + HOUR)
    assert views["BTC"]["lagMs"] == 30 * 60_000
    # Market time is ours plus the offset measured at the freshest success.
    before = int(time.time() * 1000)
    market_now = market_now_ms(settings)
    after = int(time.time() * 1000)
    assert before - 2500 <= market_now <= after - 2500


def test_a_round_of_several_pairs_asks_the_exchange_clock_once(
    feed_settings: Settings, market: Market
) -> None:
    settings = feed_settings.model_copy(update={"pairs": ["BTC", "ETH"]})
    feed = CandleFeed(settings, clock=exchange_clock(market, ahead_s=2.5))

    feed.run_once()

    clock_calls = [r for r in market.state.requests if r.startswith("/api/v3/time")]
    assert len(clock_calls) == 1
    status = read_feed_status(settings)
    for pair in settings.pairs:
        assert stored(settings, pair)[-1] == NEWEST  # the forming candle is still left out
        assert status[pair]["clockOffsetMs"] == -2500


def test_next_fetch_is_due_when_the_next_candle_has_closed_plus_the_delay(
    feed_settings: Settings, market: Market
) -> None:
    """Our clock stands 1000 s after the exchange's; the due time is mapped with the offset."""
    clock = exchange_clock(market, ahead_s=1000)
    feed = CandleFeed(feed_settings, clock=clock)
    feed.run_once()
    requests = len(market.state.klines_requests)

    # The forming candle closes in 30 min, at our 30 min + 1000 s from the exchange's now; + 10 s.
    assert feed.next_wait_s() == 1800 + 10
    feed.run_once()  # nothing is due: nothing is asked
    assert len(market.state.klines_requests) == requests

    clock.advance(1810)
    market.state.now_ms += 1810 * 1000
    feed.run_once()

    assert stored(feed_settings)[-1] == NEWEST + HOUR
    assert feed.next_wait_s() == 3600
    capped = CandleFeed(feed_settings.model_copy(update={"feed_max_wait_s": 5.0}), clock=clock)
    capped.run_once()
    assert capped.next_wait_s() == 5.0


def test_without_a_status_file_every_pair_is_off_and_a_corrupt_one_reads_as_none(
    feed_settings: Settings,
) -> None:
    store = CandleStore.from_settings(feed_settings)
    assert read_feed_status(feed_settings) == {}
    views = feed_view(feed_settings, store, now_ms=to_ms(BUNDLED_LAST + 5 * HOUR))
    assert views["BTC"]["state"] == "off"
    assert views["BTC"]["newestCandle"] == to_ms(BUNDLED_LAST)  # the bundled file's newest
    assert views["BTC"]["lagMs"] == 4 * HOUR_MS

    path = status_path(feed_settings)
    path.parent.mkdir(parents=True)
    path.write_text('{"BTC": {"consecutiveFail')
    assert read_feed_status(feed_settings) == {}
    assert feed_view(feed_settings, store)["BTC"]["state"] == "off"
    # The status file is not a candle file.
    assert store.pairs() == ["BTC", "ETH", "RVN", "XMR"]


def test_an_old_newest_candle_is_lagging(feed_settings: Settings, market: Market) -> None:
    feed = CandleFeed(feed_settings, clock=exchange_clock(market))
    feed.run_once()
    store = CandleStore.from_settings(feed_settings)
    close = to_ms(NEWEST + HOUR)

    assert feed_view(feed_settings, store, now_ms=close + 2 * HOUR_MS)["BTC"]["state"] == "ok"
    assert feed_view(feed_settings, store, now_ms=close + 3 * HOUR_MS)["BTC"]["state"] == "lagging"


# --- the exchange fails --------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["stopped", "http-500"])
def test_exchange_down_counts_failures_logs_once_writes_nothing_then_recovers(
    feed_settings: Settings, market: Market, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    caplog.set_level(logging.INFO, logger=FEED_LOGGER)
    clock = exchange_clock(market)
    calls: list[tuple[str, pd.Timestamp]] = []
    feed = CandleFeed(feed_settings, on_new=lambda *call: calls.append(call), clock=clock)
    feed.run_once()
    before = candles_file(feed_settings).read_bytes()
    market.state.now_ms += 3 * HOUR_MS
    clock.advance(3 * 3600)  # the next fetch is due
    if fault == "stopped":
        market.stop()
    else:
        market.state.fail_klines_after = 0

    for _ in range(5):
        clock.advance(400)  # past any backoff (at most 300 s)
        feed.run_once()

    assert candles_file(feed_settings).read_bytes() == before
    status = read_feed_status(feed_settings)["BTC"]
    assert status["consecutiveFailures"] == 5
    assert "could not" in status["lastError"]
    assert status["lastSuccess"] < status["lastAttempt"]
    store = CandleStore.from_settings(feed_settings)
    assert feed_view(feed_settings, store)["BTC"]["state"] == "failing"
    failing = feed_lines(caplog, "failing")
    assert len(failing) == 1
    assert failing[0].startswith("feed BTC: failing: IngestError: binance: could not")
    assert failing[0].endswith("(retrying in 2 s)")

    if fault == "stopped":
        market.start()
    else:
        market.state.fail_klines_after = None
    clock.advance(400)
    feed.run_once()

    assert feed_lines(caplog, "recovered") == ["feed BTC: recovered after 5 failures"]
    assert feed_lines(caplog, "+3 candles") == ["feed BTC: +3 candles, newest 2024-01-10T07:00:00Z"]
    assert_contiguous_through(feed_settings, NEWEST + 3 * HOUR)
    assert calls == [("BTC", NEWEST), ("BTC", NEWEST + 3 * HOUR)]
    assert read_feed_status(feed_settings)["BTC"]["consecutiveFailures"] == 0


def test_failures_back_off_and_other_pairs_go_on(feed_settings: Settings, market: Market) -> None:
    """XMR is not listed by the exchange: it fails with backoff while BTC is fetched."""
    settings = feed_settings.model_copy(update={"pairs": ["BTC", "XMR"]})
    clock = exchange_clock(market)
    feed = CandleFeed(settings, clock=clock)

    feed.run_once()

    states = feed.states()
    assert states["BTC"].consecutive_failures == 0
    assert states["XMR"].consecutive_failures == 1
    assert "unknown pair 'XMR/USDT' on binance" in (states["XMR"].last_error or "")
    assert feed.next_wait_s() == 2.0
    clock.advance(2)
    feed.run_once()
    assert feed.states()["XMR"].consecutive_failures == 2
    assert feed.next_wait_s() == 4.0
    assert not candles_file(settings, "XMR").exists()


@pytest.mark.parametrize("garbage", ["non-json", "malformed-row", "negative-price"])
def test_garbage_from_the_exchange_writes_nothing_and_the_feed_recovers(
    feed_settings: Settings, market: Market, caplog: pytest.LogCaptureFixture, garbage: str
) -> None:
    caplog.set_level(logging.INFO, logger=FEED_LOGGER)
    bad_open = to_ms(BUNDLED_LAST + 3 * HOUR)
    if garbage == "non-json":
        market.state.klines_body = b"<html><body>502 Bad Gateway</body></html>"
    elif garbage == "malformed-row":
        market.state.overrides[bad_open] = ["abc", "x", "1", "1", "1"]
    else:
        market.state.overrides[bad_open] = ["-5", "-1", "-10", "-5", "1"]
    clock = exchange_clock(market)
    feed = CandleFeed(feed_settings, clock=clock)

    for _ in range(3):
        feed.run_once()
        clock.advance(400)

    assert not candles_file(feed_settings).exists()
    assert read_feed_status(feed_settings)["BTC"]["consecutiveFailures"] == 3
    assert len(feed_lines(caplog, "failing")) == 1

    market.state.klines_body = None
    market.state.overrides.clear()
    feed.run_once()

    assert_contiguous_through(feed_settings, NEWEST)
    assert feed_lines(caplog, "recovered") == ["feed BTC: recovered after 3 failures"]


# --- the exchange's clock ------------------------------------------------------------------------


def test_the_candle_still_forming_is_never_stored(feed_settings: Settings, market: Market) -> None:
    forming = NEWEST + HOUR
    clock = exchange_clock(market, ahead_s=3600)  # our clock says the forming candle has closed
    feed = CandleFeed(feed_settings, clock=clock)

    feed.run_once()
    market.state.now_ms += 20 * 60_000  # still forming, 50 min in
    clock.advance(400)
    feed.run_once()

    assert forming not in stored(feed_settings)
    assert_contiguous_through(feed_settings, NEWEST)


def test_ingest_keeps_no_candle_closing_after_local_now_plus_the_tolerance(
    settings: Settings, market: Market
) -> None:
    exchange_now = market.state.now_ms
    local_s = exchange_now / 1000 - 5 * 3600  # the exchange's clock jumped 5 h ahead of ours

    result = ingest_candles(
        exchange="binance",
        pair="BTC/USDT",
        timeframe="1h",
        data_dir=settings.data_dir,
        bundled_dir=settings.bundled_data_dir,
        api_url=market.state.url,
        clock=lambda: local_s,
    )

    bound = pd.Timestamp(int(local_s * 1000) + LOCAL_CLOCK_TOLERANCE_MS, unit="ms", tz="UTC")
    assert result.exchange_now_ms == exchange_now
    assert result.clock_offset_ms == 5 * HOUR_MS
    newest = NEWEST - 5 * HOUR
    assert result.last_new == result.newest == newest
    assert newest + HOUR <= bound < newest + 2 * HOUR  # the last candle closed by the bound
    assert stored(settings)[-1] == NEWEST - 5 * HOUR


def test_an_exchange_clock_far_ahead_of_ours_stores_no_candle_before_our_clock_closes_it(
    feed_settings: Settings, market: Market
) -> None:
    clock = exchange_clock(market, ahead_s=-5 * 3600)
    feed = CandleFeed(feed_settings, clock=clock)

    feed.run_once()

    local_bound = pd.Timestamp(int(clock() * 1000) + 60_000, unit="ms", tz="UTC")
    assert stored(feed_settings)[-1] + HOUR <= local_bound
    assert_contiguous_through(feed_settings, NEWEST - 5 * HOUR)
    assert read_feed_status(feed_settings)["BTC"]["clockOffsetMs"] == 5 * HOUR_MS
    # Due when the next candle closes by our clock (+ tolerance), not by the exchange's.
    assert feed.next_wait_s() == 1800 - 60 + 10

    clock.advance(5 * 3600)  # our clock catches up
    feed.run_once()

    assert_contiguous_through(feed_settings, NEWEST)


def test_the_exchange_clock_jumping_back_loses_nothing_and_repeats_nothing(
    feed_settings: Settings, market: Market
) -> None:
    clock = exchange_clock(market)
    feed = CandleFeed(feed_settings, clock=clock)
    feed.run_once()
    before = candles_file(feed_settings).read_bytes()

    market.state.now_ms -= 10 * HOUR_MS
    clock.advance(400)
    feed.run_once()

    assert candles_file(feed_settings).read_bytes() == before
    assert feed.states()["BTC"].consecutive_failures == 0
    # By the jumped clock the next candle closes in 10.5 h; the feed looks again within one.
    assert feed.next_wait_s() <= 3600 + 10

    market.state.now_ms += 15 * HOUR_MS  # back to its course, 5 h later
    clock.advance(5 * 3600)
    feed.run_once()

    assert_contiguous_through(feed_settings, NEWEST + 5 * HOUR)
    assert find_gaps(read_candle_file(candles_file(feed_settings)), "1h") == []


# --- the loop ------------------------------------------------------------------------------------


def test_the_feed_thread_recovers_on_its_own_and_calls_on_new_once_per_append(
    feed_settings: Settings, market: Market
) -> None:
    """Real threads and the real clock (the exchange's runs in the past, as a replay's does)."""
    settings = feed_settings.model_copy(update={"feed_delay_s": 0.0, "feed_max_wait_s": 0.05})
    market.state.fail_klines_after = 0
    calls: list[tuple[str, pd.Timestamp]] = []

    def on_new(pair: str, newest: pd.Timestamp) -> None:
        calls.append((pair, newest))
        raise RuntimeError("a subscriber failed")  # must not stop the feed

    feed = CandleFeed(settings, on_new=on_new, retry_base_s=0.05, retry_cap_s=0.2)
    feed.start()
    try:
        assert THREAD_NAME in [t.name for t in threading.enumerate()]
        wait_until(
            lambda: read_feed_status(settings).get("BTC", {}).get("consecutiveFailures", 0) >= 3,
            "three failures",
        )
        assert not candles_file(settings).exists()

        market.state.fail_klines_after = None
        wait_until(lambda: len(calls) == 1, "the first append")
        market.state.now_ms += 2 * HOUR_MS
        wait_until(lambda: len(calls) == 2, "the second append")
    finally:
        feed.stop()

    assert THREAD_NAME not in [t.name for t in threading.enumerate()]
    assert calls == [("BTC", NEWEST), ("BTC", NEWEST + 2 * HOUR)]
    assert_contiguous_through(settings, NEWEST + 2 * HOUR)
    status = read_feed_status(settings)["BTC"]
    assert status["consecutiveFailures"] == 0
    assert status["clockOffsetMs"] < 0  # the replay's clock is behind ours
    assert json.loads(status_path(settings).read_text())["BTC"]["newestCandle"] == to_ms(
        NEWEST + 2 * HOUR
    )
