"""A local HTTP server that answers like Binance's public spot REST API, for ccxt to talk to.

It serves the three endpoints ccxt's `binance` calls to fetch candles: `/api/v3/exchangeInfo`
(load_markets), `/api/v3/time` (fetch_time) and `/api/v3/klines` (fetch_ohlcv), honouring
`startTime`, `endTime` and `limit` the way Binance does, including the candle still forming at the
server's clock. Candles are a deterministic function of their open time, so two servers agree.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
MARKETS = {"BTCUSDT": ("BTC", "USDT"), "ETHUSDT": ("ETH", "USDT")}


def interval_ms(interval: str) -> int:
    return int(interval[:-1]) * _UNIT_MS[interval[-1]]


def candle_at(open_ms: int, *, forming: bool = False) -> list[str]:
    """One Binance kline row's first six fields as strings, like the real API sends them."""
    hours = open_ms / 3_600_000
    open_ = 42000 + 1500 * math.sin(hours / 17)
    close = 42000 + 1500 * math.sin((hours + 1) / 17)
    high = max(open_, close) + 35.5
    low = min(open_, close) - 21.25
    volume = 0.5 if forming else 1000 + 250 * math.cos(hours / 5)
    return [f"{value:.8f}" for value in (open_, high, low, close, volume)]


@dataclass
class FakeBinance:
    """The server's state; tests change it between calls (clock, failures, missing candles)."""

    now_ms: int
    first_open_ms: int
    max_limit: int = 1000
    missing: set[int] = field(default_factory=set)
    # Rows served in place of the computed candle at an open time (to send malformed data).
    overrides: dict[int, list[str]] = field(default_factory=dict)
    # Answer HTTP 500 to klines requests once this many have been served.
    fail_klines_after: int | None = None
    # Answer klines requests with these bytes (HTTP 200, JSON content type): garbage.
    klines_body: bytes | None = None
    # Seconds each klines request waits before it is answered (a slow exchange).
    klines_delay_s: float = 0.0
    requests: list[str] = field(default_factory=list)
    url: str = ""

    @property
    def klines_requests(self) -> list[dict[str, str]]:
        calls = [urlsplit(r) for r in self.requests]
        return [
            {k: v[0] for k, v in parse_qs(c.query).items()}
            for c in calls
            if c.path == "/api/v3/klines"
        ]

    def exchange_info(self) -> dict[str, Any]:
        symbols = [
            {
                "symbol": market_id,
                "status": "TRADING",
                "baseAsset": base,
                "baseAssetPrecision": 8,
                "quoteAsset": quote,
                "quotePrecision": 8,
                "quoteAssetPrecision": 8,
                "orderTypes": ["LIMIT", "MARKET"],
                "isSpotTradingAllowed": True,
                "isMarginTradingAllowed": False,
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": "0.01", "tickSize": "0.01"},
                    {"filterType": "LOT_SIZE", "minQty": "0.00001", "stepSize": "0.00001"},
                ],
                "permissions": [],
                "permissionSets": [["SPOT"]],
            }
            for market_id, (base, quote) in MARKETS.items()
        ]
        return {
            "timezone": "UTC",
            "serverTime": self.now_ms,
            "rateLimits": [],
            "exchangeFilters": [],
            "symbols": symbols,
        }

    def klines(self, query: dict[str, str]) -> tuple[int, Any]:
        if query.get("symbol") not in MARKETS:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        step = interval_ms(query["interval"])
        limit = min(int(query.get("limit", 500)), self.max_limit)
        # The candle containing `now` is the one still forming; nothing after it exists yet.
        last_open = (self.now_ms // step) * step
        end = min(int(query.get("endTime", last_open)), last_open)
        if "startTime" in query:
            start = max(int(query["startTime"]), self.first_open_ms)
            start = -(-start // step) * step
            opens = range(start, end + 1, step)
        else:
            opens = range(end - (limit - 1) * step, end + 1, step)
        rows = []
        for open_ms in opens:
            if open_ms < self.first_open_ms or open_ms in self.missing:
                continue
            values = self.overrides.get(open_ms) or candle_at(open_ms, forming=open_ms == last_open)
            rows.append([open_ms, *values, open_ms + step - 1, "0", 10, "0", "0", "0"])
            if len(rows) == limit:
                break
        return 200, rows


class _Handler(BaseHTTPRequestHandler):
    state: FakeBinance

    def do_GET(self) -> None:
        state = self.server.state  # type: ignore[attr-defined]
        state.requests.append(self.path)
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        status: int
        body: Any
        if parts.path == "/api/v3/exchangeInfo":
            status, body = 200, state.exchange_info()
        elif parts.path == "/api/v3/time":
            status, body = 200, {"serverTime": state.now_ms}
        elif parts.path == "/api/v3/klines":
            served = len(state.klines_requests) - 1
            if state.klines_delay_s:
                time.sleep(state.klines_delay_s)
            if state.fail_klines_after is not None and served >= state.fail_klines_after:
                status, body = 500, {"code": -1000, "msg": "An unknown error occurred."}
            elif state.klines_body is not None:
                status, body = 200, state.klines_body
            else:
                status, body = state.klines(query)
        else:
            status, body = 404, {"code": -1, "msg": f"no such endpoint {parts.path}"}
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests assert on `state.requests` instead."""


class FakeBinanceServer:
    """Serve a `FakeBinance` on a free loopback port (or `port`: to restart a stopped one at the
    URL its clients know) in a background thread."""

    def __init__(self, state: FakeBinance, *, port: int = 0) -> None:
        self.state = state
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.state = state  # type: ignore[attr-defined]
        host, port = self._httpd.server_address[:2]
        state.url = f"http://{host!s}:{port}"
        # A short poll interval keeps `shutdown` (which waits for the next poll) quick.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> FakeBinance:
        self._thread.start()
        return self.state

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
