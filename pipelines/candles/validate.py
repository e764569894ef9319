"""Parsing and validation of candle files: every rule, with the file, the row and the values.

Rows are reported by their line number in the file (the header is line 1), so that
`sed -n 42p file` shows the offending candle.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from pipelines.candles.timeframes import timeframe_delta

COLUMNS: tuple[str, ...] = ("timestamp", "open", "high", "low", "close", "volume")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
_HEADER_LINES = 1


class CandleValidationError(ValueError):
    """A candle file or frame breaks a rule; the message names the source, the row and the rule."""

    def __init__(self, source: str, rule: str, detail: str, line: int | None = None) -> None:
        self.source, self.rule, self.detail, self.line = source, rule, detail, line
        where = f"{source}: line {line}" if line is not None else source
        super().__init__(f"{where}: {rule}: {detail}")


@dataclass(frozen=True)
class Gap:
    """Missing candles strictly between two consecutive rows."""

    after: pd.Timestamp
    before: pd.Timestamp
    missing: int

    def __str__(self) -> str:
        span = f"{self.after:%Y-%m-%d %H:%M} -> {self.before:%Y-%m-%d %H:%M}"
        return f"{span}: {self.missing} missing"


def _line(position: int) -> int:
    return int(position) + _HEADER_LINES + 1


def _first_bad(
    source: str, mask: np.ndarray, rule: str, describe: Callable[[int], str] | str
) -> None:
    """Raise for the first True in `mask`, saying how many rows break the same rule."""
    bad = np.flatnonzero(mask)
    if bad.size == 0:
        return
    first = int(bad[0])
    more = f" (and {bad.size - 1} more rows)" if bad.size > 1 else ""
    detail = describe(first) if callable(describe) else str(describe)
    raise CandleValidationError(source, rule, f"{detail}{more}", line=_line(first))


def parse_candles(raw: pd.DataFrame, source: str) -> pd.DataFrame:
    """Turn a frame of strings (as read from CSV) into typed, validated candles.

    Returns a frame indexed by a UTC `DatetimeIndex` named `timestamp`, with float64 columns
    open, high, low, close, volume.
    """
    columns = [str(c) for c in raw.columns]
    missing = [c for c in COLUMNS if c not in columns]
    extra = [c for c in columns if c not in COLUMNS]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected {', '.join(extra)}")
        raise CandleValidationError(
            source,
            "columns",
            f"{'; '.join(parts)}; expected exactly {','.join(COLUMNS)}",
            line=1,
        )

    stamps = pd.to_datetime(raw["timestamp"], utc=True, errors="coerce", format="ISO8601")
    bad_time = stamps.isna().to_numpy()
    _first_bad(
        source,
        bad_time,
        "unparsable timestamp",
        lambda i: f"{raw['timestamp'].iloc[i]!r} is not an ISO 8601 time",
    )

    values: dict[str, np.ndarray] = {}
    for column in COLUMNS[1:]:
        parsed = pd.to_numeric(raw[column], errors="coerce").to_numpy(dtype="float64")
        bad = ~np.isfinite(parsed)

        def unparsable(i: int, c: str = column) -> str:
            return f"{raw[c].iloc[i]!r} is not a finite number"

        _first_bad(source, bad, f"unparsable {column}", unparsable)
        values[column] = parsed

    # Nanoseconds everywhere, whatever unit pandas inferred, so integer time arithmetic agrees.
    index = pd.DatetimeIndex(stamps, name="timestamp").as_unit("ns")
    frame = pd.DataFrame(values, index=index)
    validate_candles(frame, source)
    return frame


def validate_candles(frame: pd.DataFrame, source: str) -> None:
    """Check the price, volume and time rules on an already typed frame."""
    # Values are shown as Python floats: numpy 2's repr would print `np.float64(-5.0)`.
    o, h, low, c, v = (frame[col].to_numpy() for col in COLUMNS[1:])
    for name, col in zip(PRICE_COLUMNS, (o, h, low, c), strict=True):

        def non_positive(i: int, n: str = name, a: np.ndarray = col) -> str:
            return f"{n}={float(a[i])!r} must be > 0"

        _first_bad(source, col <= 0, "non-positive price", non_positive)
    _first_bad(source, v < 0, "negative volume", lambda i: f"volume={float(v[i])!r} must be >= 0")
    top = np.maximum(o, c)
    _first_bad(
        source,
        h < top,
        "high below max(open, close)",
        lambda i: f"high={float(h[i])!r} < max(open={float(o[i])!r}, close={float(c[i])!r})",
    )
    bottom = np.minimum(o, c)
    _first_bad(
        source,
        low > bottom,
        "low above min(open, close)",
        lambda i: f"low={float(low[i])!r} > min(open={float(o[i])!r}, close={float(c[i])!r})",
    )
    index = pd.DatetimeIndex(frame.index)
    stamps = index.asi8
    if stamps.size > 1:
        step = np.diff(stamps)
        _first_bad(
            source,
            np.concatenate([[False], step == 0]),
            "duplicated timestamp",
            lambda i: f"{index[i].isoformat()} appears twice",
        )
        _first_bad(
            source,
            np.concatenate([[False], step < 0]),
            "non-increasing timestamp",
            lambda i: f"{index[i].isoformat()} comes after {index[i - 1].isoformat()}",
        )


def find_gaps(frame: pd.DataFrame, timeframe: str) -> list[Gap]:
    """Every place where consecutive candles are further apart than one timeframe."""
    step = timeframe_delta(timeframe).value
    index = pd.DatetimeIndex(frame.index)
    stamps = index.as_unit("ns").asi8
    if stamps.size < 2:
        return []
    diffs = np.diff(stamps)
    return [
        Gap(
            after=index[i],
            before=index[i + 1],
            missing=-(-int(diffs[i]) // step) - 1,  # ceil(diff / step) - 1
        )
        for i in np.flatnonzero(diffs > step).tolist()
    ]


def read_candle_file(path: Path) -> pd.DataFrame:
    """Read and validate one CSV (plain or .gz) of candles."""
    return _read(path, str(path))


def read_candle_bytes(data: bytes, source: str) -> pd.DataFrame:
    """Read and validate candle CSV content not yet on disk (a file about to be written)."""
    return _read(io.BytesIO(data), source)


def _read(handle: Path | IO[bytes], source: str) -> pd.DataFrame:
    try:
        # Blank lines are kept as rows (and refused as unparsable) so that line numbers in
        # errors stay the file's own.
        raw = pd.read_csv(
            handle, dtype=str, keep_default_na=False, skip_blank_lines=False, compression="infer"
        )
    except pd.errors.EmptyDataError as exc:
        raise CandleValidationError(source, "empty file", "no header and no rows") from exc
    except pd.errors.ParserError as exc:
        raise CandleValidationError(source, "malformed CSV", str(exc)) from exc
    return parse_candles(raw, source)
