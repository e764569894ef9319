"""Ingestion: fetch new closed candles with ccxt and append them to the store's ingested file.

One call pages through `fetch_ohlcv` from where the store's candles end (or from `since`) until it
reaches the candle still forming, keeps only closed candles newer than every known one, checks the
resulting file with the store's own reader, and replaces the file atomically. A run that finds
nothing new does not touch the file, so running twice leaves it byte-identical.

Which candle is still forming is decided by the exchange's clock (`fetch_time`), so a skewed local
clock cannot make us keep a candle the exchange has not closed; exchanges that ccxt cannot ask for
the time fall back to the local clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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
    """
    base, quote = split_pair(pair)
    symbol = f"{base}/{quote}"
    owned = client is None
    if client is None:
        client = open_exchange(exchange, api_url=api_url)
    try:
        check_timeframe(client, timeframe)
        step = timeframe_delta(timeframe)
        store = CandleStore(
            bundled_dir=bundled_dir, data_dir=data_dir, quote=quote, exchange=exchange
        )
        path = store.ingested_path(base, timeframe)
        last_known = _newest_known(store, base, timeframe)
        _call(client, "load markets", client.load_markets)
        check_market(client, symbol)
        start = _start(
            since=since,
            last_known=last_known,
            step=step,
            store=store,
            base=base,
            timeframe=timeframe,
            symbol=symbol,
        )
        now_ms = _exchange_now_ms(client)
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
    finally:
        if owned:
            client.close()

    def result(new: pd.DatetimeIndex, gaps: list[Gap]) -> IngestResult:
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
        )

    if not rows:
        logger.info("%s %s %s: no new closed candle since %s", exchange, symbol, timeframe, start)
        return result(pd.DatetimeIndex([], tz="UTC"), [])
    new = _append(path, rows, source=f"{path} (after fetching from {exchange}; not written)")
    boundary = new if last_known is None else new.insert(0, last_known)
    gaps = find_gaps(pd.DataFrame(index=boundary), timeframe)
    logger.info(
        "%s %s %s: appended %d candles (%s .. %s) to %s, %d gaps",
        *(exchange, symbol, timeframe, len(new), new[0], new[-1], path, len(gaps)),
    )
    return result(new, gaps)


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


def _exchange_now_ms(client: Any) -> int:
    if client.has.get("fetchTime"):
        server_ms = _call(client, "read the exchange's clock", client.fetch_time)
        if server_ms is not None:
            return int(server_ms)
    return int(client.milliseconds())


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
