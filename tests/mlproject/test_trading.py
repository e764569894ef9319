"""Trading metrics of signals with fees, on prices whose outcome is worked out by hand."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from mlproject.trading import (
    BUY,
    HOLD,
    SELL,
    backtest,
    buy_and_hold,
    periods_per_year,
    positions_from_signals,
    signals_from_proba,
)

CLOSE = np.array([100.0, 110.0, 99.0, 99.0, 108.9, 108.9])
RETURNS = CLOSE[1:] / CLOSE[:-1] - 1  # +10 %, -10 %, 0, +10 %, 0
FEE = 0.01


def test_signals_follow_the_thresholds() -> None:
    signals = signals_from_proba(
        np.array([0.7, 0.5, 0.3, 0.6, 0.41, 0.4]), buy_threshold=0.6, sell_threshold=0.4
    )
    assert signals.tolist() == [BUY, HOLD, SELL, BUY, HOLD, SELL]


def test_positions_hold_until_the_opposite_signal() -> None:
    positions = positions_from_signals(np.array([HOLD, BUY, HOLD, SELL, HOLD, BUY]))
    assert positions.tolist() == [0, 1, 1, 0, 0, 1]


def test_backtest_of_two_round_trips_with_fees() -> None:
    result = backtest(
        positions=np.array([1, 1, 0, 1, 0]), returns=RETURNS, fee=FEE, periods_per_year=8760
    )

    growth = [1.1 * 0.99, 0.9, 0.99, 1.1 * 0.99, 0.99]
    assert result.equity == pytest.approx(np.cumprod(growth))
    assert result.metrics["cumulative_return"] == pytest.approx(np.prod(growth) - 1)
    assert result.metrics["n_trades"] == 4
    # First trip: 1.1 * 0.9 less two fees loses; second: 1.1 less two fees wins.
    assert result.metrics["hit_rate"] == 0.5
    assert result.metrics["max_drawdown"] == pytest.approx(1 - 1.089 * 0.9 * 0.99 / 1.089)
    per_period = [g - 1 for g in growth]
    sharpe = statistics.mean(per_period) / statistics.stdev(per_period) * math.sqrt(8760)
    assert result.metrics["sharpe"] == pytest.approx(sharpe)


def test_buy_and_hold_pays_one_entry_fee() -> None:
    result = buy_and_hold(returns=RETURNS, fee=FEE, periods_per_year=8760)
    assert result.metrics["cumulative_return"] == pytest.approx(1.1 * 0.9 * 1.1 * 0.99 - 1)
    assert result.metrics["n_trades"] == 1
    assert result.metrics["hit_rate"] == 1.0


def test_never_trading_earns_nothing_and_has_no_hit_rate() -> None:
    result = backtest(positions=np.zeros(5), returns=RETURNS, fee=FEE, periods_per_year=8760)
    assert result.metrics["cumulative_return"] == 0.0
    assert result.metrics["n_trades"] == 0
    assert result.metrics["sharpe"] == 0.0
    assert result.metrics["max_drawdown"] == 0.0
    assert math.isnan(result.metrics["hit_rate"])


def test_periods_per_year() -> None:
    assert periods_per_year("1h") == 8760
    assert periods_per_year("15m") == 35040
    assert periods_per_year("1d") == 365
    with pytest.raises(ValueError, match="unknown timeframe '1x'"):
        periods_per_year("1x")
