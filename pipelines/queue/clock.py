"""Time as the queue stores and shows it: integer milliseconds since the epoch (UTC)."""

from __future__ import annotations

import math
import time


def now_ms() -> int:
    """The current time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def minutes_left(ends_at: int, now: int) -> int:
    """Whole minutes until `ends_at`, rounded up, as the original's `cooldownRemainingMinutes`."""
    return max(0, math.ceil((ends_at - now) / 60_000))
