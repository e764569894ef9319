"""The live candle feed: fetch every configured pair's candle soon after it closes.

`CandleFeed` appends closed candles to the store's ingested files through `ingest_candles`, so
everything ingestion guarantees holds here too: only candles the exchange has closed (and that
close no later than local now + 60 s), checked before they are written, written atomically, under
the per-file ingestion lock (a `tbml ingest` running meanwhile neither drops nor repeats a row).

Scheduling, per pair: the next fetch is due when the candle after the newest one closes, by the
exchange's clock (measured at each success as an offset to ours), plus `ML_FEED_DELAY`; never
later than one timeframe (a clock reading that jumped cannot stall the feed), and never later than
`ML_FEED_MAX_WAIT` when that is set (the replay exchange's hours last seconds). A failing pair
retries with `pipelines.periodic.backoff` (2 s doubling to 5 min); the others go on as scheduled.
The feed logs changes of state (failing, recovered) and appends, not every failed try.

Every process reads what the feed does from `feed-status.json` beside the ingested files
(`read_feed_status`, `feed_view`, `market_now_ms`): API replicas run no feed (only the process
holding the dispatch lease does), yet `/api/health` shows the feed's state everywhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from pipelines.candles.atomic import write_atomic
from pipelines.candles.exchange import open_exchange
from pipelines.candles.ingest import (
    LOCAL_CLOCK_TOLERANCE_MS,
    IngestResult,
    exchange_now_ms,
    ingest_candles,
)
from pipelines.candles.store import CandlesNotFoundError, CandleStore
from pipelines.candles.timeframes import timeframe_delta
from pipelines.candles.validate import CandleValidationError
from pipelines.periodic import backoff
from pipelines.redact import describe_error, redact, secret_values
from pipelines.settings import Settings

logger = logging.getLogger(__name__)

STATUS_FILE = "feed-status.json"  # .json: never taken for candles by CandleStore
THREAD_NAME = "candle-feed"
FEED_CHORE = "candle-feed"  # the scheduler's chore that runs `CandleFeed.tick`
FEED_TICK_S = 0.5
RETRY_BASE_S = 2.0
RETRY_CAP_S = 300.0
# When the candle after the newest should have closed but is not served yet (an exchange that
# publishes late, or a candle it lacks), look again after this long (or a timeframe if shorter).
LATE_RETRY_S = 60.0
# The wait when no pair is configured.
IDLE_WAIT_S = 60.0

FeedState = Literal["ok", "failing", "lagging", "off"]


def status_path(settings: Settings) -> Path:
    """`{ML_DATA_DIR}/candles/{exchange}/feed-status.json`."""
    return settings.data_dir / "candles" / settings.exchange / STATUS_FILE


@dataclass(frozen=True)
class PairState:
    """What the feed knows of one pair; times in epoch ms (local clock), None before it happens."""

    pair: str
    newest_open: int | None = None  # open time of the newest stored candle
    last_success: int | None = None
    last_attempt: int | None = None
    last_error: str | None = None
    last_error_at: int | None = None
    consecutive_failures: int = 0
    next_attempt: int = 0
    # The exchange's clock minus ours, measured at the last success.
    clock_offset_ms: int | None = None

    @property
    def failing(self) -> bool:
        return self.consecutive_failures > 0

    def to_status(self, fetcher: str) -> dict[str, Any]:
        """The entry of `feed-status.json` (camelCase)."""
        return {
            "newestCandle": self.newest_open,
            "lastSuccess": self.last_success,
            "lastAttempt": self.last_attempt,
            "lastError": self.last_error,
            "lastErrorAt": self.last_error_at,
            "consecutiveFailures": self.consecutive_failures,
            "nextAttempt": self.next_attempt,
            "clockOffsetMs": self.clock_offset_ms,
            "fetcher": fetcher,
        }


class CandleFeed:
    """Fetches each pair's new closed candles when they are due; `start()` runs it in a thread.

    Args:
        settings: pairs, quote, exchange, timeframe, exchange URL, data dirs, delays.
        on_new: called as `on_new(pair, newest_open)` after candles were appended (its
            exceptions are logged, never raised).
        clock: the local clock, epoch seconds (tests pass their own).
        retry_base_s, retry_cap_s: a failing pair's backoff.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        on_new: Callable[[str, pd.Timestamp], None] | None = None,
        clock: Callable[[], float] = time.time,
        retry_base_s: float = RETRY_BASE_S,
        retry_cap_s: float = RETRY_CAP_S,
        store: CandleStore | None = None,
    ) -> None:
        if retry_base_s <= 0 or retry_cap_s < retry_base_s:
            raise ValueError(
                f"retry_base_s must be > 0 and retry_cap_s >= it, got {retry_base_s}, {retry_cap_s}"
            )
        self.settings = settings
        self.step_ms = int(timeframe_delta(settings.timeframe).total_seconds() * 1000)
        self.fetcher = f"{socket.gethostname()}:{os.getpid()}"
        self._on_new = on_new
        self._clock = clock
        self._retry_base_s = retry_base_s
        self._retry_cap_s = retry_cap_s
        self._secrets = secret_values(settings)
        self._states = {pair: PairState(pair=pair) for pair in settings.pairs}
        self._attempted: set[str] = set()
        self._client: Any | None = None
        # The store whose cached frames say each pair's newest candle (the service's own, when
        # it runs the feed: one parsed copy of each pair per process).
        self._store = store or CandleStore.from_settings(settings)
        self._run_lock = threading.Lock()  # one run_once at a time
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # --- state --------------------------------------------------------------------------------

    def states(self) -> dict[str, PairState]:
        """Every configured pair's state, by pair."""
        return dict(self._states)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _horizon_ms(self) -> int:
        """No pair is ever scheduled further ahead than this: a later one means our clock
        jumped back, and the pair is due."""
        delay_ms = int(self.settings.feed_delay_s * 1000)
        return max(self.step_ms + delay_ms, int(self._retry_cap_s * 1000))

    def _due(self, state: PairState, now: int) -> bool:
        return state.next_attempt <= now or state.next_attempt - now > self._horizon_ms()

    # --- one round ----------------------------------------------------------------------------

    def run_once(self) -> None:
        """Fetch every pair that is due (all of them on the first call)."""
        with self._run_lock:
            now = self._now_ms()
            due = [pair for pair in list(self._states) if self._due(self._states[pair], now)]
            # Several pairs due: the exchange's clock is asked once for the round, not once a
            # pair (ccxt spaces its requests by the exchange's rate limit).
            clock = self._round_clock() if len(due) > 1 else None
            for pair in due:
                self._attempt(pair, exchange_clock=clock)

    def _round_clock(self) -> Callable[[int], int] | None:
        """Local ms -> the exchange's ms, from one reading of its clock now; None when it cannot
        be read (each pair then asks, and a failure counts against that pair)."""
        try:
            local = int(self._clock() * 1000)
            offset = exchange_now_ms(self._open_client(), local) - local
        except Exception:
            self._close_client()
            return None
        return lambda local_ms: local_ms + offset

    def next_wait_s(self) -> float:
        """Seconds until the next pair is due (0 when one is), at most ML_FEED_MAX_WAIT if set."""
        now = self._now_ms()
        if self._states:
            soonest = min(
                0 if self._due(state, now) else state.next_attempt - now
                for state in self._states.values()
            )
            wait = max(0.0, soonest / 1000)
        else:
            wait = IDLE_WAIT_S
        if self.settings.feed_max_wait_s > 0:
            wait = min(wait, self.settings.feed_max_wait_s)
        return wait

    def _attempt(self, pair: str, *, exchange_clock: Callable[[int], int] | None = None) -> None:
        settings = self.settings
        state = replace(self._states[pair], last_attempt=self._now_ms())
        appended: pd.Timestamp | None = None
        try:
            result = ingest_candles(
                exchange=settings.exchange,
                pair=f"{pair}/{settings.quote_currency}",
                timeframe=settings.timeframe,
                data_dir=settings.data_dir,
                bundled_dir=settings.bundled_data_dir,
                client=self._open_client(),
                api_url=settings.exchange_url,
                clock=self._clock,
                store=self._store,
                exchange_clock=exchange_clock,
            )
        except Exception as error:  # the feed outlives any exchange, file or parse failure
            self._close_client()  # a fresh client after an error: no half-broken session kept
            state = self._failed(state, error)
        else:
            state = self._succeeded(state, result)
            appended = result.last_new
        self._states[pair] = state
        self._attempted.add(pair)
        self._write_status()
        if appended is not None and self._on_new is not None:
            try:
                self._on_new(pair, appended)
            except Exception:
                logger.exception("feed %s: on_new callback failed", pair)

    def _succeeded(self, state: PairState, result: IngestResult) -> PairState:
        now = self._now_ms()
        if state.failing:
            logger.info(
                "feed %s: recovered after %d failures", state.pair, state.consecutive_failures
            )
        if result.appended and result.last_new is not None:
            logger.info(
                "feed %s: +%d candles, newest %s",
                state.pair,
                result.appended,
                result.last_new.strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
        newest = _ms(result.newest) if result.newest is not None else state.newest_open
        offset = result.clock_offset_ms
        state = replace(
            state,
            newest_open=newest,
            last_success=now,
            consecutive_failures=0,
            clock_offset_ms=offset,
        )
        return replace(state, next_attempt=self._next_due(newest, offset or 0, now))

    def _next_due(self, newest: int | None, offset_ms: int, now: int) -> int:
        """Local time at which the candle after `newest` has closed (plus the delay)."""
        step = self.step_ms
        delay_ms = int(self.settings.feed_delay_s * 1000)
        # Ingestion keeps candles closed by min(exchange now, local now + tolerance).
        effective_offset = min(offset_ms, LOCAL_CLOCK_TOLERANCE_MS)
        market_now = now + effective_offset
        next_close = newest + 2 * step if newest is not None else (market_now // step + 1) * step
        due = next_close - effective_offset + delay_ms
        if due <= now:  # it should be there already: published late, or missing at the exchange
            due = now + int(min(LATE_RETRY_S * 1000, step))
        due = min(due, now + step + delay_ms)
        if self.settings.feed_max_wait_s > 0:
            due = min(due, now + int(self.settings.feed_max_wait_s * 1000))
        return due

    def _failed(self, state: PairState, error: Exception) -> PairState:
        now = self._now_ms()
        failures = state.consecutive_failures + 1
        delay = backoff(failures, base=self._retry_base_s, cap=self._retry_cap_s)
        text = redact(describe_error(error), secrets=self._secrets)
        if failures == 1:
            logger.warning("feed %s: failing: %s (retrying in %g s)", state.pair, text, delay)
        else:
            logger.debug(
                "feed %s: still failing (%d in a row): %s (retrying in %g s)",
                *(state.pair, failures, text, delay),
            )
        return replace(
            state,
            last_error=text,
            last_error_at=now,
            consecutive_failures=failures,
            next_attempt=now + int(delay * 1000),
        )

    def _write_status(self) -> None:
        body = {
            pair: state.to_status(self.fetcher)
            for pair, state in self._states.items()
            if pair in self._attempted
        }
        data = json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"
        try:
            write_atomic(status_path(self.settings), data)
        except OSError as error:
            logger.warning(
                "feed: could not write %s: %s", status_path(self.settings), describe_error(error)
            )

    # --- the ccxt client ----------------------------------------------------------------------

    def _open_client(self) -> Any:
        if self._client is None:
            self._client = open_exchange(self.settings.exchange, api_url=self.settings.exchange_url)
        return self._client

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def tick(self) -> None:
        """One look: fetch the pairs that are due, if any (the scheduler's `candle-feed` chore
        calls it every FEED_TICK_S while it holds the dispatch lease)."""
        if self.next_wait_s() <= 0 or any(
            self._due(state, self._now_ms()) for state in self._states.values()
        ):
            self.run_once()

    # --- the loop -----------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        """`run_once`, then wait until the next pair is due, until `stop` is set.

        No exception ends the loop: a failed round is logged and the next one comes all the same.
        """
        while not stop.is_set():
            try:
                self.run_once()
                wait = self.next_wait_s()
            except Exception:
                logger.exception("feed: a round failed; trying again in %g s", self._retry_base_s)
                wait = self._retry_base_s
            stop.wait(wait)

    def start(self) -> None:
        """Run the feed in a daemon thread named `candle-feed` (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self.run_forever, args=(self._stop,), name=THREAD_NAME, daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the thread (letting a fetch in progress end) and close the client."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=timeout_s)
            if thread.is_alive():
                logger.warning("feed: still fetching after %g s; left to end on its own", timeout_s)
                return
        with self._run_lock:
            self._close_client()


# --- what every process reads -------------------------------------------------------------------


def read_feed_status(settings: Settings) -> dict[str, dict[str, Any]]:
    """`feed-status.json`: pair -> its entry; {} when the file is missing or unreadable."""
    try:
        body = json.loads(status_path(settings).read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(body, dict):
        return {}
    return {str(pair): entry for pair, entry in body.items() if isinstance(entry, dict)}


def market_now_ms(settings: Settings, *, status: dict[str, dict[str, Any]] | None = None) -> int:
    """Now by the exchange's clock, epoch ms: local now plus the clock offset of the freshest
    entry (latest `lastSuccess`) of the feed's status, or local now when no feed measured one.

    The service measures staleness by it, so that a replay exchange whose clock runs in the past
    does not make every candle look days old.
    """
    local = int(time.time() * 1000)
    offset = _freshest_offset(read_feed_status(settings) if status is None else status)
    return local + (offset or 0)


def feed_view(
    settings: Settings, store: CandleStore, now_ms: int | None = None
) -> dict[str, dict[str, Any]]:
    """Per configured pair, what `/api/health` shows of its live candles.

    `newestCandle` (open time) and `newestClose` come from the store, the rest from the feed's
    status file. `lagMs` is market now (`now_ms`, else local now plus the pair's measured clock
    offset) minus `newestClose`. `state`: "off" when no feed has reported the pair, "failing"
    when its latest fetch failed, "lagging" when the lag exceeds ML_STALE_AFTER timeframes,
    else "ok".
    """
    status = read_feed_status(settings)
    step_ms = int(timeframe_delta(settings.timeframe).total_seconds() * 1000)
    local = int(time.time() * 1000)
    views: dict[str, dict[str, Any]] = {}
    for pair in settings.pairs:
        entry = status.get(pair)
        newest = _newest_open_ms(store, pair, settings.timeframe)
        close = None if newest is None else newest + step_ms
        if now_ms is not None:
            market_now = now_ms
        else:
            offset = entry.get("clockOffsetMs") if entry else None
            market_now = local + (int(offset) if isinstance(offset, int) else 0)
        lag = None if close is None else market_now - close
        failures = int(entry.get("consecutiveFailures") or 0) if entry else 0
        state: FeedState
        if entry is None:
            state = "off"
        elif failures > 0:
            state = "failing"
        elif lag is not None and lag > settings.stale_after * step_ms:
            state = "lagging"
        else:
            state = "ok"
        views[pair] = {
            "newestCandle": newest,
            "newestClose": close,
            "lagMs": lag,
            "lastSuccess": entry.get("lastSuccess") if entry else None,
            "lastAttempt": entry.get("lastAttempt") if entry else None,
            "lastError": entry.get("lastError") if entry else None,
            "consecutiveFailures": failures,
            "clockOffsetMs": entry.get("clockOffsetMs") if entry else None,
            "fetcher": entry.get("fetcher") if entry else None,
            "state": state,
        }
    return views


def _freshest_offset(status: dict[str, dict[str, Any]]) -> int | None:
    measured = [
        entry
        for entry in status.values()
        if isinstance(entry.get("lastSuccess"), int) and isinstance(entry.get("clockOffsetMs"), int)
    ]
    if not measured:
        return None
    return int(max(measured, key=lambda entry: int(entry["lastSuccess"]))["clockOffsetMs"])


def _newest_open_ms(store: CandleStore, pair: str, timeframe: str) -> int | None:
    try:
        frame = store.load(pair, timeframe)
    except (CandlesNotFoundError, CandleValidationError, ValueError) as error:
        logger.debug("feed view: no candles of %s: %s", pair, describe_error(error))
        return None
    return _ms(frame.index[-1]) if len(frame) else None


def _ms(stamp: pd.Timestamp) -> int:
    return int(stamp.as_unit("ns").value) // 1_000_000


def attach_feed(
    scheduler: Any,
    settings: Settings,
    *,
    on_new: Callable[[str, pd.Timestamp], None] | None = None,
    store: CandleStore | None = None,
) -> CandleFeed | None:
    """Run the feed in `scheduler` (a `pipelines.queue.runtime.TrainingScheduler`) while it
    holds the dispatch lease, so one process per deployment fetches; None when ML_FEED=false."""
    if not settings.feed_enabled:
        return None
    feed = CandleFeed(settings, on_new=on_new, store=store)
    # ML_FEED_MAX_WAIT below the tick (a replay's compressed time) makes the look more frequent.
    tick_s = FEED_TICK_S
    if 0 < settings.feed_max_wait_s < tick_s:
        tick_s = max(settings.feed_max_wait_s, 0.01)
    scheduler.add_leader_chore(FEED_CHORE, feed.tick, tick_s)
    return feed
