"""What the model's signals would have earned, with a fee per trade, beside buy-and-hold.

The rules are those of a spot bot (no shorting): BUY opens a long position, SELL closes it,
HOLD keeps whatever is held. The signal decided at the close of candle t holds the position
over candle t+1 (return close[t+1] / close[t] - 1), so no signal trades on a price it has not
seen. Every change of position (entry or exit) pays `fee` of the notional.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BUY, HOLD, SELL = 1, 0, -1
TRADING_METRICS: tuple[str, ...] = (
    "cumulative_return",
    "sharpe",
    "max_drawdown",
    "hit_rate",
    "n_trades",
)


@dataclass(frozen=True)
class Backtest:
    """An equity curve (starting at 1.0, one value per candle after it) and its metrics."""

    equity: np.ndarray
    metrics: dict[str, float]


def signals_from_proba(
    proba: np.ndarray, *, buy_threshold: float, sell_threshold: float
) -> np.ndarray:
    """BUY (1) at or above `buy_threshold`, SELL (-1) at or below `sell_threshold`, else HOLD."""
    if not 0.0 <= sell_threshold < buy_threshold <= 1.0:
        raise ValueError(
            f"need 0 <= sell_threshold < buy_threshold <= 1, got {sell_threshold} "
            f"and {buy_threshold}"
        )
    p = np.asarray(proba, dtype=np.float64).ravel()
    signals = np.full(p.shape, HOLD, dtype=np.int8)
    signals[p >= buy_threshold] = BUY
    signals[p <= sell_threshold] = SELL
    return signals


def positions_from_signals(signals: np.ndarray) -> np.ndarray:
    """Long (1) from a BUY until the next SELL, flat (0) otherwise; flat at the start."""
    s = np.asarray(signals).ravel()
    positions = np.empty(s.shape, dtype=np.float64)
    held = 0.0
    for i, signal in enumerate(s):
        if signal == BUY:
            held = 1.0
        elif signal == SELL:
            held = 0.0
        positions[i] = held
    return positions


def backtest(
    *, positions: np.ndarray, returns: np.ndarray, fee: float, periods_per_year: float
) -> Backtest:
    """Equity of holding `positions[t]` over `returns[t]`, paying `fee` per position change.

    Args:
        positions: 0 (flat) or 1 (long) per candle, decided at its close.
        returns: simple return of the next candle, close[t+1] / close[t] - 1.
        fee: fraction of the notional paid on every entry and exit.
        periods_per_year: candles per year, to annualise the Sharpe ratio.
    """
    pos = np.asarray(positions, dtype=np.float64).ravel()
    ret = np.asarray(returns, dtype=np.float64).ravel()
    if pos.shape != ret.shape:
        raise ValueError(f"{pos.size} positions for {ret.size} returns")
    changes = np.abs(np.diff(pos, prepend=0.0))
    growth = (1.0 + pos * ret) * (1.0 - fee * changes)
    equity = np.cumprod(growth)
    period_returns = growth - 1.0
    return Backtest(
        equity=equity,
        metrics={
            "cumulative_return": float(equity[-1] - 1.0) if equity.size else 0.0,
            "sharpe": _sharpe(period_returns, periods_per_year),
            "max_drawdown": _max_drawdown(equity),
            "hit_rate": _hit_rate(pos, ret, fee),
            "n_trades": float(changes.sum()),
        },
    )


def buy_and_hold(*, returns: np.ndarray, fee: float, periods_per_year: float) -> Backtest:
    """Long from the first candle to the last: one entry fee."""
    ret = np.asarray(returns, dtype=np.float64).ravel()
    return backtest(
        positions=np.ones_like(ret), returns=ret, fee=fee, periods_per_year=periods_per_year
    )


def periods_per_year(timeframe: str) -> float:
    """Candles per year of a timeframe such as `1h`, `15m`, `1d` (crypto trades all year)."""
    units = {"m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
    try:
        seconds = float(timeframe[:-1]) * units[timeframe[-1]]
    except (KeyError, ValueError) as exc:
        raise ValueError(f"unknown timeframe {timeframe!r}: expected e.g. 15m, 1h, 1d") from exc
    return 365.0 * 86400.0 / seconds


def _sharpe(period_returns: np.ndarray, per_year: float) -> float:
    if period_returns.size < 2:
        return 0.0
    std = float(np.std(period_returns, ddof=1))
    if std == 0.0:
        return 0.0
    return float(np.mean(period_returns) / std * math.sqrt(per_year))


def _max_drawdown(equity: np.ndarray) -> float:
    """Largest fall from a previous peak, as a positive fraction (the start counts as 1.0)."""
    if equity.size == 0:
        return 0.0
    peaks = np.maximum.accumulate(np.concatenate(([1.0], equity)))[1:]
    return float(np.max(1.0 - equity / peaks))


def _hit_rate(positions: np.ndarray, returns: np.ndarray, fee: float) -> float:
    """Share of round trips (entry to exit, or to the end) whose net return was positive."""
    wins = trips = 0
    i, n = 0, positions.size
    while i < n:
        if positions[i] != 1.0:
            i += 1
            continue
        start = i
        while i < n and positions[i] == 1.0:
            i += 1
        closed = i < n
        gross = float(np.prod(1.0 + returns[start:i]))
        net = gross * (1.0 - fee) * ((1.0 - fee) if closed else 1.0)
        trips += 1
        wins += net > 1.0
    return wins / trips if trips else math.nan
