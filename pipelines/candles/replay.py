"""`tbml replay`: a loopback exchange that replays the bundled candles as if time were passing.

It answers the Binance spot REST calls ccxt's `binance` makes to fetch candles
(`/api/v3/exchangeInfo`, `/api/v3/time`, `/api/v3/klines`, `/api/v3/ping`), in Binance's wire
format, from the REAL bundled candles (`data/ohlcv/{BASE}-{QUOTE}_{tf}.csv.gz`). So ingestion and
the live feed (`pipelines.candles.feed`) run unchanged against it, offline, and the demo and the
benchmarks see real prices arrive at a pace of seconds instead of hours.

The clock is fictional. With `t0` the moment the clock started (the server's start) and `start`
the open time of the first candle not yet released, the market's now at clock time `t` is
`start + (t - t0) / interval_s * step`: the candle opening at `start` closes `interval_s` seconds
after `t0`, the next one `interval_s` seconds later, and so on. `/api/v3/time` and exchangeInfo's
`serverTime` tell that now; `/api/v3/klines` serves every candle that has opened by then: closed
ones with their real values, and the one still forming as a partial candle (its real open as
open, high, low and close, and a token volume), as Binance serves the current candle, so the
ingestion's forming-candle filter is exercised. Nothing after the newest bundled candle exists:
past it the clock keeps running but no candle appears.

`prepare_replay_store` writes the matching "bundled" directory for a service under replay: the
same files cut before `start`, so that the service knows the candles up to the start and its feed
fetches the rest from the replay.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs, urlsplit

import typer

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

logger = logging.getLogger(__name__)

# Candles that must precede the start: the longest sequence plus the features' warm-up.
MIN_HISTORY = 500
# The default replay: the last 30 days of hourly candles common to the chosen pairs.
DEFAULT_REPLAY_CANDLES = 720
# Binance's spot limits for `/api/v3/klines`.
DEFAULT_KLINES_LIMIT = 500
MAX_KLINES_LIMIT = 1000
# The volume of the candle still forming: it has only just opened.
FORMING_VOLUME = "0.001"
# The command logs released candles at most this often (seconds).
LOG_EVERY_S = 10.0


class ReplayError(ValueError):
    """A bad start, pair, interval or timeframe; the message names it and what is allowed."""


@dataclass(frozen=True)
class _Series:
    """One pair's candles as arrays: open times (epoch ms, ascending) and OHLCV values."""

    opens_ms: np.ndarray
    values: np.ndarray  # float64, shape (n, 5): open, high, low, close, volume
    frame: pd.DataFrame


def _to_utc(stamp: Any) -> pd.Timestamp:
    import pandas as pd

    value = pd.Timestamp(stamp)
    return value.tz_localize("UTC") if value.tzinfo is None else value.tz_convert("UTC")


def _ms(stamp: pd.Timestamp) -> int:
    return int(stamp.as_unit("ns").value) // 1_000_000


def _stamp(ms: int) -> pd.Timestamp:
    import pandas as pd

    return pd.Timestamp(ms, unit="ms", tz="UTC")


def _iso(stamp: pd.Timestamp) -> str:
    return f"{stamp:%Y-%m-%dT%H:%MZ}"


def _number(value: float) -> str:
    """The shortest text that reads back as the same float, without exponent (`58184`)."""
    import numpy as np

    return str(np.format_float_positional(float(value), trim="-"))


def bundled_file(
    bundled_dir: Path, pair: str, *, quote: str = "USDT", timeframe: str = "1h"
) -> Path:
    """`{bundled_dir}/{BASE}-{QUOTE}_{tf}.csv.gz`."""
    return bundled_dir / f"{pair}-{quote}_{timeframe}.csv.gz"


def bundled_pairs(bundled_dir: Path, *, quote: str = "USDT", timeframe: str = "1h") -> list[str]:
    """The base symbols that have a bundled file in `bundled_dir`, sorted."""
    suffix = f"-{quote}_{timeframe}.csv.gz"
    if not bundled_dir.is_dir():
        return []
    return sorted(p.name[: -len(suffix)] for p in bundled_dir.iterdir() if p.name.endswith(suffix))


def check_pairs(
    pairs: Sequence[str], bundled_dir: Path, *, quote: str = "USDT", timeframe: str = "1h"
) -> list[str]:
    """Normalize `pairs` (`btc`, `BTC/USDT` -> `BTC`) and require a bundled file for each."""
    from pipelines.pairs import InvalidNameError, normalize_symbol

    available = bundled_pairs(bundled_dir, quote=quote, timeframe=timeframe)
    shown = ", ".join(available) if available else "none"
    chosen: list[str] = []
    for pair in pairs:
        try:
            symbol = normalize_symbol(pair)
        except InvalidNameError as exc:
            raise ReplayError(f"{exc}; bundled pairs in {bundled_dir}: {shown}") from exc
        if symbol not in available:
            raise ReplayError(
                f"no bundled {timeframe} candles for pair {pair!r}: "
                f"{bundled_file(bundled_dir, symbol, quote=quote, timeframe=timeframe)} does not "
                f"exist; bundled pairs in {bundled_dir}: {shown}"
            )
        if symbol not in chosen:
            chosen.append(symbol)
    if not chosen:
        raise ReplayError(f"no pairs to replay: choose among the bundled pairs {shown}")
    return chosen


def load_bundled(
    bundled_dir: Path, pairs: Sequence[str], *, quote: str = "USDT", timeframe: str = "1h"
) -> dict[str, pd.DataFrame]:
    """The bundled candles of each pair (checked by the store's reader), by base symbol."""
    from pipelines.candles.validate import read_candle_file

    chosen = check_pairs(pairs, bundled_dir, quote=quote, timeframe=timeframe)
    return {
        pair: read_candle_file(bundled_file(bundled_dir, pair, quote=quote, timeframe=timeframe))
        for pair in chosen
    }


def _step(timeframe: str) -> pd.Timedelta:
    from pipelines.candles.timeframes import timeframe_delta

    try:
        return timeframe_delta(timeframe)
    except ValueError as exc:
        raise ReplayError(str(exc)) from exc


def allowed_starts(
    candles: Mapping[str, pd.DataFrame], *, min_history: int = MIN_HISTORY
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The earliest and latest allowed start: `min_history` candles of every pair before it,
    and at most the newest candle common to the pairs (so at least one candle is replayed)."""
    if not candles:
        raise ReplayError("no pairs to replay")
    short = {pair: len(frame) for pair, frame in candles.items() if len(frame) <= min_history}
    if short:
        detail = ", ".join(f"{pair} has {n}" for pair, n in short.items())
        raise ReplayError(
            f"too few candles to replay: a start needs {min_history} candles before it, and "
            f"{detail}"
        )
    earliest = max(frame.index[min_history] for frame in candles.values())
    latest = min(frame.index[-1] for frame in candles.values())
    if earliest > latest:
        raise ReplayError(
            f"the pairs' candles do not overlap enough to replay: a start needs {min_history} "
            f"candles of every pair before it ({_iso(earliest)} at the earliest) and must not "
            f"be after the newest candle common to them ({_iso(latest)})"
        )
    return earliest, latest


def _default_start_of(
    candles: Mapping[str, pd.DataFrame], step: pd.Timedelta, *, min_history: int = MIN_HISTORY
) -> pd.Timestamp:
    earliest, latest = allowed_starts(candles, min_history=min_history)
    return max(earliest, latest - DEFAULT_REPLAY_CANDLES * step)


def default_start(
    bundled_dir: Path,
    *,
    pairs: Sequence[str],
    quote: str = "USDT",
    timeframe: str = "1h",
    min_history: int = MIN_HISTORY,
) -> pd.Timestamp:
    """The newest candle common to `pairs` minus 720 candles (30 days of hours), or the
    earliest allowed start if the data is shorter."""
    candles = load_bundled(bundled_dir, pairs, quote=quote, timeframe=timeframe)
    return _default_start_of(candles, _step(timeframe), min_history=min_history)


def check_start(
    start: Any,
    candles: Mapping[str, pd.DataFrame],
    step: pd.Timedelta,
    *,
    min_history: int = MIN_HISTORY,
) -> pd.Timestamp:
    """Require `start` on the timeframe's grid, with `min_history` candles before it and no
    later than the newest candle common to the pairs; returns it in UTC."""
    import pandas as pd

    try:
        stamp = _to_utc(start)
    except (ValueError, TypeError) as exc:
        raise ReplayError(
            f"malformed start {start!r}: expected an ISO 8601 time in UTC, such as "
            "2023-11-30T18:00Z"
        ) from exc
    if stamp is pd.NaT:
        raise ReplayError(f"malformed start {start!r}: expected a time, such as 2023-11-30T18:00Z")
    earliest, latest = allowed_starts(candles, min_history=min_history)
    allowed = (
        f"allowed: {_iso(earliest)} .. {_iso(latest)} (at least {min_history} candles before "
        f"it, at most the newest candle of {', '.join(candles)})"
    )
    if not earliest <= stamp <= latest:
        raise ReplayError(f"start {stamp.isoformat()} is outside the data: {allowed}")
    if (stamp - earliest) % step:
        raise ReplayError(
            f"start {stamp.isoformat()} is not a candle's open time: it must fall on the "
            f"{step} grid, such as {_iso(stamp.floor(step))}; {allowed}"
        )
    return stamp


class ReplayExchange:
    """The replay's candles and its fictional clock; safe to share between threads.

    `candles` maps base symbols (`BTC`) to frames as `read_candle_file` returns them. `clock`
    (epoch seconds by default, so that another process can compute release times) is only ever
    differenced: tests pass a fake one and advance it by hand.
    """

    def __init__(
        self,
        candles: Mapping[str, pd.DataFrame],
        *,
        start: Any,
        interval_s: float,
        timeframe: str = "1h",
        quote: str = "USDT",
        clock: Callable[[], float] = time.time,
        min_history: int = MIN_HISTORY,
    ) -> None:
        import numpy as np
        import pandas as pd

        from pipelines.candles.validate import COLUMNS

        if (
            not isinstance(interval_s, (int, float))
            or not math.isfinite(interval_s)
            or interval_s <= 0
        ):
            raise ReplayError(
                f"interval {interval_s!r} is not allowed: expected seconds per candle > 0, "
                "such as 3 or 0.2"
            )
        self.step = _step(timeframe)
        self.timeframe = timeframe
        self.quote = quote.upper()
        self.interval_s = float(interval_s)
        self.start = check_start(start, candles, self.step, min_history=min_history)
        self._clock = clock
        self._step_ms = _ms(self.start + self.step) - _ms(self.start)
        self._start_ms = _ms(self.start)
        self._series = {
            pair.upper(): _Series(
                opens_ms=np.asarray(
                    pd.DatetimeIndex(frame.index).as_unit("ms").asi8, dtype=np.int64
                ),
                values=frame.loc[:, list(COLUMNS[1:])].to_numpy(dtype=np.float64),
                frame=frame,
            )
            for pair, frame in candles.items()
        }
        self.markets = {f"{pair}{self.quote}": pair for pair in self._series}
        # The newest candle of any pair: once it has closed, nothing new ever appears.
        self.end = max(frame.index[-1] for frame in candles.values())
        self._lock = threading.Lock()
        self._t0: float | None = None
        self._end_logged = False

    @classmethod
    def from_bundled(
        cls,
        bundled_dir: Path,
        *,
        pairs: Sequence[str],
        start: Any | None = None,
        interval_s: float,
        timeframe: str = "1h",
        quote: str = "USDT",
        clock: Callable[[], float] = time.time,
        min_history: int = MIN_HISTORY,
    ) -> ReplayExchange:
        """Replay the bundled files of `pairs`; `start` None is `default_start`'s."""
        candles = load_bundled(bundled_dir, pairs, quote=quote, timeframe=timeframe)
        if start is None:
            start = _default_start_of(candles, _step(timeframe), min_history=min_history)
        return cls(
            candles,
            start=start,
            interval_s=interval_s,
            timeframe=timeframe,
            quote=quote,
            clock=clock,
            min_history=min_history,
        )

    @property
    def pairs(self) -> list[str]:
        return list(self._series)

    # --- the clock ------------------------------------------------------------------------------

    def start_clock(self) -> float:
        """Start the clock now (the first call wins; later ones change nothing); returns `t0`.

        The server starts it; any question to the clock before that starts it too.
        """
        with self._lock:
            if self._t0 is None:
                self._t0 = self._clock()
            return self._t0

    @property
    def t0(self) -> float:
        """The clock time at which the replay started (the candle at `start` then opened)."""
        return self.start_clock()

    def now_ms(self) -> int:
        """The fictional market's now, epoch ms."""
        elapsed = self._clock() - self.t0
        now = self._start_ms + round(elapsed / self.interval_s * self._step_ms)
        if not self._end_logged and now >= _ms(self.end) + self._step_ms:
            with self._lock:
                first, self._end_logged = not self._end_logged, True
            if first:
                logger.info(
                    "replay reached the end of the bundled candles at %s (the newest candle "
                    "closed); the clock keeps running, no new candle will appear",
                    _iso(self.end),
                )
        return now

    def now(self) -> pd.Timestamp:
        return _stamp(self.now_ms())

    def release_time(self, open_time: Any) -> float:
        """The clock time at which the candle opening at `open_time` closes (is released)."""
        opens = _ms(_to_utc(open_time))
        return self.t0 + (opens + self._step_ms - self._start_ms) / self._step_ms * self.interval_s

    def released(self, pair: str) -> pd.DataFrame:
        """The closed candles of `pair` by now, history before the start included."""
        import numpy as np

        series = self._pair_series(pair)
        count = int(np.searchsorted(series.opens_ms, self.now_ms() - self._step_ms, side="right"))
        return series.frame.iloc[:count]

    def newest_released(self) -> pd.Timestamp | None:
        """The open time of the newest candle every pair has closed, None before any."""
        import numpy as np

        closed_by = self.now_ms() - self._step_ms
        newest: list[int] = []
        for series in self._series.values():
            count = int(np.searchsorted(series.opens_ms, closed_by, side="right"))
            if count == 0:
                return None
            newest.append(int(series.opens_ms[count - 1]))
        return _stamp(min(newest))

    def wait_until_released(
        self, open_time: Any, timeout: float, *, poll_s: float = 0.005
    ) -> pd.Timestamp:
        """Block until the candle opening at `open_time` has closed; returns it (UTC).

        Raises ReplayError at once when no such candle can ever be released (after the data,
        off the grid), and TimeoutError after `timeout` seconds of real time.
        """
        stamp = _to_utc(open_time)
        if stamp > self.end:
            raise ReplayError(
                f"no candle opening at {stamp.isoformat()} will ever be released: the data "
                f"ends at {_iso(self.end)}"
            )
        if (stamp - self.start) % self.step:
            raise ReplayError(
                f"{stamp.isoformat()} is not a candle's open time on the {self.step} grid"
            )
        target = _ms(stamp) + self._step_ms
        deadline = time.monotonic() + timeout
        while self.now_ms() < target:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"the candle opening at {_iso(stamp)} was not released within {timeout:g} s "
                    f"(the replay's now is {_iso(self.now())})"
                )
            time.sleep(poll_s)
        return stamp

    # --- the wire -------------------------------------------------------------------------------

    def _pair_series(self, pair: str) -> _Series:
        from pipelines.pairs import normalize_symbol

        symbol = normalize_symbol(pair)
        if symbol not in self._series:
            raise ReplayError(
                f"unknown pair {pair!r}: this replay serves {', '.join(self._series)}"
            )
        return self._series[symbol]

    def exchange_info(self) -> dict[str, Any]:
        """`GET /api/v3/exchangeInfo`: a spot market `{BASE}{QUOTE}` per pair."""
        symbols = [
            {
                "symbol": market_id,
                "status": "TRADING",
                "baseAsset": base,
                "baseAssetPrecision": 8,
                "quoteAsset": self.quote,
                "quotePrecision": 8,
                "quoteAssetPrecision": 8,
                "orderTypes": ["LIMIT", "MARKET"],
                "isSpotTradingAllowed": True,
                "isMarginTradingAllowed": False,
                "filters": [
                    {
                        "filterType": "PRICE_FILTER",
                        "minPrice": "0.00000001",
                        "tickSize": "0.00000001",
                    },
                    {"filterType": "LOT_SIZE", "minQty": "0.00001", "stepSize": "0.00001"},
                ],
                "permissions": [],
                "permissionSets": [["SPOT"]],
            }
            for market_id, base in self.markets.items()
        ]
        return {
            "timezone": "UTC",
            "serverTime": self.now_ms(),
            "rateLimits": [],
            "exchangeFilters": [],
            "symbols": symbols,
        }

    def klines(self, query: Mapping[str, str]) -> tuple[int, Any]:
        """`GET /api/v3/klines`: the status and the JSON body, as Binance answers them.

        `startTime` and `endTime` bound the open times (inclusive); without `startTime` the
        newest `limit` candles up to `endTime` are served, oldest first.
        """
        import numpy as np

        market = query.get("symbol")
        if not market:
            return 400, {
                "code": -1102,
                "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
            }
        if market not in self.markets:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        if query.get("interval") != self.timeframe:
            return 400, {"code": -1120, "msg": "Invalid interval."}
        numbers: dict[str, int] = {}
        for name in ("startTime", "endTime", "limit"):
            if name in query:
                try:
                    numbers[name] = int(query[name])
                except ValueError:
                    return 400, {
                        "code": -1100,
                        "msg": f"Illegal characters found in parameter '{name}'; legal range is "
                        "'^-?[0-9]{1,20}$'.",
                    }
        limit = numbers.get("limit", DEFAULT_KLINES_LIMIT)
        if limit < 1:
            return 400, {"code": -1130, "msg": "Invalid data sent for a parameter."}
        limit = min(limit, MAX_KLINES_LIMIT)
        series = self._series[self.markets[market]]
        now = self.now_ms()
        # Every candle that has opened by now exists, the one still forming included.
        end = min(numbers.get("endTime", now), now)
        hi = int(np.searchsorted(series.opens_ms, end, side="right"))
        if "startTime" in numbers:
            lo = int(np.searchsorted(series.opens_ms, numbers["startTime"], side="left"))
            hi = min(hi, lo + limit)
        else:
            lo = max(0, hi - limit)
        rows: list[list[Any]] = []
        for i in range(lo, hi):
            open_ms = int(series.opens_ms[i])
            close_ms = open_ms + self._step_ms - 1
            if close_ms >= now:  # still forming: it has only just opened
                first = _number(series.values[i, 0])
                fields = [first, first, first, first, FORMING_VOLUME]
            else:
                fields = [_number(v) for v in series.values[i]]
            rows.append([open_ms, *fields, close_ms, "0", 0, "0", "0", "0"])
        return 200, rows

    def answer(self, target: str) -> tuple[int, Any]:
        """The status and JSON body for a GET of `target` (path and query)."""
        parts = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path == "/api/v3/ping":
            return 200, {}
        if parts.path == "/api/v3/time":
            return 200, {"serverTime": self.now_ms()}
        if parts.path == "/api/v3/exchangeInfo":
            return 200, self.exchange_info()
        if parts.path == "/api/v3/klines":
            return self.klines(query)
        return 404, {
            "code": -1,
            "msg": f"no such endpoint {parts.path}: this replay serves "
            "/api/v3/ping, /api/v3/time, /api/v3/exchangeInfo and /api/v3/klines",
        }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the feed asks every pair on one connection
    timeout = 60  # an idle keep-alive connection is closed after this many seconds

    def do_GET(self) -> None:
        exchange: ReplayExchange = self.server.exchange  # type: ignore[attr-defined]
        try:
            status, body = exchange.answer(self.path)
        except Exception:
            logger.exception("replay: answering %s failed", self.path)
            status, body = 500, {"code": -1000, "msg": "An unknown error occurred."}
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("replay: %s %s", self.address_string(), format % args)


class ReplayServer:
    """Serve a `ReplayExchange` over HTTP in a daemon thread; port 0 takes a free port.

    The socket is bound on construction (so `url` is known at once); `start()` starts the
    exchange's clock and serving, `stop()` ends both; also a context manager.
    """

    def __init__(self, exchange: ReplayExchange, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.exchange = exchange
        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.exchange = exchange  # type: ignore[attr-defined]
        bound_host, bound_port = (str(part) for part in self._httpd.server_address[:2])
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{bound_port}"
        self.port = int(bound_port)
        # A short poll interval keeps `shutdown` (which waits for the next poll) quick.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"replay-{bound_port}",
            daemon=True,
        )
        self._closed = False

    def start(self) -> ReplayServer:
        self.exchange.start_clock()
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- a truncated "bundled" directory for a service under replay -----------------------------------


def prepare_replay_store(
    source_dir: Path,
    target_dir: Path,
    *,
    pairs: Sequence[str],
    start: Any,
    quote: str = "USDT",
    timeframe: str = "1h",
) -> dict[str, int]:
    """Write `{BASE}-{QUOTE}_{tf}.csv.gz` into `target_dir` with only the candles of
    `source_dir`'s files that open before `start`; returns the rows written per pair.

    The rows are the source's lines byte for byte (same layout, same decimal text), gzipped
    deterministically (no name, mtime 0) and written atomically. A copy of the source's
    SOURCES.md, with a note on the truncation, goes beside them.
    """
    from pipelines.candles.atomic import write_atomic

    if target_dir.resolve() == source_dir.resolve():
        raise ReplayError(
            f"target directory {target_dir} is the source {source_dir}: the bundled files are "
            "never written to; choose another directory"
        )
    candles = load_bundled(source_dir, pairs, quote=quote, timeframe=timeframe)
    stamp = check_start(start, candles, _step(timeframe))
    written: dict[str, int] = {}
    for pair, frame in candles.items():
        source = bundled_file(source_dir, pair, quote=quote, timeframe=timeframe)
        keep = int((frame.index < stamp).sum())
        lines = gzip.decompress(source.read_bytes()).decode().splitlines()
        header, body = lines[0], [line for line in lines[1:] if line.strip()]
        if len(body) != len(frame):
            raise ReplayError(
                f"{source}: {len(body)} candle lines but {len(frame)} candles read; the file "
                "must hold one candle per line"
            )
        kept = body[:keep]
        last = _to_utc(kept[-1].split(",", 1)[0])
        if last != frame.index[keep - 1]:
            raise ReplayError(f"{source}: line {keep + 1} is not the candle at {last}")
        content = ("\n".join([header, *kept]) + "\n").encode()
        target = bundled_file(target_dir, pair, quote=quote, timeframe=timeframe)
        write_atomic(target, gzip.compress(content, compresslevel=9, mtime=0))
        written[pair] = keep
    _write_sources(source_dir, target_dir, stamp, written, quote=quote, timeframe=timeframe)
    logger.info(
        "replay store %s: candles before %s of %s",
        target_dir,
        _iso(stamp),
        ", ".join(f"{pair} ({n})" for pair, n in written.items()),
    )
    return written


def _write_sources(
    source_dir: Path,
    target_dir: Path,
    start: pd.Timestamp,
    written: Mapping[str, int],
    *,
    quote: str,
    timeframe: str,
) -> None:
    from pipelines.candles.atomic import write_atomic

    original = source_dir / "SOURCES.md"
    text = original.read_text() if original.exists() else "# OHLCV data\n"
    files = "\n".join(
        f"- `{pair}-{quote}_{timeframe}.csv.gz`: {n} candles" for pair, n in written.items()
    )
    note = (
        "\n\n## Replay copy (truncated)\n\n"
        f"This directory is a copy of `{source_dir}` made by "
        "`pipelines.candles.replay.prepare_replay_store` for a service under replay: each file "
        f"holds only the candles opening before {start.isoformat()}, its lines unchanged. "
        "The replay exchange (`tbml replay`) serves the rest, one candle at a time.\n\n"
        f"{files}\n"
    )
    write_atomic(target_dir / "SOURCES.md", (text.rstrip("\n") + note).encode())


# --- `tbml replay` --------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    """Add `replay` to `tbml`."""
    app.command("replay")(replay)


@contextmanager
def _stop_on_sigterm(stop: threading.Event) -> Iterator[None]:
    """SIGTERM sets `stop` (in the main thread only; elsewhere signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def replay(
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 0,
    interval: Annotated[
        float, typer.Option(help="Seconds per replayed candle: each one is a timeframe passing.")
    ] = 3.0,
    pairs: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated base symbols with a bundled file, such as BTC,ETH "
            "(default: the configured pairs, ML_PAIRS, that have one).",
            show_default=False,
        ),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            help="Open time of the first candle to replay, ISO 8601 UTC (2023-11-30T18:00Z). "
            "Default: 720 candles before the newest one common to the pairs.",
            show_default=False,
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
) -> None:
    """Serve the bundled candles as a Binance-like exchange whose clock runs a timeframe
    every INTERVAL seconds, until Ctrl-C or SIGTERM."""
    from pipelines.settings import get_settings

    settings = get_settings()
    bundled_dir = settings.bundled_data_dir
    tf, quote = settings.timeframe, settings.quote_currency
    try:
        if not math.isfinite(interval) or interval <= 0:
            raise ReplayError(
                f"--interval {interval:g} is not allowed: expected seconds per candle > 0, "
                "such as 3 or 0.2"
            )
        if pairs is not None:
            chosen = check_pairs(
                [p for p in pairs.split(",") if p.strip()] or [pairs],
                bundled_dir,
                quote=quote,
                timeframe=tf,
            )
        else:
            available = bundled_pairs(bundled_dir, quote=quote, timeframe=tf)
            chosen = [p for p in settings.pairs if p in available]
            if not chosen:
                raise ReplayError(
                    f"none of the configured pairs ({', '.join(settings.pairs)}, ML_PAIRS) has "
                    f"a bundled {tf} file in {bundled_dir}; bundled pairs: "
                    f"{', '.join(available) or 'none'}; pass --pairs"
                )
        exchange = ReplayExchange.from_bundled(
            bundled_dir, pairs=chosen, start=start, interval_s=interval, timeframe=tf, quote=quote
        )
        server = ReplayServer(exchange, host=host, port=port)
    except ReplayError as exc:
        message = str(exc)
        if start is not None and message.startswith(("start ", "malformed start")):
            message = f"--start {start}: {message}"
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(code=1) from exc
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc}", err=True)
        raise typer.Exit(code=1) from exc

    stop = threading.Event()
    with _stop_on_sigterm(stop), server:
        typer.echo(
            f"replay: {server.url} serving {', '.join(exchange.pairs)} "
            f"({', '.join(exchange.markets)}) from {_iso(exchange.start)}, one {tf} candle every "
            f"{interval:g} s; Ctrl-C to stop"
        )
        _report_releases(exchange, stop)
    typer.echo("replay: stopped")


def _report_releases(exchange: ReplayExchange, stop: threading.Event) -> None:
    """Until `stop`: log the newest released candle at INFO, at most every LOG_EVERY_S."""
    logged: pd.Timestamp | None = exchange.newest_released()
    last_log = float("-inf")
    try:
        while not stop.wait(min(exchange.interval_s, 1.0)):
            newest = exchange.newest_released()
            if newest is None or newest == logged or time.monotonic() - last_log < LOG_EVERY_S:
                continue
            count = int((newest - exchange.start) / exchange.step) + 1
            logger.info(
                "replay: released the %s candle opening at %s (%d since the start; the "
                "market's now is %s)",
                *(exchange.timeframe, _iso(newest), count, _iso(exchange.now())),
            )
            logged, last_log = newest, time.monotonic()
    except KeyboardInterrupt:
        pass
