"""Parsing of `ML_RETRAIN_INTERVAL_HOURS`: hours of new candles after which the retraining
policy (pipelines.queue.policy) retrains a pair; a pair it does not name gets
`settings.DEFAULT_RETRAIN_INTERVAL_HOURS` (`Settings.retrain_interval_for`)."""

from __future__ import annotations

import json
from collections.abc import Sequence


def parse_retrain_intervals(value: object, *, pairs: Sequence[str] | None) -> dict[str, float]:
    """Accept `24` (every pair), `BTC=24,ETH=12`, a JSON object or a mapping; every pair
    configured, every hour > 0. Empty: {} (every pair gets the default).

    Args:
        value: The raw setting.
        pairs: The configured pairs (None when they failed validation themselves).
    """
    if value is None or value == "":
        return {}
    raw: object = value
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and pairs is not None and "=" not in value:
        text = value.strip()
        if not text.startswith("{"):  # one number for every pair
            try:
                float(text)
            except ValueError:
                raise ValueError(
                    f"ML_RETRAIN_INTERVAL_HOURS {text!r} is not PAIR=HOURS items (BTC=24,ETH=12) "
                    "nor one number of hours for every pair (24)"
                ) from None
            return parse_retrain_intervals({p: text for p in pairs}, pairs=pairs)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            raw = json.loads(text)
        else:
            pairs_text: dict[str, str] = {}
            for item in text.split(","):
                if not item.strip():
                    continue
                pair, sep, hours = item.partition("=")
                if not sep:
                    raise ValueError(
                        f"ML_RETRAIN_INTERVAL_HOURS item {item.strip()!r} is not PAIR=HOURS "
                        "(for example BTC=24,ETH=12)"
                    )
                pairs_text[pair.strip()] = hours.strip()
            raw = pairs_text
    if not isinstance(raw, dict):
        raise ValueError(f"ML_RETRAIN_INTERVAL_HOURS must map pairs to hours, got {value!r}")
    intervals: dict[str, float] = {}
    for pair, hours in raw.items():
        symbol = str(pair).strip().upper()
        if pairs is not None and symbol not in pairs:
            raise ValueError(
                f"ML_RETRAIN_INTERVAL_HOURS names pair {pair!r}: allowed pairs are "
                f"{', '.join(pairs)}"
            )
        try:
            number = float(hours)
        except (TypeError, ValueError):
            raise ValueError(
                f"ML_RETRAIN_INTERVAL_HOURS for {symbol} is {hours!r}: expected a number of hours"
            ) from None
        if not number > 0:
            raise ValueError(
                f"ML_RETRAIN_INTERVAL_HOURS for {symbol} is {hours!r}: expected hours > 0"
            )
        intervals[symbol] = number
    return intervals
