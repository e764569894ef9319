"""The drift test's false-alarm rate and detection delay, on resampled real per-row differences.

For each bundled pair: the per-row log-loss differences of a logistic regression on the
features (fitted on the older half of the candles, scored on the newer half) minus the
`base_rate` baseline, as drift scores a served version. Their mean is removed, so the version
and the baseline are equally good: the null. Streams of `warmup + rows` rows are drawn from them
in circular blocks of a week (the differences' size clusters in time: calm and wild weeks),
and the drift test (`pipelines.lifecycle.drift`, default rule) runs on each:

- false alarms per 10,000 rows under the null;
- the median number of rows after the warm-up to the first alarm when every monitored row is
  made worse by 0.01 and 0.02 nats (the version loses that much against the baseline), and the
  share of streams that alarmed within the stream.

Run alone with `python -m bench.drift_alarms` (`--help` for the options).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.candles.store import CandleStore
from pipelines.lifecycle.baselines import BASE_RATE, naive_probabilities
from pipelines.lifecycle.drift import DriftRule, cusum, standardised
from pipelines.lifecycle.scores import decided, log_losses, outcomes

PAIRS = ("BTC", "ETH", "XMR", "RVN")
ROWS = 10_000
STREAMS = 200
BLOCK = 168  # a week of hourly rows per resampled block
SHIFTS = (0.01, 0.02)


@dataclass(frozen=True)
class Measured:
    """One pair's figures under the rule."""

    pair: str
    sd: float  # standard deviation of the per-row differences (nats)
    false_alarms: float  # per 10,000 rows under the null
    delays: dict[float, float]  # shift (nats) -> median rows to the first alarm
    detected: dict[float, float]  # shift -> share of streams that alarmed


def null_differences(store: CandleStore, pair: str, *, timeframe: str = "1h") -> np.ndarray:
    """Per-row log loss of a logistic on the features minus `base_rate`'s, mean removed."""
    from mlproject.baselines import fit_logistic
    from pipelines.features.compute import compute_features
    from pipelines.features.scaler import FeatureScaler
    from pipelines.features.spec import default_spec

    candles = store.load(pair, timeframe)
    spec = default_spec()
    features = compute_features(candles, spec=spec).to_numpy(dtype=np.float64)
    close = candles["close"].to_numpy(dtype=np.float64)
    y = np.full(close.size, np.nan)
    y[:-1] = outcomes(close[:-1], close[1:])
    usable = np.flatnonzero(np.isfinite(features).all(axis=1) & decided(y))
    older, newer = usable[: usable.size // 2], usable[usable.size // 2 :]
    scaler = FeatureScaler.fit(features[older], names=spec.names)
    coef, intercept = fit_logistic(
        x_train=scaler.transform(features[older]), y_train=y[older], seed=0
    )
    logit = scaler.transform(features[newer]).astype(np.float64) @ coef + intercept
    logistic = 0.5 * (1.0 + np.tanh(0.5 * logit))
    times = pd.DatetimeIndex(candles.index).as_unit("ms").asi8[newer]
    base = naive_probabilities(candles, times, horizon=1)[BASE_RATE]
    d = log_losses(logistic, y[newer]) - log_losses(base, y[newer])
    return d - d.mean()


def resample(
    e: np.ndarray, *, rows: int, streams: int, rng: np.random.Generator, block: int = BLOCK
) -> np.ndarray:
    """`streams` series of `rows` rows (rows x streams) of circular blocks of `e`."""
    blocks = -(-rows // block)
    starts = rng.integers(0, e.size, size=(streams, blocks))
    index = (starts[:, :, None] + np.arange(block)) % e.size
    return e[index.reshape(streams, -1)[:, :rows]].T


def measure(
    pair: str,
    e: np.ndarray,
    *,
    rule: DriftRule,
    rows: int = ROWS,
    streams: int = STREAMS,
    shifts: tuple[float, ...] = SHIFTS,
    seed: int = 0,
) -> Measured:
    """The rule's false alarms and delays on streams resampled from null differences `e`."""
    rng = np.random.default_rng(seed)
    x = resample(e, rows=rule.warmup + rows, streams=streams, rng=rng)

    def alarms(series: np.ndarray) -> np.ndarray:
        z = standardised(series, warmup=rule.warmup, clip=rule.clip)
        return cusum(z, reference=rule.reference, threshold=rule.threshold)[1]

    false_alarms = float(alarms(x).sum()) / streams * (10_000 / rows)
    delays: dict[float, float] = {}
    detected: dict[float, float] = {}
    for shift in shifts:
        shifted = x.copy()
        shifted[rule.warmup :] += shift
        hit = alarms(shifted)
        found = hit.any(axis=0)
        first = np.where(found, hit.argmax(axis=0) - rule.warmup, rows)
        delays[shift] = float(np.median(first))
        detected[shift] = float(found.mean())
    return Measured(pair, float(e.std()), false_alarms, delays, detected)


def table(measured: list[Measured], *, rule: DriftRule, rows: int, streams: int) -> str:
    shifts = sorted(measured[0].delays) if measured else []
    head = "| pair | sd of d (nats) | false alarms / 10,000 rows |" + "".join(
        f" delay at +{s:g} nats (rows) |" for s in shifts
    )
    lines = [
        f"### Drift: CUSUM k = {rule.reference:g} sd, h = {rule.threshold:g} sd, warm-up "
        f"{rule.warmup} rows ({streams} streams of {rows:,} rows per pair)",
        "",
        head,
        "|" + "---|" * (3 + len(shifts)),
    ]
    for m in measured:
        cells = "".join(
            f" {m.delays[s]:,.0f} ({100 * m.detected[s]:.0f} % alarmed) |" for s in shifts
        )
        lines.append(f"| {m.pair} | {m.sd:.3f} | {m.false_alarms:.2f} |{cells}")
    return "\n".join(lines) + "\n"


def run(
    *,
    pairs: tuple[str, ...] = PAIRS,
    rows: int = ROWS,
    streams: int = STREAMS,
    rule: DriftRule | None = None,
    data_dir: Path | None = None,
) -> str:
    """The markdown table of every pair."""
    from pipelines.settings import get_settings

    rule = rule or DriftRule()
    settings = get_settings()
    store = CandleStore(
        bundled_dir=data_dir or settings.bundled_data_dir,
        data_dir=settings.data_dir,
        quote=settings.quote_currency,
    )
    measured = [
        measure(pair, null_differences(store, pair), rule=rule, rows=rows, streams=streams)
        for pair in pairs
    ]
    return table(measured, rule=rule, rows=rows, streams=streams)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.drift_alarms",
        description="False alarms per 10,000 rows and detection delays of the drift test, on "
        "resampled real per-row log-loss differences (logistic vs base rate) of the bundled "
        "candles.",
    )
    parser.add_argument("--pairs", default=",".join(PAIRS), help="comma-separated pairs")
    parser.add_argument("--rows", type=int, default=ROWS, help="monitored rows per stream")
    parser.add_argument("--streams", type=int, default=STREAMS, help="streams per pair")
    parser.add_argument("--reference", type=float, default=DriftRule().reference, help="k")
    parser.add_argument("--threshold", type=float, default=DriftRule().threshold, help="h")
    parser.add_argument("--warmup", type=int, default=DriftRule().warmup, help="warm-up rows")
    args = parser.parse_args(argv)
    rule = DriftRule(reference=args.reference, threshold=args.threshold, warmup=args.warmup)
    pairs = tuple(p.strip().upper() for p in args.pairs.split(",") if p.strip())
    print(run(pairs=pairs, rows=args.rows, streams=args.streams, rule=rule))
    return 0


if __name__ == "__main__":
    sys.exit(main())
