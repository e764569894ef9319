"""How sure is a verdict: the paired interval's coverage and power on real per-row differences.

For each bundled pair: the per-row log-loss differences of a logistic regression on the features
minus the base rate (`bench.drift_alarms.null_differences`: fitted on the older half of the
candles, scored on the newer half), with their mean removed, so the two forecasters are equally
good: the null. Series of n rows are drawn from them by a stationary bootstrap (Politis and
Romano: stretches of consecutive rows of geometric length, mean 24, wrapping round), the pairs in
turn, and the lifecycle's paired interval (`pipelines.lifecycle.intervals.paired_interval`) is
computed on each:

- coverage: the share of 95 % intervals that hold 0, the true mean;
- power: the share that find the first forecaster worse (the interval wholly above 0) once every
  row is made worse by 0.002, 0.005 and 0.01 nats;
- the edge the interval detects with 80 % power at that n (median over the series).

Beside it, for comparison only, the moving-block bootstrap the lifecycle used before (blocks of
24 rows, 1,000 resamples, percentile interval), kept here as the peer.

Run alone with `python -m bench.verdict_coverage` (`--help` for the options).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

import numpy as np

from pipelines.lifecycle.intervals import LEVEL, paired_interval

PAIRS = ("BTC", "ETH", "XMR", "RVN")
SIZES = (100, 168, 500, 2_000, 12_000)
SHIFTS = (0.002, 0.005, 0.01)
REPS = 2_000
MEAN_STRETCH = 24  # rows: the stationary bootstrap's mean stretch, a day of hourly candles
PEER_BLOCK = 24
PEER_RESAMPLES = 1_000


@dataclass(frozen=True)
class Row:
    """The figures at one series length."""

    rows: int
    reps: int
    lag: int  # the interval's Newey-West lag at this length
    coverage: float  # share of intervals holding 0 under the null
    power: dict[float, float]  # shift (nats) -> share of intervals wholly above 0
    detectable: float  # median edge detected with 80 % power (nats)
    peer_coverage: float | None  # the moving-block bootstrap's coverage; None when not run


def stationary_bootstrap(
    pool: np.ndarray, rows: int, *, rng: np.random.Generator, mean_stretch: int = MEAN_STRETCH
) -> np.ndarray:
    """`rows` values of `pool` in stretches of consecutive rows (wrapping round) whose lengths
    are geometric with mean `mean_stretch`, each from a uniform random start."""
    size = int(pool.size)
    lengths = rng.geometric(1.0 / mean_stretch, size=rows // mean_stretch + 8)
    while lengths.sum() < rows:
        lengths = np.concatenate([lengths, rng.geometric(1.0 / mean_stretch, size=8)])
    starts = rng.integers(0, size, size=lengths.size)
    stretch = np.repeat(np.arange(lengths.size), lengths)[:rows]
    offset = np.arange(rows) - (np.cumsum(lengths) - lengths)[stretch]
    return pool[(starts[stretch] + offset) % size]


def _moving_block_interval(
    d: np.ndarray, *, rng: np.random.Generator, level: float = LEVEL
) -> tuple[float, float]:
    """The peer: the percentile interval of the mean under a moving-block bootstrap (blocks of
    `PEER_BLOCK` rows from random starts in [0, n - block], no wrapping; shorter series use
    blocks of n // 2 rows), `PEER_RESAMPLES` resamples."""
    n = int(d.size)
    block = PEER_BLOCK if n >= 2 * PEER_BLOCK else max(1, n // 2)
    blocks = math.ceil(n / block)
    tail = n - (blocks - 1) * block
    cumulative = np.concatenate(([0.0], np.cumsum(d)))
    starts = rng.integers(0, n - block + 1, size=(PEER_RESAMPLES, blocks))
    full = cumulative[starts[:, :-1] + block] - cumulative[starts[:, :-1]]
    last = cumulative[starts[:, -1] + tail] - cumulative[starts[:, -1]]
    means = (full.sum(axis=1) + last) / n
    alpha = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [alpha, 100.0 - alpha])
    return float(low), float(high)


def measure(
    pools: list[np.ndarray],
    rows: int,
    *,
    reps: int = REPS,
    shifts: tuple[float, ...] = SHIFTS,
    peer: bool = True,
    seed: int = 0,
) -> Row:
    """Coverage and power of the paired interval on `reps` series of `rows` rows drawn from the
    null `pools` in turn (each with mean 0)."""
    rng = np.random.default_rng(seed)
    covered = peer_covered = 0
    rejected = dict.fromkeys(shifts, 0)
    detectable = np.empty(reps)
    lag = 0
    for rep in range(reps):
        d = stationary_bootstrap(pools[rep % len(pools)], rows, rng=rng)
        verdict = paired_interval(d)
        lag = verdict.lag
        covered += verdict.low <= 0.0 <= verdict.high
        detectable[rep] = verdict.detectable_edge()
        for shift in shifts:
            rejected[shift] += paired_interval(d + shift).worse()
        if peer:
            low, high = _moving_block_interval(d, rng=rng)
            peer_covered += low <= 0.0 <= high
    return Row(
        rows=rows,
        reps=reps,
        lag=lag,
        coverage=covered / reps,
        power={shift: count / reps for shift, count in rejected.items()},
        detectable=float(np.median(detectable)),
        peer_coverage=peer_covered / reps if peer else None,
    )


def table(
    rows: list[Row],
    *,
    pairs: tuple[str, ...],
    pools: list[np.ndarray] | None = None,
    command: str = "python -m bench.verdict_coverage",
) -> str:
    """The section "How sure is a verdict": what was measured, how, and one table row per
    series length (and, given the `pools`, the lag-1 autocorrelation of each pair's
    differences)."""
    shifts = sorted(rows[0].power) if rows else []
    lines = [
        "## How sure is a verdict",
        "",
        "Every verdict of the lifecycle (a model against its baselines here and in training, the "
        "offline gate, the challenger against production) is the 95 % paired interval of "
        "per-row log-loss differences, `pipelines.lifecycle.intervals.paired_interval`: a "
        "Student-t interval of the mean whose standard error is Newey and West's (`lag` rows of "
        "autocovariance, Bartlett weights). How often it holds the truth, and how often it "
        f"finds a real difference, measured by `{command}`:",
        "",
        f"- Null: the per-row log-loss differences of a logistic regression on the features "
        f"minus the base rate on {', '.join(pairs)} (fitted on each pair's older half, scored on "
        "the newer half), mean removed, so the two are equally good. Series of n rows are drawn "
        f"from them by a stationary bootstrap (stretches of mean {MEAN_STRETCH} rows), the pairs "
        "in turn.",
        "- Coverage: the share of 95 % intervals that hold 0 (aim: 93-97 %). Power: the share "
        "that find the first forecaster worse once every row is made worse by the shift. Edge: "
        "the true difference the interval detects with 80 % power at that n (median).",
        f"- Peer, for comparison only: the moving-block bootstrap the lifecycle used before "
        f"(blocks of {PEER_BLOCK} rows, {PEER_RESAMPLES:,} resamples, percentile interval).",
        "",
        "| rows | series | lag | coverage % | moving-block bootstrap coverage % (peer) | "
        + " | ".join(f"power at +{s:g} nats %" for s in shifts)
        + " | edge detected with 80 % power (nats) |",
        "|---:|---:|---:|---:|---:|" + "---:|" * len(shifts) + "---:|",
    ]
    for row in rows:
        peer = "—" if row.peer_coverage is None else f"{100 * row.peer_coverage:.1f}"
        lines.append(
            f"| {row.rows:,} | {row.reps:,} | {row.lag} | {100 * row.coverage:.1f} | {peer} | "
            + " | ".join(f"{100 * row.power[s]:.1f}" for s in shifts)
            + f" | {row.detectable:.4f} |"
        )
    lines.append("")
    reps = min((row.reps for row in rows), default=0)
    if reps:
        error = 1.96 * math.sqrt(0.95 * 0.05 / reps) * 100
        lines.append(
            f"A coverage of 95 % measured on {reps:,} series is within ±{error:.1f} points."
        )
    if pools is not None:
        lag1 = ", ".join(
            f"{pair} {np.corrcoef(pool[1:], pool[:-1])[0, 1]:+.3f}"
            for pair, pool in zip(pairs, pools, strict=True)
        )
        lines.append(f"Lag-1 autocorrelation of the per-row differences: {lag1}.")
    return "\n".join(lines) + "\n"


def null_pools(pairs: tuple[str, ...] = PAIRS) -> list[np.ndarray]:
    """Each pair's real per-row differences with their mean removed (the null)."""
    from bench.drift_alarms import null_differences
    from pipelines.candles.store import CandleStore
    from pipelines.settings import get_settings

    settings = get_settings()
    store = CandleStore(
        bundled_dir=settings.bundled_data_dir,
        data_dir=settings.data_dir,
        quote=settings.quote_currency,
    )
    return [null_differences(store, pair) for pair in pairs]


def run(
    *,
    pairs: tuple[str, ...] = PAIRS,
    sizes: tuple[int, ...] = SIZES,
    reps: int = REPS,
    peer: bool = True,
    seed: int = 0,
) -> str:
    """The markdown table at every size of `sizes`."""
    pools = null_pools(pairs)
    measured = [measure(pools, n, reps=reps, peer=peer, seed=seed + n) for n in sizes]
    given = {
        "--pairs": (",".join(pairs), ",".join(PAIRS)),
        "--sizes": (",".join(map(str, sizes)), ",".join(map(str, SIZES))),
        "--reps": (str(reps), str(REPS)),
        "--seed": (str(seed), "0"),
    }
    command = "python -m bench.verdict_coverage" + "".join(
        f" {flag} {value}" for flag, (value, default) in given.items() if value != default
    )
    if not peer:
        command += " --no-peer"
    return table(measured, pairs=pairs, pools=pools, command=command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.verdict_coverage",
        description="Coverage and power of the lifecycle's paired interval (and of the old "
        "moving-block bootstrap, for comparison) on resampled real per-row log-loss "
        "differences (logistic vs base rate) of the bundled candles.",
    )
    parser.add_argument("--pairs", default=",".join(PAIRS), help="comma-separated pairs")
    parser.add_argument(
        "--sizes", default=",".join(map(str, SIZES)), help="comma-separated series lengths"
    )
    parser.add_argument("--reps", type=int, default=REPS, help="series per length")
    parser.add_argument(
        "--no-peer", action="store_true", help="skip the moving-block bootstrap (faster)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    args = parser.parse_args(argv)
    pairs = tuple(p.strip().upper() for p in args.pairs.split(",") if p.strip())
    sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip())
    print(run(pairs=pairs, sizes=sizes, reps=args.reps, peer=not args.no_peer, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
