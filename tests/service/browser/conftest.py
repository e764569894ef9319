"""Browser fixtures: Debian's Chromium driven by Playwright against a real service.

One service per module: the session's trained models (BTC lstm and gru, ETH lstm; XMR and RVN
have none), the real scheduler dispatching the `smoke` entry point (a training that sleeps, so
that it stays active while the page cancels it), and the live feed fetching from a replay
exchange whose clock the tests move by hand: one step of it closes one real candle.

Screenshots go to `$TBML_BROWSER_ARTIFACTS` (default `tests/artifacts/browser/`, git-ignored).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipelines.candles.replay import ReplayExchange, ReplayServer, prepare_replay_store
from pipelines.candles.validate import read_candle_file
from pipelines.lifecycle.registry import set_challenger
from pipelines.queue.clock import now_ms
from pipelines.settings import PROJECT_ROOT
from tests.conftest import BUNDLED
from tests.service.conftest import (
    LiveServer,
    Trained,
    live_server,
    make_settings,
    register_variant,
    registry,
    wait_until,
)

CHROMIUM = Path(os.environ.get("TBML_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("TBML_BROWSER_ARTIFACTS", PROJECT_ROOT / "tests/artifacts/browser"))
API_KEY = "dashboard-test-key"
PAIRS = ["BTC", "ETH", "XMR", "RVN"]
HOUR_MS = 3_600_000
# Candles the replay holds back: each `Market.advance()` releases one.
HELD_BACK = 48
VIEWPORT = {"width": 1280, "height": 800}


class ManualClock:
    """The replay's clock, in seconds; only the tests move it."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@dataclass
class Market:
    """The replay exchange the service's feed fetches from."""

    exchange: ReplayExchange
    clock: ManualClock

    def advance(self, candles: int = 1) -> None:
        """Close `candles` more candles (the next fetch, within 0.2 s, takes them)."""
        self.clock.advance(candles * self.exchange.interval_s)


@dataclass
class Dashboard:
    """The running service and its market."""

    server: LiveServer
    market: Market

    @property
    def url(self) -> str:
        return f"{self.server.url}/dashboard"

    def newest_candle(self, pair: str) -> int | None:
        feed = self.server.client.get("/api/health").json()["feed"][pair]
        newest: int | None = feed["newestCandle"]
        return newest


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory, trained: Trained) -> Iterator[Dashboard]:
    root = tmp_path_factory.mktemp("dashboard")
    frames = [read_candle_file(BUNDLED / f"{pair}-USDT_1h.csv.gz") for pair in PAIRS]
    common_end = min(frame.index[-1] for frame in frames)
    start = common_end - (HELD_BACK - 1) * (frames[0].index[-1] - frames[0].index[-2])
    prepare_replay_store(BUNDLED, root / "ohlcv", pairs=PAIRS, start=start)
    clock = ManualClock()
    exchange = ReplayExchange.from_bundled(
        BUNDLED, pairs=PAIRS, start=start, interval_s=1.0, clock=clock
    )
    settings = make_settings(
        root,
        trained,
        pairs=PAIRS,
        enabled_models=["lstm", "gru"],
        bundled_data_dir=root / "ohlcv",
        api_key=API_KEY,
        run_scheduler=True,
        training_entry_point="smoke",
        queue_processing_interval_ms=200,
        scheduler_lease_ms=2_000,
        retrain_policy=False,
        feed_enabled=True,
        feed_delay_s=0.0,
        feed_max_wait_s=0.2,
        candle_watch_interval_ms=200,
        outcome_fill_interval_ms=500,
    )
    # ETH's lstm has a challenger (as the gate leaves one, ML_PROMOTION=shadow), scored in
    # shadow beside production: the models panel shows both.
    challenger = register_variant(settings, root, name="ETH-lstm")
    set_challenger(registry(settings), name="ETH-lstm", version=challenger, now_ms=now_ms())
    with pytest.MonkeyPatch.context() as patch:
        # A "training" that sleeps until it is cancelled, outside MLflow (quick to start).
        patch.setenv("TBML_SMOKE_SECONDS", "300")
        patch.setenv("TBML_SMOKE_TRACK", "0")
        with ReplayServer(exchange) as replay:
            settings = settings.model_copy(update={"exchange_url": replay.url})
            with live_server(settings) as server:
                running = Dashboard(server, Market(exchange, clock))
                # The first held-back candle closes; the feed's next round brings it.
                running.market.advance()
                first = int(start.value // 1_000_000)

                def arrived() -> bool:
                    return all(running.newest_candle(pair) == first for pair in PAIRS)

                wait_until(arrived, timeout=60, interval=0.2)
                yield running


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: the dashboard's browser tests drive Debian's Chromium. "
            "Install it with `apt-get install -y chromium` (as root), or `make browser`; "
            "TBML_CHROMIUM names another binary.",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Console:
    """What the page said on its console, and what it threw."""

    errors: list[str]


@pytest.fixture
def page(browser: Any) -> Iterator[tuple[Any, Console]]:
    """A fresh browser context (its own sessionStorage) at 1280x800."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(20_000)
    opened = context.new_page()
    console = Console(errors=[])

    def said(message: Any) -> None:
        if message.type == "error":
            console.errors.append(f"{message.text} ({message.location.get('url')})")

    opened.on("console", said)
    opened.on("pageerror", lambda error: console.errors.append(f"uncaught: {error}"))
    try:
        yield opened, console
    finally:
        context.close()


def screenshot(page: Any, name: str, *, also: Path | None = None) -> Path:
    """Save the whole page as `<artifacts>/<name>.png` (and at `also`)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if also is not None:
        page.screenshot(path=str(also), full_page=True)
    return path
