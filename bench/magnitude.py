"""Will the next move clear the fees? The magnitude head against its baselines, walking forward.

For each bundled pair (hourly candles): the default feature set over the whole history, in
windows of ML_SEQUENCE_LENGTH candles (60 by default); `FOLDS` consecutive test windows of
`FOLD_ROWS` rows ending at the newest outcome, each fold's scaler, head and baselines fitted on
every row before it whose label closes before the fold starts. The head is the one every
registered version ships (`pipelines.magnitude.MagnitudeHead`: a logistic regression on a HAR
inside each window and the scaled calendar features of its last step, as
`mlproject.magnitude_fit.head_inputs` chooses them), scored through the computation a bundle
serves; the baselines are its own (base rate over the trailing 720 rows, persistence of the
last move, the HAR regression), scored with the same code a training uses
(`mlproject.magnitude_fit.score_labels`). Two labels of the move r = close[t + 1] / close[t] - 1:

- fee: |r| > the round-trip fee (2 x ML_TRADING_FEE, 0.002 by default), what the head ships;
- median: |r| > the median of the |r| known at t over the trailing 720 rows (about half clear
  whatever the regime, so the base rate has nothing to learn from a trend in volatility).

Each row of the first table: ROC AUC and log loss of the head and of each baseline over every
test row of the folds together, and the head's per-row log loss minus the best baseline's (the
one of lowest log loss) with its 95 % Newey-West interval (`pipelines.lifecycle.intervals`).
The second weighs the head's inputs on the fee label: the shipped head's per-row log loss minus
the HAR regression's beside that of heads fitted the same way on other inputs (`ALTERNATIVES`:
the head shipped before, on the scaled last step of every feature; the window HAR of the return
alone or with the range; each instead of the last step's features or with all of them).

Run alone with `python -m bench.magnitude` (`--help` for the options).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pipelines.lifecycle.intervals import PairedVerdict

PAIRS = ("BTC", "ETH", "XMR", "RVN")
FOLDS = 6
FOLD_ROWS = 2_000
HORIZON = 1
SEED = 0
LABELS = ("fee", "median")

NAMES = {"head": "head", "base_rate": "base rate", "persistence": "persistence", "har": "HAR"}
RETURN = ("ret_1",)
RETURN_RANGE = ("ret_1", "hl_range")
SHIPPED = "shipped"
EVERY = "every feature"
# The other inputs the second table fits the head on: (the last step's features, EVERY or none;
# the window's), by their description.
ALTERNATIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "last step of every feature (the head before)": (EVERY, ()),
    "window HAR of the return": ("", RETURN),
    "last step of every feature + window HAR of the return": (EVERY, RETURN),
    "window HAR of the return and range": ("", RETURN_RANGE),
    "last step of every feature + window HAR of the return and range": (EVERY, RETURN_RANGE),
}


def trailing_median(close: np.ndarray, *, horizon: int, window: int) -> np.ndarray:
    """At each row t, the median of the absolute moves known at t (rows t - horizon - window + 1
    .. t - horizon); NaN until `window` are known."""
    import pandas as pd

    from pipelines.magnitude import absolute_moves

    moves = pd.Series(absolute_moves(close, horizon=horizon)).shift(horizon)
    return moves.rolling(window, min_periods=window).median().to_numpy()


def run(
    *,
    pairs: tuple[str, ...] = PAIRS,
    folds: int = FOLDS,
    fold_rows: int = FOLD_ROWS,
    fee: float | None = None,
) -> str:
    """Measure every pair and label; return the markdown table with its notes (`fee` defaults
    to the settings' ML_TRADING_FEE)."""
    from mlproject.data import Split, build_dataset
    from mlproject.magnitude_fit import head_inputs, score_labels, window_spans
    from pipelines.candles.store import CandleStore
    from pipelines.features.spec import default_spec
    from pipelines.magnitude import TRAILING_ROWS, move_labels, round_trip_threshold
    from pipelines.settings import get_settings

    settings = get_settings()
    threshold = round_trip_threshold(settings.trading_fee if fee is None else fee)
    store = CandleStore.from_settings(settings)
    length = settings.sequence_length
    spec = default_spec()
    last_step, window = head_inputs(spec)
    spans = window_spans(length) if window else ()
    columns = [NAMES[name] for name in NAMES]
    shipped = (
        f"last step of {', '.join(last_step) or 'no feature'} + window HAR of {', '.join(window)}"
    )
    against: dict[str, dict[str, str]] = {SHIPPED: {}, **{name: {} for name in ALTERNATIVES}}
    lines = [
        f"### Magnitude head against its baselines ({folds} folds of {fold_rows} h, "
        f"round-trip fee {threshold:g}, windows of {length} h)",
        "",
        "| pair | label | rows | clears | "
        + " | ".join(f"AUC {c}" for c in columns)
        + " | "
        + " | ".join(f"log loss {c}" for c in columns)
        + " | head - best baseline (95 % interval) | verdict |",
        "|---|---|---:|---:|" + "---:|" * (2 * len(columns)) + "---|---|",
    ]
    started = time.perf_counter()
    for pair in pairs:
        candles = store.load(pair)
        dataset = build_dataset(candles, spec=spec, sequence_length=length, horizon=HORIZON)
        samples = dataset.samples
        splits = []
        for k in range(folds):
            stop = samples.stop - (folds - 1 - k) * fold_rows
            test = range(stop - fold_rows, stop)
            splits.append(
                Split(
                    train=range(samples.start, test.start - HORIZON),
                    val=range(test.start, test.start),
                    test=test,
                )
            )
        if splits[0].test.start - samples.start < fold_rows:
            raise ValueError(
                f"{pair}: {len(samples)} rows leave less than {fold_rows} to learn before the "
                f"first of {folds} folds of {fold_rows}: ask for fewer folds or rows"
            )
        median = trailing_median(dataset.close, horizon=HORIZON, window=TRAILING_ROWS)
        labelled = {
            "fee": move_labels(dataset.close, horizon=HORIZON, threshold=threshold),
            "median": move_labels(dataset.close, horizon=HORIZON, threshold=median),
        }
        for label, y in labelled.items():
            scores = score_labels(dataset, splits, y, seed=SEED)
            best = scores.strongest_baseline
            verdict = scores.verdicts[best]
            state = {"better": "head better", "worse": "head worse"}.get(verdict.state, "undecided")
            lines.append(
                f"| {pair} | {label} | {scores.rows:,} | {scores.positive_rate:.3f} | "
                + " | ".join(f"{scores.auc[name]:.3f}" for name in NAMES)
                + " | "
                + " | ".join(f"{scores.log_loss[name]:.4f}" for name in NAMES)
                + f" | {verdict.mean:+.4f} [{verdict.low:+.4f}, {verdict.high:+.4f}] vs "
                f"{NAMES[best]} | {state}"
                + (" (beats all three)" if scores.beats_baseline else "")
                + " |"
            )
            if label == "fee":
                against[SHIPPED][pair] = _interval(scores.verdicts["har"])
                for name, (last, read) in ALTERNATIVES.items():
                    inputs = (tuple(spec.names) if last == EVERY else (), read)
                    other = score_labels(dataset, splits, y, seed=SEED, inputs=inputs)
                    against[name][pair] = _interval(other.verdicts["har"])
    lines += [
        "",
        f"Labels: fee = |r| > {threshold:g}; median = |r| > the trailing {TRAILING_ROWS}-h "
        "median of |r|. clears: the share of test rows that clear. Log loss in nats per row; "
        "the interval is the paired Newey-West t-interval of the per-row difference, head "
        "minus the baseline of lowest log loss. The head's inputs: the window HAR of "
        + (", ".join(window) or "no feature")
        + f" over the last {', '.join(map(str, spans))} h, and the scaled last step of "
        + (", ".join(last_step) or "no feature")
        + ".",
        "",
        f"### The head's inputs: its log loss minus the HAR regression's on the fee label "
        f"(|r| > {threshold:g}), nats per row (95 % interval)",
        "",
        "| inputs | " + " | ".join(pairs) + " |",
        "|---|" + "---:|" * len(pairs),
        *(
            f"| {shipped if name == SHIPPED else name}"
            + (" (shipped)" if name == SHIPPED else "")
            + " | "
            + " | ".join(cells[pair] for pair in pairs)
            + " |"
            for name, cells in against.items()
        ),
        "",
        "The return: ret_1, the one-candle log return; the range: hl_range, (high - low) / close; "
        f"window HAR spans {', '.join(map(str, spans))} h. Below 0: the head beats HAR.",
        f"_{time.perf_counter() - started:.0f} s_",
    ]
    return "\n".join(lines)


def _interval(verdict: PairedVerdict) -> str:
    return f"{verdict.mean:+.4f} [{verdict.low:+.4f}, {verdict.high:+.4f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.magnitude",
        description="The magnitude head (will |r| over the next candle clear a threshold?) "
        "against its baselines (trailing base rate, persistence, HAR regression) on the "
        "bundled candles, walking forward: ROC AUC, log loss and the paired interval of the "
        "head minus the best baseline, for |r| > the round-trip fee and for |r| > its trailing "
        "720-h median.",
    )
    parser.add_argument("--pairs", default=",".join(PAIRS), help="comma-separated pairs")
    parser.add_argument(
        "--folds", type=int, default=FOLDS, help="walk-forward folds (default %(default)s)"
    )
    parser.add_argument(
        "--fold-rows",
        type=int,
        default=FOLD_ROWS,
        help="hourly rows per fold (default %(default)s)",
    )
    parser.add_argument(
        "--fee",
        type=float,
        default=None,
        help="fee per side; the label clears twice it (default: ML_TRADING_FEE)",
    )
    args = parser.parse_args(argv)
    if args.folds < 1 or args.fold_rows < 1:
        parser.error(
            f"--folds and --fold-rows must be positive, got {args.folds} and {args.fold_rows}"
        )
    pairs = tuple(p.strip().upper() for p in args.pairs.split(",") if p.strip())
    print(run(pairs=pairs, folds=args.folds, fold_rows=args.fold_rows, fee=args.fee))
    return 0


if __name__ == "__main__":
    sys.exit(main())
