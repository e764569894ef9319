"""The challenger policy: promote, retire, or keep waiting, on the candles both versions predicted.

A version that passed the offline gate while another was production is the `challenger`: it
predicts every new candle in shadow beside production. `decide` compares the two on their
realised rows and says what to do, with one sentence why:

- the rows: candles both versions predicted, paired by candle time (never by position: one
  version may have missed candles the other predicted), for the same horizon, with an up or
  down outcome;
- fewer than `min_outcomes` rows (`ML_CHALLENGER_MIN_OUTCOMES`): waiting, unless it has been the
  challenger for more than `max_hours` (`ML_CHALLENGER_MAX_HOURS`): then retired, not decided in
  time (no live verdict: nothing is validated);
- enough rows: the paired interval (`intervals.paired_interval`) of the per-row log-loss
  differences, challenger minus production, and with m = `margin` (`ML_PROMOTION_MARGIN`):
  - a challenger whose proof is weaker than production's (unproven against proven) is retired,
    whatever the interval says: an unproven version never replaces a proven one on noise;
  - otherwise retired when the whole interval lies above -m (significantly worse), promoted when
    not (non-inferiority at m = 0: a difference the rows cannot tell from noise promotes the
    newer version). The reason states the smallest edge these rows detect (80 % power), so a
    reader sees what "not worse" could have missed.

A decided comparison names its last candle (`last_candle_ms`): the version that serves after it
(the promoted challenger, or production that kept its place) is validated through that candle,
and its age counts from there (`staleness`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Protocol

import numpy as np

from pipelines.lifecycle.intervals import PairedVerdict, paired_interval
from pipelines.lifecycle.proof import Proof, weaker
from pipelines.lifecycle.scores import log_losses

Action = Literal["waiting", "promote", "retire"]
WAITING: Action = "waiting"
PROMOTE: Action = "promote"
RETIRE: Action = "retire"


class Realised(Protocol):
    """One version's realised predictions: parallel arrays, one row per candle."""

    @property
    def candle_time(self) -> np.ndarray: ...  # open time, epoch ms

    @property
    def probability(self) -> np.ndarray: ...  # of "up"

    @property
    def outcome(self) -> np.ndarray: ...  # 1 up, 0 down

    @property
    def horizon(self) -> np.ndarray: ...  # candles ahead the prediction looked


@dataclass(frozen=True)
class Rules:
    """The settings the decision reads."""

    min_outcomes: int  # ML_CHALLENGER_MIN_OUTCOMES
    max_hours: float  # ML_CHALLENGER_MAX_HOURS
    margin: float = 0.0  # ML_PROMOTION_MARGIN, in nats of log loss


@dataclass(frozen=True)
class Decision:
    """What to do with the challenger, and why."""

    action: Action
    reason: str
    rows: int  # candles both versions predicted, paired by time
    needed: int
    verdict: PairedVerdict | None = None  # challenger minus production, per row
    last_candle_ms: int | None = None  # the newest candle compared (decided comparisons)
    challenger_log_loss: float | None = None
    production_log_loss: float | None = None

    @property
    def validates(self) -> bool:
        """Whether live evidence decided it (then the serving version is validated through
        `last_candle_ms`)."""
        return self.action != WAITING and self.last_candle_ms is not None


@dataclass(frozen=True)
class Paired:
    """Both versions' rows on the candles they share, in candle order."""

    candle_time: np.ndarray
    challenger: np.ndarray  # probabilities
    production: np.ndarray
    outcome: np.ndarray


def pair_rows(challenger: Realised, production: Realised) -> Paired:
    """The candles both versions predicted for the same horizon, with a decided (0/1) outcome
    both agree on, matched by candle time."""
    times, new_at, old_at = np.intersect1d(
        np.asarray(challenger.candle_time, dtype=np.int64),
        np.asarray(production.candle_time, dtype=np.int64),
        assume_unique=False,
        return_indices=True,
    )
    new_outcome = np.asarray(challenger.outcome, dtype=np.float64)[new_at]
    old_outcome = np.asarray(production.outcome, dtype=np.float64)[old_at]
    keep = (
        (np.asarray(challenger.horizon)[new_at] == np.asarray(production.horizon)[old_at])
        & np.isin(new_outcome, (0.0, 1.0))
        & (new_outcome == old_outcome)
    )
    return Paired(
        candle_time=times[keep],
        challenger=np.asarray(challenger.probability, dtype=np.float64)[new_at][keep],
        production=np.asarray(production.probability, dtype=np.float64)[old_at][keep],
        outcome=new_outcome[keep].astype(np.int8),
    )


def decide(
    *,
    challenger: Realised | None,
    production: Realised | None,
    challenger_proof: Proof,
    production_proof: Proof,
    hours: float | None,
    rules: Rules,
    production_version: str = "production",
) -> Decision:
    """The challenger policy's decision now (see the module docstring).

    `challenger` / `production`: each version's realised rows (None: it has none yet);
    `hours`: how long the challenger has held the alias (None: unknown, never timed out).
    """
    needed = rules.min_outcomes
    empty = np.zeros(0, dtype=np.int64)
    paired = (
        pair_rows(challenger, production)
        if challenger is not None and production is not None
        else Paired(empty, empty.astype(float), empty.astype(float), empty.astype(np.int8))
    )
    rows = int(paired.candle_time.size)
    if rows < needed:
        counted = (
            f"{rows} of the {needed} realised outcomes both versions predicted "
            "(ML_CHALLENGER_MIN_OUTCOMES)"
        )
        if hours is not None and hours > rules.max_hours:
            return Decision(
                RETIRE,
                f"it has been the challenger for {hours:.0f} h, more than "
                f"ML_CHALLENGER_MAX_HOURS = {rules.max_hours:g}, with {counted}",
                rows,
                needed,
            )
        return Decision(WAITING, counted, rows, needed)

    new_losses = log_losses(paired.challenger, paired.outcome)
    old_losses = log_losses(paired.production, paired.outcome)
    verdict = paired_interval(new_losses - old_losses)
    margin = rules.margin
    numbers = (
        f"on the {rows} realised candles both versions predicted: log loss "
        f"{float(new_losses.mean()):.4f} vs production version {production_version}'s "
        f"{float(old_losses.mean()):.4f}, per-row difference {verdict.words()}; these rows "
        f"detect an edge of {verdict.detectable_edge():.4f} nats or more (80 % power); "
        f"ML_PROMOTION_MARGIN {margin:g}"
    )
    decided = Decision(
        PROMOTE,
        "",
        rows,
        needed,
        verdict=verdict,
        last_candle_ms=int(paired.candle_time[-1]),
        challenger_log_loss=float(new_losses.mean()),
        production_log_loss=float(old_losses.mean()),
    )
    if weaker(challenger_proof, production_proof):
        return _with(
            decided,
            RETIRE,
            f"its proof is weaker than production's ({challenger_proof} against "
            f"{production_proof}): an unproven version never replaces a proven one; {numbers}",
        )
    if verdict.worse(-margin):
        return _with(decided, RETIRE, f"significantly worse than production {numbers}")
    return _with(decided, PROMOTE, f"not worse than production {numbers}")


def _with(decision: Decision, action: Action, reason: str) -> Decision:
    return replace(decision, action=action, reason=reason)
