"""The offline gate's decision: may a registered version become production, or the challenger?

`decide` is a pure function of what the gate gathered (`GateInputs`: the versions, their proof,
their horizons, the per-row loss differences on the rows neither learnt, the settings) and
answers one of three outcomes with one sentence why. In order:

1. `force`: production (the operator's decision);
2. the version is production already: production (nothing changes);
3. the version could not be scored on its own test window (bundle, feature set, window,
   prediction): rejected, since a version is never promoted unscored;
4. no production version yet: production;
5. production cannot be downloaded, checked or scored by this code: production (a version this
   code cannot score cannot be served either);
6. a horizon other than production's: rejected (losses on different targets do not compare);
7. weaker proof than production's (unproven against proven): rejected, whatever the rows say;
8. fewer than `ML_GATE_MIN_ROWS` rows unseen by both versions: rejected;
9. the paired interval (`paired_interval`) of the per-row differences, challenger minus
   production, with m = `ML_PROMOTION_MARGIN`: rejected when the whole interval lies above -m
   (non-inferiority at m = 0: only a significantly worse challenger is rejected; m > 0 asks that
   an improvement of m lie within the interval; m < 0 tolerates up to |m| worse); otherwise it
   passes, and becomes the challenger with `ML_PROMOTION=shadow` (live candles decide) or
   production with `ML_PROMOTION=offline`. The reason states the edge the comparison can detect
   at the rows it has.

Rows compared are those after the newest candle whose label either version learnt
(`unseen_rows`): a row at or before a model's `fit_end` cannot prove it better.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from pipelines.lifecycle.intervals import POWER, PairedVerdict, paired_interval
from pipelines.lifecycle.proof import UNPROVEN, Proof, weaker

Outcome = Literal["production", "challenger", "rejected"]
PRODUCTION: Outcome = "production"
CHALLENGER: Outcome = "challenger"
REJECTED: Outcome = "rejected"
Loss = Literal["log_loss", "brier"]
_UNITS = {"log_loss": "nats", "brier": "in Brier score"}


@dataclass(frozen=True)
class GateInputs:
    """What the gate gathered about one version (the challenger) and production.

    Attributes:
        version: the version being gated.
        production: the version behind the `production` alias, None if there is none.
        challenger_proof, production_proof: their proof status (`pipelines.lifecycle.proof`);
            production's is None when its bundle could not be read.
        challenger_problem: why the version could not be scored on its own test window
            (None: it was).
        production_problem: why production could not be downloaded, checked or scored (None:
            it was, or there is none).
        differences: per-row loss, challenger minus production, on the rows unseen by both, in
            time order (empty when there are none or they were not scored).
        window_rows: rows of the challenger's test window, before any was left out.
        seen_until: the newest candle whose label either version learnt.
        min_rows, margin, mode, loss: `ML_GATE_MIN_ROWS`, `ML_PROMOTION_MARGIN`, `ML_PROMOTION`,
            and the per-row loss of `differences`.
    """

    version: str
    production: str | None
    challenger_proof: Proof
    production_proof: Proof | None = None
    force: bool = False
    challenger_problem: str | None = None
    production_problem: str | None = None
    challenger_horizon: int = 1
    production_horizon: int | None = None
    differences: np.ndarray | None = None
    window_rows: int = 0
    seen_until: pd.Timestamp | None = None
    min_rows: int = 100
    margin: float = 0.0
    mode: Literal["shadow", "offline"] = "shadow"
    loss: Loss = "log_loss"

    @property
    def rows(self) -> int:
        """Rows unseen by both versions that were scored."""
        return 0 if self.differences is None else int(np.asarray(self.differences).size)


@dataclass(frozen=True)
class GateOutcome:
    """What to do with the version, why, and the comparison behind it (if one was made)."""

    outcome: Outcome
    reason: str
    verdict: PairedVerdict | None = None
    rows: int | None = None  # rows unseen by both versions, once counted

    @property
    def passed(self) -> bool:
        return self.outcome != REJECTED


def unseen_rows(
    timestamps: pd.DatetimeIndex, *, learnt_through: Iterable[pd.Timestamp | None]
) -> pd.DatetimeIndex:
    """The rows after every `learnt_through` (each model's `fit_end`, None: unknown).

    No label a model learnt reaches a later row (a label of the model ending at `fit_end` ends
    at `fit_end` at the latest); their input windows may hold candles it learnt, as every live
    prediction's does.
    """
    known = [pd.Timestamp(moment) for moment in learnt_through if moment is not None]
    if not known:
        return pd.DatetimeIndex(timestamps)
    return pd.DatetimeIndex(timestamps[timestamps > max(known)])


def decide(inputs: GateInputs) -> GateOutcome:
    """The gate's answer for one version (the rules are in the module docstring)."""
    current = inputs.production
    if inputs.force:
        return GateOutcome(PRODUCTION, "promoted by the operator (--force)")
    if current is not None and current == inputs.version:
        return GateOutcome(PRODUCTION, "already the production version")
    if inputs.challenger_problem is not None:
        return GateOutcome(
            REJECTED, f"{inputs.challenger_problem}, and an unscored version is never promoted"
        )
    if current is None:
        return GateOutcome(PRODUCTION, "no production version yet")
    if inputs.production_problem is not None:
        return GateOutcome(
            PRODUCTION,
            f"production version {current} cannot be scored by this code "
            f"({inputs.production_problem}), so it cannot be served either; this version was "
            "scored on its own test window",
        )
    if inputs.production_horizon is not None and (
        inputs.production_horizon != inputs.challenger_horizon
    ):
        return GateOutcome(
            REJECTED,
            f"its horizon ({inputs.challenger_horizon} candles ahead) differs from production "
            f"version {current}'s ({inputs.production_horizon} candles ahead): losses on "
            "different targets are not comparable",
        )
    if inputs.production_proof is not None and weaker(
        inputs.challenger_proof, inputs.production_proof
    ):
        return GateOutcome(
            REJECTED,
            f"its proof is weaker than production version {current}'s: it is {UNPROVEN} (it "
            f"does not beat its strongest baseline) and production is {inputs.production_proof}"
            ", so it never replaces it, whatever the rows say",
            rows=None if inputs.differences is None else inputs.rows,
        )
    rows = inputs.rows
    if rows < inputs.min_rows:
        after = "" if inputs.seen_until is None else f" (after {_when(inputs.seen_until)})"
        return GateOutcome(
            REJECTED,
            f"only {rows} of the {inputs.window_rows} rows of its test window are unseen by "
            f"both versions{after}, fewer than ML_GATE_MIN_ROWS = {inputs.min_rows}: too few to "
            "compare them",
            rows=rows,
        )
    return _compare(inputs, current, np.asarray(inputs.differences, dtype=np.float64))


def _compare(inputs: GateInputs, current: str, differences: np.ndarray) -> GateOutcome:
    verdict = paired_interval(differences)
    margin = inputs.margin
    threshold = 0.0 - margin  # reads "+0" for the default margin, not "-0"
    rejected = verdict.worse(-margin)
    if rejected:
        words = f"worse than production version {current} (the whole interval lies above "
        words += f"{threshold:+g})"
    else:
        words = f"not significantly worse than production version {current} (the interval "
        words += f"reaches {threshold:+g} or below)"
    edge = verdict.detectable_edge()
    left_out = inputs.window_rows - verdict.rows
    note = f", {left_out} rows a version learnt left out" if left_out > 0 else ""
    reason = (
        f"{words} on the same {verdict.rows} rows unseen by both versions{note}: per-row "
        f"{inputs.loss} difference (this - production) {verdict.words()}; ML_PROMOTION_MARGIN "
        f"{margin:g}; at {verdict.rows} rows this comparison detects a difference of "
        f"{edge:.4f} {_UNITS[inputs.loss]} with {POWER * 100:g} % power"
    )
    if rejected:
        return GateOutcome(REJECTED, reason, verdict, verdict.rows)
    if inputs.mode == "shadow":
        reason += (
            f"; admitted as the challenger (ML_PROMOTION=shadow): production version {current} "
            "keeps serving until live candles decide"
        )
        return GateOutcome(CHALLENGER, reason, verdict, verdict.rows)
    return GateOutcome(PRODUCTION, reason, verdict, verdict.rows)


def _when(moment: pd.Timestamp) -> str:
    return pd.Timestamp(moment).strftime("%Y-%m-%dT%H:%MZ")
