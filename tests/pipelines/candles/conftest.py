"""Fixtures for candle tests: a local Binance-like server, and a guard that keeps tests offline."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from tests.pipelines.candles.fake_binance import FakeBinance, FakeBinanceServer

HOUR_MS = 3_600_000
# The newest candle of the bundled files (data/ohlcv/SOURCES.md).
BUNDLED_LAST = pd.Timestamp("2023-12-30T18:00Z")
BUNDLED_ROWS = 23_986
# How many closed candles the fake exchange holds after the bundled ones, and its page cap:
# more candles than one page, as the tests of paging need.
NEW_CLOSED = 250
PAGE_CAP = 100


def to_ms(stamp: pd.Timestamp) -> int:
    return int(stamp.as_unit("ns").value) // 1_000_000


class NotLoopbackError(OSError):
    """Raised when a test tries to reach anything but loopback."""


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse name lookups and connections outside loopback; returns what was refused."""
    refused: list[str] = []
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect

    def is_loopback(host: object) -> bool:
        if host in (None, "localhost"):
            return True
        try:
            return ipaddress.ip_address(str(host)).is_loopback
        except ValueError:
            return False

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_loopback(host):
            refused.append(str(host))
            raise NotLoopbackError(f"test tried to resolve {host!r}: loopback only")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address[0]):
            refused.append(str(address[0]))
            raise NotLoopbackError(f"test tried to connect to {address!r}: loopback only")
        real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return refused


@pytest.fixture
def exchange() -> Iterator[FakeBinance]:
    """A Binance-like server on a free loopback port whose clock stands half an hour into the
    candle that follows `NEW_CLOSED` closed candles after the bundled files end."""
    now = BUNDLED_LAST + pd.Timedelta(hours=NEW_CLOSED + 1, minutes=30)
    state = FakeBinance(
        now_ms=to_ms(now),
        first_open_ms=to_ms(pd.Timestamp("2021-01-01T00:00Z")),
        max_limit=PAGE_CAP,
    )
    with FakeBinanceServer(state) as running:
        yield running
