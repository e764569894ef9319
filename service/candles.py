"""The candle store as the service uses it: file paths memoised per pair and timeframe.

Every prediction, cached or not, stats the pair's candle files to notice a new candle; building
the two paths (name checks, `pathlib` joins) cost more than the two `stat` calls, and a pair's
paths never change, so they are computed once.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.candles.store import CandleStore


class ServingCandleStore(CandleStore):
    """`CandleStore` with `bundled_path` and `ingested_path` memoised."""

    def __init__(
        self, *, bundled_dir: Path, data_dir: Path, quote: str = "USDT", exchange: str = "binance"
    ) -> None:
        super().__init__(bundled_dir=bundled_dir, data_dir=data_dir, quote=quote, exchange=exchange)
        self._bundled: dict[tuple[str, str], Path] = {}
        self._ingested: dict[tuple[str, str], Path] = {}

    def bundled_path(self, pair: str, timeframe: str) -> Path:
        key = (pair, timeframe)
        path = self._bundled.get(key)
        if path is None:
            path = self._bundled[key] = super().bundled_path(pair, timeframe)
        return path

    def ingested_path(self, pair: str, timeframe: str) -> Path:
        key = (pair, timeframe)
        path = self._ingested.get(key)
        if path is None:
            path = self._ingested[key] = super().ingested_path(pair, timeframe)
        return path
