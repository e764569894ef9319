"""The ccxt side of ingestion: which exchange, which market, which timeframe, which URL.

Everything here that can be checked without the network is checked before the first request, so
a typo costs no round trip and writes nothing. ccxt is imported inside the functions: importing it
takes seconds, and `tbml --help` should not pay for it.
"""

from __future__ import annotations

import difflib
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pipelines.candles.timeframes import timeframe_delta

# Letters and digits only, as the candle store's file names require (see pipelines.pairs).
_ASSET = re.compile(r"^[A-Z0-9]{2,12}$")


class IngestInputError(ValueError):
    """A bad exchange, pair, timeframe, time or URL; the message names it and what is allowed."""


def split_pair(pair: str) -> tuple[str, str]:
    """`BTC/USDT` (any case) -> `("BTC", "USDT")`; anything else is refused."""
    parts = pair.strip().upper().split("/")
    if len(parts) != 2 or not all(_ASSET.fullmatch(part) for part in parts):
        raise IngestInputError(
            f"malformed pair {pair!r}: expected the exchange's market symbol BASE/QUOTE, "
            "each 2-12 letters or digits, such as BTC/USDT"
        )
    return parts[0], parts[1]


def open_exchange(exchange_id: str, *, api_url: str | None = None) -> Any:
    """A ccxt client for `exchange_id`, loading spot markets only, optionally at `api_url`."""
    import ccxt

    if exchange_id not in ccxt.exchanges:
        close = difflib.get_close_matches(exchange_id.lower(), ccxt.exchanges, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise IngestInputError(
            f"unknown exchange {exchange_id!r}{hint}: expected a ccxt exchange id, one of "
            f"{', '.join(ccxt.exchanges)}"
        )
    client = getattr(ccxt, exchange_id)({"enableRateLimit": True})
    if not client.has.get("fetchOHLCV"):
        raise IngestInputError(f"exchange {exchange_id!r} does not serve candles through ccxt")
    _spot_markets_only(client)
    if api_url is not None:
        rebase_urls(client, api_url)
    return client


def _spot_markets_only(client: Any) -> None:
    """Skip loading futures and options markets: candles here are spot, and each type costs a
    request to another host (Binance's futures hosts are blocked in some countries)."""
    option = client.options.get("fetchMarkets")
    if isinstance(option, dict) and "spot" in option.get("types", []):
        client.options["fetchMarkets"] = {**option, "types": ["spot"]}
    elif isinstance(option, list) and "spot" in option:
        client.options["fetchMarkets"] = ["spot"]


def rebase_urls(client: Any, api_url: str) -> None:
    """Send every REST call to `api_url`'s scheme and host, keeping each endpoint's path.

    Binance's `https://api.binance.com/api/v3` becomes `{api_url}/api/v3`, which is what a mirror
    (`https://data-api.binance.vision`) or a local test server expects.
    """
    base = urlsplit(api_url.rstrip("/"))
    if base.scheme not in ("http", "https") or not base.netloc:
        raise IngestInputError(
            f"malformed API URL {api_url!r}: expected http(s)://host[:port][/prefix]"
        )

    def rebase(value: Any) -> Any:
        if isinstance(value, str):
            parts = urlsplit(value)
            return urlunsplit(
                (base.scheme, base.netloc, base.path + parts.path, parts.query, parts.fragment)
            )
        if isinstance(value, dict):
            return {key: rebase(item) for key, item in value.items()}
        return value

    client.urls["api"] = rebase(client.urls["api"])


def check_timeframe(client: Any, timeframe: str) -> None:
    """Require a timeframe the exchange serves and the candle store can measure."""

    def measurable(value: str) -> bool:
        try:
            timeframe_delta(value)
        except ValueError:
            return False
        return True

    offered = [tf for tf in (client.timeframes or {}) if measurable(tf)]
    if not measurable(timeframe) or (offered and timeframe not in offered):
        allowed = ", ".join(offered) if offered else "a count and a unit among m, h, d, w"
        raise IngestInputError(
            f"unsupported timeframe {timeframe!r} for {client.id}: allowed timeframes are {allowed}"
        )


def check_market(client: Any, symbol: str) -> None:
    """Require `symbol` among the exchange's spot markets (markets must be loaded)."""
    spot = sorted(s for s, m in client.markets.items() if m.get("spot"))
    if symbol in spot:
        return
    close = difflib.get_close_matches(symbol, spot, n=5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise IngestInputError(
        f"unknown pair {symbol!r} on {client.id}: not one of its {len(spot)} spot markets{hint}"
    )
