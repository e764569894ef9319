"""Candle timeframes as exchanges name them (`1h`), and their length."""

from __future__ import annotations

from typing import Literal

import pandas as pd

_UNITS: dict[str, Literal["min", "h", "D", "W"]] = {"m": "min", "h": "h", "d": "D", "w": "W"}


def timeframe_delta(timeframe: str) -> pd.Timedelta:
    """`1h` -> one hour. Raises ValueError naming the timeframe and the accepted forms."""
    number, unit = timeframe[:-1], timeframe[-1:]
    if not number.isdigit() or unit not in _UNITS or int(number) == 0:
        raise ValueError(
            f"unsupported timeframe {timeframe!r}: expected a count and a unit among "
            "m (minutes), h (hours), d (days), w (weeks), such as 1h or 15m"
        )
    return pd.Timedelta(int(number), unit=_UNITS[unit])
