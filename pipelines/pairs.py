"""Names of pairs and model types, checked once at every boundary (CLI, HTTP, files)."""

from __future__ import annotations

import re

from pipelines.settings import MODEL_TYPES

# A base symbol as the API takes it ("BTC"): letters and digits only, so it can never carry a
# path separator or a query into a file name or a URL.
_SYMBOL = re.compile(r"^[A-Z0-9]{2,12}$")


class InvalidNameError(ValueError):
    """A malformed or unconfigured pair or model type; the message says what is allowed."""


class MalformedNameError(InvalidNameError):
    """The value cannot be a pair at all (`../x`, `B`, `BTC USDT`)."""


class UnknownNameError(InvalidNameError):
    """A well-formed name that is not configured here."""


def normalize_symbol(value: str) -> str:
    """`btc`, `BTC`, `BTC/USDT` and `BTC-USDT` all give `BTC`; anything else is refused."""
    text = value.strip().upper()
    for sep in ("/", "-", "_"):
        if sep in text:
            text = text.split(sep, 1)[0]
            break
    if not _SYMBOL.fullmatch(text):
        raise MalformedNameError(
            f"malformed pair {value!r}: expected a base symbol of 2-12 letters or digits, "
            "such as BTC"
        )
    return text


def check_pair(value: str, allowed: list[str]) -> str:
    """Normalize `value` and require it to be one of the configured pairs."""
    symbol = normalize_symbol(value)
    if symbol not in allowed:
        raise UnknownNameError(f"unknown pair {value!r}: allowed pairs are {', '.join(allowed)}")
    return symbol


def check_model_type(value: str) -> str:
    """Require one of the model types the platform can build."""
    text = value.strip().lower()
    if text not in MODEL_TYPES:
        raise UnknownNameError(
            f"unknown model type {value!r}: allowed model types are {', '.join(MODEL_TYPES)}"
        )
    return text


def market_symbol(base: str, quote: str) -> str:
    """The exchange's market symbol, `BTC/USDT`."""
    return f"{base}/{quote}"


def candle_file_stem(base: str, quote: str, timeframe: str) -> str:
    """The file stem candle files use, `BTC-USDT_1h`."""
    return f"{base}-{quote}_{timeframe}"
