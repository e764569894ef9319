"""Ingestion: fetch new closed candles with ccxt and append them to the store's ingested file.

One call pages through `fetch_ohlcv` from where the store's candles end (or from `since`) until it
reaches the candle still forming, keeps only closed candles newer than every known one, checks the
resulting file with the store's own reader, and replaces the file atomically. A run that finds
nothing new does not touch the file, so running twice leaves it byte-identical.

Which candle is still forming is decided by the exchange's clock (`fetch_time`), so a skewed local
clock cannot make us keep a candle the exchange has not closed; exchanges that ccxt cannot ask for
the time fall back to the local clock. The local clock still bounds it from above: a candle that
closes more than `LOCAL_CLOCK_TOLERANCE_MS` after local now is never kept, which only matters when
the exchange's clock jumps ahead (a replay exchange runs in the past, so the bound never bites it).

Reading the newest known candle, fetching and rewriting the file happen under an exclusive lock
per ingested file (`.{file}.lock` beside it, removed on release), so `tbml ingest` and the live
feed (`pipelines.candles.feed`) ingesting the same file at once neither drop nor repeat a row.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.candles.atomic import write_atomic
from pipelines.candles.exchange import (
    IngestInputError,
    check_market,
    check_timeframe,
    open_exchange,
    split_pair,
)
from pipelines.candles.store import CandlesNotFoundError, CandleStore
from pipelines.candles.timeframes import timeframe_delta
from pipelines.candles.validate import COLUMNS, Gap, find_gaps, read_candle_bytes

logger = logging.getLogger(__name__)

DEFAULT_PAGE_LIMIT = 1000  # Binance's spot maximum; exchanges that cap lower are paged all the same
# How long an ingestion waits for another one of the same file before it gives up.
DEFAULT_LOCK_TIMEOUT_S = 120.0
# A candle closing later than local now plus this is never kept, whatever the exchange's clock says.
LOCAL_CLOCK_TOLERANCE_MS = 60_000


class IngestError(RuntimeError):
    """The exchange failed or answered nonsense; nothing was written."""


@dataclass(frozen=True)
class IngestProgress:
    """Reported after each page: closed candles kept so far out of about `expected`."""

    kept: int
    expected: int
    last_open: pd.Timestamp | None


@dataclass(frozen=True)
class IngestResult:
    """What one ingestion did."""

    exchange: str
    symbol: str
    timeframe: str
    path: Path
    start: pd.Timestamp  # open time of the first candle asked for
    fetched: int  # candles the exchange returned, the forming one and repeats included
    appended: int  # new closed candles written to `path`
    first_new: pd.Timestamp | None
    last_new: pd.Timestamp | None
    gaps: list[Gap] = field(default_factory=list)  # from the newest known candle through the new
    # The newest candle known after this run (appended or known before), None if none is.
    newest: pd.Timestamp | None = None
    # The exchange's clock when it was read (epoch ms), and it minus the local clock then.
    exchange_now_ms: int | None = None
    clock_offset_ms: int | None = None


def lock_path(path: Path) -> Path:
    """The lock file of ingested file `path`: `.BTC-USDT_1h.csv.lock` beside `BTC-USDT_1h.csv`.

    Its leading dot and `.lock` suffix keep the candle store from taking it for candles.
    """
    return path.with_name(f".{path.name}.lock")


def parse_since(value: str) -> pd.Timestamp:
    """`2024-01-01T00:00Z` (a time without zone is UTC) -> a UTC timestamp."""
    try:
        stamp = pd.Timestamp(value)
    except ValueError as exc:
        raise IngestInputError(
            f"malformed time {value!r}: expected ISO 8601 in UTC, such as 2024-01-01T00:00Z"
        ) from exc
    if stamp is pd.NaT:
        raise IngestInputError(f"malformed time {value!r}: expected a time, such as 2024-01-01")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def ingest_candles(
    *,
    exchange: str,
    pair: str,
    timeframe: str,
    data_dir: Path,
    bundled_dir: Path,
    since: datetime | None = None,
    progress: Callable[[IngestProgress], None] | None = None,
    client: Any | None = None,
    api_url: str | None = None,
    page_limit: int = DEFAULT_PAGE_LIMIT,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    clock: Callable[[], float] = time.time,
    store: CandleStore | None = None,
    exchange_clock: Callable[[int], int] | None = None,
) -> IngestResult:
    """Append the closed candles of `pair` newer than the store's to the ingested file.

    Args:
        exchange: ccxt exchange id (`binance`); also names the ingested file's folder.
        pair: the exchange's market symbol, `BTC/USDT`.
        timeframe: `1h`, `15m`, ... as the exchange names it.
        data_dir: the store's data directory (`settings.data_dir`).
        bundled_dir: the bundled files, whose newest candle counts as known.
        since: open time to start from; default one timeframe after the newest known candle.
            Candles at or before the newest known one are never fetched again.
        progress: called after each page.
        client: a ccxt exchange to use instead of opening one (tests, custom options).
        api_url: send the exchange's REST calls to this base URL (a mirror, a test server).
        page_limit: candles asked for per request.
        lock_timeout_s: how long to wait while another ingestion of the same file runs; then
            IngestError (naming the lock file), and nothing is written.
        clock: the local clock (epoch seconds); candles closing after it + 60 s are not kept.
        store: a candle store over the same directories, quote and exchange, whose cached
            frames tell the newest known candle (the live feed keeps one, so that a fetch does
            not parse the pair's files again); by default one is opened for this call.
        exchange_clock: local epoch ms -> the exchange's epoch ms, from an offset measured
            just before (the live feed asks the exchange's clock once per round of pairs); by
            default the exchange is asked (`fetch_time`). An offset measured earlier can only
            put the exchange's now too early, so it never keeps a forming candle.
    """
    base, quote = split_pair(pair)
    symbol = f"{base}/{quote}"
    owned = client is None
    if client is None:
        client = open_exchange(exchange, api_url=api_url)
    try:
        check_timeframe(client, timeframe)
        step = timeframe_delta(timeframe)
        if store is None or (store.bundled_dir, store.data_dir, store.quote, store.exchange) != (
            bundled_dir,
            data_dir,
            quote,
            exchange,
        ):
            store = CandleStore(
                bundled_dir=bundled_dir, data_dir=data_dir, quote=quote, exchange=exchange
            )
        path = store.ingested_path(base, timeframe)
        _call(client, "load markets", client.load_markets)
        check_market(client, symbol)
        with ingestion_lock(
            path, timeout_s=lock_timeout_s, what=f"{exchange} {symbol} {timeframe}"
        ):
            last_known = _newest_known(store, base, timeframe)
            start = _start(
                since=since,
                last_known=last_known,
                step=step,
                store=store,
                base=base,
                timeframe=timeframe,
                symbol=symbol,
            )
            local_ms = int(clock() * 1000)
            exchange_ms = (
                exchange_now_ms(client, local_ms)
                if exchange_clock is None
                else exchange_clock(local_ms)
            )
            now_ms = _bounded_now_ms(exchange_ms, local_ms, exchange=exchange)
            rows, fetched = _fetch_closed(
                client,
                symbol=symbol,
                timeframe=timeframe,
                start_ms=_ms(start),
                step_ms=_ms_delta(step),
                now_ms=now_ms,
                page_limit=page_limit,
                progress=progress,
            )
            new = (
                _append(path, rows, source=f"{path} (after fetching from {exchange}; not written)")
                if rows
                else pd.DatetimeIndex([], tz="UTC")
            )
    finally:
        if owned:
            client.close()

    boundary = new if last_known is None else new.insert(0, last_known)
    gaps = find_gaps(pd.DataFrame(index=boundary), timeframe) if len(new) else []
    if len(new):
        logger.info(
            "%s %s %s: appended %d candles (%s .. %s) to %s, %d gaps",
            *(exchange, symbol, timeframe, len(new), new[0], new[-1], path, len(gaps)),
        )
    else:
        # DEBUG: the live feed asks every few seconds in a replay (`tbml ingest` prints its own).
        logger.debug("%s %s %s: no new closed candle since %s", exchange, symbol, timeframe, start)
    return IngestResult(
        exchange=exchange,
        symbol=symbol,
        timeframe=timeframe,
        path=path,
        start=start,
        fetched=fetched,
        appended=len(new),
        first_new=new[0] if len(new) else None,
        last_new=new[-1] if len(new) else None,
        gaps=gaps,
        newest=new[-1] if len(new) else last_known,
        exchange_now_ms=exchange_ms,
        clock_offset_ms=exchange_ms - local_ms,
    )


@contextlib.contextmanager
def ingestion_lock(
    path: Path, *, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S, what: str = "ingestion"
) -> Iterator[None]:
    """Hold the exclusive lock of ingested file `path` (`lock_path(path)`), across threads and
    processes; IngestError (naming the lock file, prefixed by `what`) after `timeout_s`.

    The lock file is unlinked while still held, so no lock file outlives an ingestion that ends
    normally. That is safe with filelock's native (flock) lock: a waiter that then gets the lock
    on the unlinked file sees it has no name any more and locks the new file at the path instead.
    A process killed while holding it leaves the (empty, unheld) file behind, which the next
    ingestion reuses.
    """
    import filelock

    lock_file = lock_path(path)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(lock_file, timeout=timeout_s)
    try:
        lock.acquire()
    except filelock.Timeout as exc:
        raise IngestError(
            f"{what}: another ingestion of {path} still holds its lock {lock_file} after "
            f"{timeout_s:g} s (nothing written); try again when it has ended"
        ) from exc
    try:
        yield
    finally:
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_file)
        finally:
            lock.release()


# Exchanges whose clock was last seen ahead of ours: warned once, until it is back in bounds.
_AHEAD: set[str] = set()


def _bounded_now_ms(exchange_ms: int, local_ms: int, *, exchange: str) -> int:
    """The exchange's now, but never later than local now + the tolerance."""
    bound = local_ms + LOCAL_CLOCK_TOLERANCE_MS
    if exchange_ms <= bound:
        if exchange in _AHEAD:
            _AHEAD.discard(exchange)
            logger.info("%s: the exchange's clock is back within bounds of ours", exchange)
        return exchange_ms
    log = logger.debug if exchange in _AHEAD else logger.warning
    _AHEAD.add(exchange)
    log(
        "%s: the exchange's clock (%s) is %.0f s ahead of ours (%s): keeping only candles "
        "closed by %s",
        *(exchange, _iso(exchange_ms), (exchange_ms - local_ms) / 1000, _iso(local_ms)),
        _iso(bound),
    )
    return bound


def _append(path: Path, rows: list[list[Any]], *, source: str) -> pd.DatetimeIndex:
    """Write the file's old bytes plus `rows`, atomically; returns the new rows' open times.

    The store's own reader checks the exact bytes first, so whatever ingestion writes,
    `CandleStore.load` can read; a bad candle from the exchange writes nothing.
    """
    content = _new_content(path, rows)
    frame = read_candle_bytes(content, source)
    write_atomic(path, content)
    return pd.DatetimeIndex(frame.index[-len(rows) :])


def _newest_known(store: CandleStore, base: str, timeframe: str) -> pd.Timestamp | None:
    try:
        frame = store.load(base, timeframe)
    except CandlesNotFoundError:
        return None
    return frame.index[-1] if len(frame) else None


def _start(
    *,
    since: datetime | None,
    last_known: pd.Timestamp | None,
    step: pd.Timedelta,
    store: CandleStore,
    base: str,
    timeframe: str,
    symbol: str,
) -> pd.Timestamp:
    after_known = None if last_known is None else last_known + step
    if since is None:
        if after_known is None:
            bundled, ingested = (
                store.bundled_path(base, timeframe),
                store.ingested_path(base, timeframe),
            )
            raise IngestInputError(
                f"no {symbol} {timeframe} candles known yet (looked for {bundled} and "
                f"{ingested}): pass --since (such as --since 2024-01-01T00:00Z) to say where "
                "to start"
            )
        return after_known
    stamp = pd.Timestamp(since)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    if after_known is not None and stamp < after_known:
        logger.info(
            "since %s is not after the newest known candle; starting at %s", stamp, after_known
        )
        return after_known
    return stamp


def _fetch_closed(
    client: Any,
    *,
    symbol: str,
    timeframe: str,
    start_ms: int,
    step_ms: int,
    now_ms: int,
    page_limit: int,
    progress: Callable[[IngestProgress], None] | None,
) -> tuple[list[list[Any]], int]:
    """Page forward from `start_ms`; returns the closed candles and how many were received."""
    expected = max(0, (now_ms - start_ms) // step_ms)
    kept: list[list[Any]] = []
    fetched = 0
    cursor = start_ms
    while cursor + step_ms <= now_ms:  # else the next candle cannot have closed yet
        page = _call(
            client,
            f"fetch {symbol} {timeframe} candles from {_iso(cursor)}",
            client.fetch_ohlcv,
            symbol,
            timeframe,
            since=cursor,
            limit=page_limit,
        )
        _require_json(client, f"fetch {symbol} {timeframe} candles from {_iso(cursor)}")
        fetched += len(page)
        closed = [row for row in page if row[0] + step_ms <= now_ms]
        # Some exchanges repeat the candle at `since`; never keep one twice.
        fresh = [row for row in closed if row[0] >= cursor]
        kept.extend(fresh)
        if progress is not None:
            last = pd.Timestamp(kept[-1][0], unit="ms", tz="UTC") if kept else None
            progress(
                IngestProgress(kept=len(kept), expected=max(expected, len(kept)), last_open=last)
            )
        if not fresh or len(closed) < len(page):
            break  # caught up to the forming candle, or the exchange has nothing newer
        cursor = fresh[-1][0] + step_ms
    return kept, fetched


def _call(client: Any, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    import ccxt

    try:
        return method(*args, **kwargs)
    except ccxt.BaseError as exc:
        raise IngestError(
            f"{client.id}: could not {what}: {type(exc).__name__}: {exc} (nothing written)"
        ) from exc


def _require_json(client: Any, what: str) -> None:
    """Refuse an answer that is not JSON (an HTML error page from a proxy, say): ccxt turns it
    into no candles at all, which would read as "nothing new" instead of a failure."""
    text = getattr(client, "last_http_response", None)  # None: the client does not keep it
    if isinstance(text, str) and client.parse_json(text) is None:
        raise IngestError(
            f"{client.id}: could not {what}: the answer is not JSON: {text.strip()[:80]!r} "
            "(nothing written)"
        )


def exchange_now_ms(client: Any, local_ms: int) -> int:
    """The exchange's clock; `local_ms` for an exchange that ccxt cannot ask for it."""
    if client.has.get("fetchTime"):
        server_ms = _call(client, "read the exchange's clock", client.fetch_time)
        if server_ms is not None:
            return int(server_ms)
    return local_ms


def _new_content(path: Path, rows: list[list[Any]]) -> bytes:
    """The existing file's bytes, untouched, followed by the new rows in the bundled layout."""
    try:
        old = path.read_bytes()
    except FileNotFoundError:
        old = b""
    if not old.strip():
        old = (",".join(COLUMNS) + "\n").encode()
    elif not old.endswith(b"\n"):
        old += b"\n"
    lines = [",".join([_iso(int(row[0])), *(_number(v) for v in row[1:6])]) for row in rows]
    return old + ("\n".join(lines) + "\n").encode()


def _number(value: Any) -> str:
    """Shortest text that reads back as the same float, without exponent: `58184`, `0.00001`."""
    if value is None:
        return ""
    return str(np.format_float_positional(float(value), trim="-"))


def _iso(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def _ms(stamp: pd.Timestamp) -> int:
    return int(stamp.as_unit("ns").value) // 1_000_000


def _ms_delta(delta: pd.Timedelta) -> int:
    return int(delta.as_unit("ns").value) // 1_000_000
