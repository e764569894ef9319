"""The candle store: one place to read a pair's candles, bundled and ingested, as a typed frame.

Two sources per pair and timeframe:

- the bundled file, `{bundled_data_dir}/{BASE}-{QUOTE}_{tf}.csv.gz`, immutable raw data;
- the ingested file, `{data_dir}/candles/{exchange}/{BASE}-{QUOTE}_{tf}.csv`, which
  `tbml ingest` appends to.

`load` returns their union, sorted, with the bundled row winning where both hold a timestamp
(raw data is not rewritten by later fetches). Parsed frames are kept in memory and reused while
the files' size and modification time are unchanged, so the prediction path pays a `stat`, not a
parse, per call.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipelines.candles.timeframes import timeframe_delta
from pipelines.candles.validate import Gap, find_gaps, read_candle_file
from pipelines.pairs import InvalidNameError, candle_file_stem, normalize_symbol
from pipelines.settings import Settings

logger = logging.getLogger(__name__)


class CandlesNotFoundError(LookupError):
    """No candle file exists for the pair and timeframe; the message lists where it looked."""


@dataclass(frozen=True)
class _Stamp:
    path: Path
    size: int
    mtime_ns: int
    # An atomic replace gives a new inode even when size and a coarse mtime do not change.
    inode: int


class CandleStore:
    """Reads and caches candles; safe to share between threads."""

    def __init__(
        self,
        *,
        bundled_dir: Path,
        data_dir: Path,
        quote: str = "USDT",
        exchange: str = "binance",
    ) -> None:
        self.bundled_dir = bundled_dir
        self.data_dir = data_dir
        self.quote = quote
        self.exchange = exchange
        self._cache: dict[tuple[str, str], tuple[tuple[_Stamp, ...], pd.DataFrame]] = {}
        # The timestamps of each bundled file last parsed: when only the ingested file changed
        # (a new candle), the merged frame is rebuilt from the cached one and the ingested file,
        # without parsing the (large, compressed, immutable) bundled file again.
        self._bundled_index: dict[tuple[str, str], pd.DatetimeIndex] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> CandleStore:
        return cls(
            bundled_dir=settings.bundled_data_dir,
            data_dir=settings.data_dir,
            quote=settings.quote_currency,
            exchange=settings.exchange,
        )

    def bundled_path(self, pair: str, timeframe: str) -> Path:
        return self.bundled_dir / f"{self._stem(pair, timeframe)}.csv.gz"

    def ingested_path(self, pair: str, timeframe: str) -> Path:
        return self.data_dir / "candles" / self.exchange / f"{self._stem(pair, timeframe)}.csv"

    def _stem(self, pair: str, timeframe: str) -> str:
        """`BTC`, `BTC/USDT` -> `BTC-USDT_1h`; refuses another quote and a malformed timeframe
        (either would otherwise name a wrong file, or one outside the store)."""
        timeframe_delta(timeframe)
        text = pair.strip().upper()
        for sep in ("/", "-", "_"):
            if sep in text:
                quote = text.split(sep, 1)[1]
                if quote != self.quote:
                    raise InvalidNameError(
                        f"pair {pair!r} is quoted in {quote}: this store holds {self.quote} "
                        "pairs (ML_QUOTE_CURRENCY)"
                    )
                break
        return candle_file_stem(normalize_symbol(pair), self.quote, timeframe)

    def _stamps(self, pair: str, timeframe: str) -> tuple[_Stamp, ...]:
        stamps = []
        for path in (self.bundled_path(pair, timeframe), self.ingested_path(pair, timeframe)):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            stamps.append(_Stamp(path, st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(stamps)

    def load(self, pair: str, timeframe: str = "1h") -> pd.DataFrame:
        """All candles of `pair` (a base symbol such as `BTC`) at `timeframe`, oldest first.

        The frame is shared with the cache: treat it as read-only (copy before changing it).
        """
        self._stem(pair, timeframe)  # a wrong quote or timeframe is refused, not ignored
        symbol = normalize_symbol(pair)
        key = (symbol, timeframe)
        stamps = self._stamps(symbol, timeframe)
        if not stamps:
            raise CandlesNotFoundError(
                f"no candles for {symbol} at {timeframe}: looked for "
                f"{self.bundled_path(symbol, timeframe)} "
                f"and {self.ingested_path(symbol, timeframe)}"
            )
        with self._lock:
            hit = self._cache.get(key)
            bundled_index = self._bundled_index.get(key)
        if hit is not None and hit[0] == stamps:
            return hit[1]
        frame = None
        if hit is not None and bundled_index is not None:
            frame = self._append_ingested(hit, stamps, bundled_index)
        if frame is None:
            frames = [read_candle_file(stamp.path) for stamp in stamps]
            frame = frames[0] if len(frames) == 1 else _merge(frames)
            bundled = self.bundled_path(symbol, timeframe)
            with self._lock:
                if stamps[0].path == bundled:
                    self._bundled_index[key] = pd.DatetimeIndex(frames[0].index)
                else:
                    self._bundled_index.pop(key, None)
        gaps = find_gaps(frame, timeframe)
        logger.debug(
            "loaded %d %s %s candles from %s (%d gaps, %d missing)",
            len(frame),
            symbol,
            timeframe,
            ", ".join(str(s.path) for s in stamps),
            len(gaps),
            sum(g.missing for g in gaps),
        )
        with self._lock:
            self._cache[key] = (stamps, frame)
        return frame

    @staticmethod
    def _append_ingested(
        hit: tuple[tuple[_Stamp, ...], pd.DataFrame],
        stamps: tuple[_Stamp, ...],
        bundled_index: pd.DatetimeIndex,
    ) -> pd.DataFrame | None:
        """The merged frame when only the ingested file changed since `hit` was parsed: the
        cached bundled rows plus the ingested file's other rows (what `_merge` gives), or None
        when the bundled file changed or either source is missing."""
        old_stamps, old = hit
        if len(stamps) != 2 or len(old_stamps) < 1 or old_stamps[0] != stamps[0]:
            return None
        ingested = read_candle_file(stamps[1].path)
        ingested = ingested[~ingested.index.duplicated(keep="first")]
        fresh = ingested[~ingested.index.isin(bundled_index)]
        kept = old if len(old_stamps) == 1 else old[old.index.isin(bundled_index)]
        return pd.concat([kept, fresh]).sort_index(kind="stable")

    def peek(self, pair: str, timeframe: str = "1h") -> pd.DataFrame | None:
        """The cached frame if the files have not changed since it was parsed, else None.

        Never parses: for callers (an event loop) that must not block on a file read.
        """
        symbol = normalize_symbol(pair)
        with self._lock:
            hit = self._cache.get((symbol, timeframe))
        if hit is None or hit[0] != self._stamps(symbol, timeframe):
            return None
        return hit[1]

    def gaps(self, pair: str, timeframe: str = "1h") -> list[Gap]:
        """Where candles are missing in the loaded series (reported, never filled)."""
        return find_gaps(self.load(pair, timeframe), timeframe)

    def pairs(self, timeframe: str = "1h") -> list[str]:
        """Base symbols that have a bundled or ingested file at `timeframe`."""
        suffixes = (f"-{self.quote}_{timeframe}.csv.gz", f"-{self.quote}_{timeframe}.csv")
        found: set[str] = set()
        for folder in (self.bundled_dir, self.data_dir / "candles" / self.exchange):
            if folder.is_dir():
                for path in folder.iterdir():
                    for suffix in suffixes:
                        if path.name.endswith(suffix):
                            found.add(path.name[: -len(suffix)])
        return sorted(found)


def _merge(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Union of sources; the first source (bundled) wins a timestamp both hold."""
    merged = pd.concat(frames)
    merged = merged[~merged.index.duplicated(keep="first")]
    return merged.sort_index(kind="stable")
