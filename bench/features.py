"""The feature pipeline against the pure-pandas `ta` library computing the same indicators.

Two cases, both on a pair's full bundled history (BTC by default, `BENCH_PAIR` to change):

- full history: every feature of every candle (what training does);
- incremental: the newest 60 rows from the newest `lookback + 60` candles (what the prediction
  service does on every request).

The `ta` side builds the same 69 named columns: ta's indicator classes where ta has one, pandas
for the rest (returns, realised volatility, candle shape, volume ratio, calendar). Parabolic SAR
is a per-row Python loop in ta and dominates its time, so each case is also shown without it.
Run alone with `python -m bench.features` (`--help` for the options).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import ta

from pipelines.candles.store import CandleStore
from pipelines.features.compute import compute_features, latest_features
from pipelines.features.spec import default_spec
from pipelines.settings import get_settings

ROWS = 60  # the service's window: one sequence of the LSTM

NOTES = """\
What differs between the two sides (as close as `ta` allows):

- EMA, MACD, RSI, ADX/DI and ATR: ta seeds its smoothings with the first value, TA-Lib with an
  SMA of the first period; the two agree to 1e-8 once converged (tests/pipelines/features/
  test_against_ta.py checks it), not during the first few hundred rows.
- MFI: same formula; a typical price unchanged up to rounding (a 1e-14 difference) counts as a
  rise or fall in ta and as unchanged in TA-Lib, so a few windows differ.
- Parabolic SAR: ta assumes an uptrend from the start and, on a reversal, puts the SAR at the
  extreme point as is; TA-Lib picks the first trend from the first two candles and keeps a
  reversed SAR outside the last two candles' range, so the values differ. ta 0.11 also writes
  `series[i]` by label in its SAR loop, which under pandas 3 appends rows to a time-indexed
  series: the ta side is fed a RangeIndex so that its result is right.
- Returns, realised volatility, candle shape, volume ratio and calendar have no ta indicator:
  the ta side computes them with pandas (rolling std with ddof=0, rolling mean, .dt accessors).
- "without Parabolic SAR" drops only ta's SAR; the TA-Lib side still computes all 69 features."""


def ta_features(candles: pd.DataFrame, *, with_sar: bool = True) -> pd.DataFrame:
    """The feature set of `default_spec()` computed with `ta` and pandas."""
    frame = candles.reset_index(drop=True)
    h, lo, c, v, o = frame["high"], frame["low"], frame["close"], frame["volume"], frame["open"]
    cols: dict[str, pd.Series] = {}
    log_close = np.log(c)
    log_return = log_close.diff()
    for k in (1, 3, 5, 10, 20):
        cols[f"ret_{k}"] = log_close - log_close.shift(k)
    for n in (5, 10, 20):
        cols[f"rv_{n}"] = log_return.rolling(n).std(ddof=0)
    cols["hl_range"] = (h - lo) / c
    cols["body"] = (c - o) / o
    cols["upper_wick"] = (h - np.maximum(o, c)) / c
    cols["lower_wick"] = (np.minimum(o, c) - lo) / c
    for n in (5, 10, 20):
        cols[f"rsi_{n}"] = ta.momentum.RSIIndicator(c, window=n).rsi()
    macd = ta.trend.MACD(c, window_slow=26, window_fast=12, window_sign=9)
    cols["macd_line"] = macd.macd() / c
    cols["macd_signal"] = macd.macd_signal() / c
    cols["macd_hist"] = macd.macd_diff() / c
    for n in (5, 10, 20):
        bands = ta.volatility.BollingerBands(c, window=n, window_dev=2)
        cols[f"bb_pos_{n}"] = bands.bollinger_pband()
        cols[f"bb_width_{n}"] = bands.bollinger_wband() / 100
    for n in (5, 10, 20):
        cols[f"sma_dist_{n}"] = c / ta.trend.SMAIndicator(c, window=n).sma_indicator() - 1
    for n in (5, 10, 20):
        cols[f"ema_dist_{n}"] = c / ta.trend.EMAIndicator(c, window=n).ema_indicator() - 1
    for n in (5, 10, 20):
        cols[f"vol_ratio_{n}"] = v / v.rolling(n).mean()
    for n in (5, 10, 20):
        cols[f"mfi_{n}"] = ta.volume.MFIIndicator(h, lo, c, v, window=n).money_flow_index()
    for n in (5, 10, 20):
        stoch = ta.momentum.StochasticOscillator(h, lo, c, window=n, smooth_window=3)
        cols[f"stoch_k_{n}"] = stoch.stoch_signal()
        cols[f"stoch_d_{n}"] = cols[f"stoch_k_{n}"].rolling(3).mean()
    for n in (5, 10, 20):
        cols[f"willr_{n}"] = ta.momentum.WilliamsRIndicator(h, lo, c, lbp=n).williams_r()
    ichimoku = ta.trend.IchimokuIndicator(h, lo, window1=9, window2=26, window3=52)
    cols["ichimoku_tenkan_dist"] = c / ichimoku.ichimoku_conversion_line() - 1
    cols["ichimoku_kijun_dist"] = c / ichimoku.ichimoku_base_line() - 1
    cols["ichimoku_span_a_dist"] = c / ichimoku.ichimoku_a().shift(26) - 1
    cols["ichimoku_span_b_dist"] = c / ichimoku.ichimoku_b().shift(26) - 1
    for n in (5, 10, 20):
        adx = ta.trend.ADXIndicator(h, lo, c, window=n)
        cols[f"adx_{n}"] = adx.adx()
        cols[f"plus_di_{n}"] = adx.adx_pos()
        cols[f"minus_di_{n}"] = adx.adx_neg()
    for n in (5, 10, 20):
        cols[f"cci_{n}"] = ta.trend.CCIIndicator(h, lo, c, window=n).cci()
    if with_sar:
        sar = ta.trend.PSARIndicator(h, lo, c, step=0.02, max_step=0.2).psar()
        cols["sar_dist"] = (c - sar) / c
    for n in (5, 10, 20):
        atr = ta.volatility.AverageTrueRange(h, lo, c, window=n).average_true_range()
        cols[f"natr_{n}"] = 100 * atr / c
    index = pd.DatetimeIndex(candles.index)
    day = (index.hour + index.minute / 60) / 24
    week = (index.day_of_week + day) / 7
    for name, values in (
        ("hour_sin", np.sin(2 * np.pi * day)),
        ("hour_cos", np.cos(2 * np.pi * day)),
        ("dow_sin", np.sin(2 * np.pi * week)),
        ("dow_cos", np.cos(2 * np.pi * week)),
    ):
        cols[name] = pd.Series(np.asarray(values, dtype=np.float64), index=frame.index)
    out = pd.DataFrame(cols)
    out.index = candles.index
    return out


def _median_ms(fn: Callable[[], object], *, repeat: int) -> float:
    fn()  # warm caches and imports outside the timing
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def _ms(value: float) -> str:
    return f"{value:,.2f} ms" if value < 10 else f"{value:,.0f} ms"


def run(*, pair: str | None = None) -> str:
    """Time both sides in this run and return the markdown table with its notes (`pair`
    defaults to `BENCH_PAIR`, else BTC)."""
    if pair is None:
        pair = os.environ.get("BENCH_PAIR", "BTC")
    candles = CandleStore.from_settings(get_settings()).load(pair)
    spec = default_spec()
    recent = candles.iloc[-(spec.lookback + ROWS) :]
    names = list(spec.names)
    if list(ta_features(candles.iloc[:300]).columns) != names:
        raise AssertionError("the ta side does not compute the same feature names")

    # Our side is timed once per case and set against both ta variants.
    ours_full = _median_ms(lambda: compute_features(candles), repeat=15)
    ours_latest = _median_ms(lambda: latest_features(candles, rows=ROWS), repeat=300)
    cases = [
        (
            "full history",
            len(candles),
            ours_full,
            _median_ms(lambda: ta_features(candles), repeat=3),
        ),
        (
            "full history, ta without Parabolic SAR",
            len(candles),
            ours_full,
            _median_ms(lambda: ta_features(candles, with_sar=False), repeat=5),
        ),
        (
            f"incremental: newest {ROWS} rows",
            len(recent),
            ours_latest,
            _median_ms(lambda: ta_features(recent).tail(ROWS), repeat=15),
        ),
        (
            f"incremental: newest {ROWS} rows, ta without Parabolic SAR",
            len(recent),
            ours_latest,
            _median_ms(lambda: ta_features(recent, with_sar=False).tail(ROWS), repeat=30),
        ),
    ]
    lines = [
        f"### Features: {pair}, {len(candles):,} hourly candles, {len(names)} features "
        f"(spec {spec.version}, lookback {spec.lookback})",
        "",
        "| case | candles read | tbml (TA-Lib) | ta (pandas) | ta / tbml |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, rows, ours, theirs in cases:
        lines.append(
            f"| {label} | {rows:,} | {_ms(ours)} | {_ms(theirs)} | {theirs / ours:,.0f}× |"
        )
    lines += ["", "Median of repeated runs in one process. " + NOTES, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.features",
        description="Time of the feature pipeline (TA-Lib) against the pure-pandas `ta` library "
        "computing the same indicators, on a pair's full bundled history (what training does) "
        "and on its newest 60 rows (what the prediction service does), as ratios.",
    )
    parser.add_argument(
        "--pair",
        default=os.environ.get("BENCH_PAIR", "BTC"),
        help="bundled pair whose history is read (BENCH_PAIR; default %(default)s)",
    )
    args = parser.parse_args(argv)
    print(run(pair=args.pair))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
