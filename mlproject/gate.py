"""The promotion gate's chore: score a version and production, ask the decision, apply it.

The rule is `pipelines.lifecycle.gate.decide` (a pure function; its docstring lists the cases in
order). This module does what needs MLflow and the bundles:

- download the version's bundle (with `force`, one that does not load is an error: nothing
  unloadable becomes production) and score it through ONNX on its own test window (the
  `test_window` of its metadata; a refit's is the newest rows it held out and never learnt).
  Rows whose close did not move over the horizon (ties) are neither up nor down and are dropped;
- download production's bundle, check it as the service checks it before serving, and score it
  on the rows of that window after both versions' `fit_end` (the newest candle whose label each
  learnt), so no row either learnt is compared;
- hand the per-row loss differences (challenger minus production: Brier's when
  `ML_PROMOTION_METRIC` is brier, log loss for every other metric, which has no per-row form),
  both proof statuses, horizons and settings to `decide`;
- apply the answer through `pipelines.lifecycle.registry`: the `production` alias, or the
  `challenger` alias with `ML_PROMOTION=shadow`, and the version's tags: the outcome, the reason,
  `tbml.unproven` for a passed version, and the comparison's numbers (`GATE_TAGS`; an earlier
  gating's are removed when this one has none). A rejected version stays registered.

The reason is the decision's, followed by the promotion metric's values on the compared rows
(where compared) and whether the version beats its strongest baseline.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from mlproject.metrics import LOWER_IS_BETTER, classification_metrics
from mlproject.scoring import WindowScore, score_bundle
from pipelines.features.spec import FeatureSpecMismatchError, ensure_compatible
from pipelines.lifecycle.gate import (
    CHALLENGER,
    PRODUCTION,
    REJECTED,
    GateInputs,
    GateOutcome,
    Loss,
    decide,
    unseen_rows,
)
from pipelines.lifecycle.intervals import PairedVerdict
from pipelines.lifecycle.proof import PROVEN, UNPROVEN, Proof, proof_of
from pipelines.lifecycle.registry import set_challenger, set_production, tag_version
from pipelines.lifecycle.scores import brier_losses, log_losses
from pipelines.modelbundle import BundleError, ModelBundle, download_bundle
from pipelines.redact import describe_error
from pipelines.settings import Settings
from pipelines.tracking import (
    CHALLENGER_ALIAS,
    GATE_TAGS,
    PRODUCTION_ALIAS,
    TAG_GATE_DELTA_HIGH,
    TAG_GATE_DELTA_LOW,
    TAG_GATE_DELTA_MEAN,
    TAG_GATE_LAG,
    TAG_GATE_METRIC,
    TAG_GATE_ROWS,
    TAG_PROMOTION,
    TAG_PROMOTION_REASON,
    TAG_UNPROVEN,
    production_version,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided for a version, and the numbers behind it.

    `challenger` and `incumbent` are both versions' `metric` on the compared rows; `verdict` is
    the paired interval of their per-row `verdict_metric` differences (challenger - incumbent);
    `rows` is the number of rows unseen by both, None where the gate did not count them.
    """

    promoted: bool
    reason: str
    metric: str
    challenger: float | None = None
    incumbent: float | None = None
    incumbent_version: str | None = None
    rows: int | None = None
    unproven: bool = False
    verdict: PairedVerdict | None = None
    verdict_metric: str | None = None
    # Where a passed version goes: the `production` alias, or `challenger` (ML_PROMOTION=shadow,
    # after a comparison with a production version that serves: live candles then decide).
    alias: str = PRODUCTION_ALIAS

    @property
    def outcome(self) -> str:
        """rejected, promoted (production), or challenger."""
        if not self.promoted:
            return "rejected"
        return "challenger" if self.alias == CHALLENGER_ALIAS else "promoted"


@dataclass(frozen=True)
class _Gathered:
    """The decision's inputs, and what the tags and reason add to its answer."""

    inputs: GateInputs
    note: str  # whether the version beats its strongest baseline
    new: WindowScore | None = None  # both versions' scores on the compared rows
    old: WindowScore | None = None


def apply_gate(
    client: MlflowClient,
    *,
    name: str,
    version: str,
    candles: pd.DataFrame,
    settings: Settings,
    force: bool = False,
) -> GateDecision:
    """Decide whether `version` becomes production (or the challenger), act on it, tag it."""
    # A version that does not exist is an error, not a rejection (there is nothing to tag).
    client.get_model_version(name, version)
    with tempfile.TemporaryDirectory(prefix="tbml-gate-") as tmp:
        gathered = _gather(
            client,
            name=name,
            version=version,
            candles=candles,
            settings=settings,
            workdir=Path(tmp),
            force=force,
        )
    answer = decide(gathered.inputs)
    decision = _decision(answer, gathered, metric=settings.promotion_metric)
    if answer.outcome == CHALLENGER:
        replaced = set_challenger(
            client, name=name, version=version, now_ms=int(time.time() * 1000)
        )
        if replaced is not None:
            reason = f"{decision.reason}; it replaces challenger version {replaced}"
            decision = replace(decision, reason=reason)
    elif answer.outcome == PRODUCTION:
        set_production(client, name=name, version=version)
    tags = {TAG_PROMOTION: decision.outcome, TAG_PROMOTION_REASON: decision.reason}
    if decision.promoted:
        tags[TAG_UNPROVEN] = str(decision.unproven).lower()
    tags |= gate_tags(decision)
    # An earlier gating's numbers are removed when this one has none.
    tag_version(client, name=name, version=version, tags=tags, drop=GATE_TAGS)
    logger.info("%s version %s %s: %s", name, version, decision.outcome, decision.reason)
    return decision


def gate_tags(decision: GateDecision) -> dict[str, str]:
    """The `GATE_TAGS` of a decision: the row count once counted, the interval if any."""
    tags = {} if decision.rows is None else {TAG_GATE_ROWS: str(decision.rows)}
    verdict = decision.verdict
    if verdict is not None:
        tags |= {
            TAG_GATE_METRIC: str(decision.verdict_metric),
            TAG_GATE_DELTA_MEAN: f"{verdict.mean:.6f}",
            TAG_GATE_DELTA_LOW: f"{verdict.low:.6f}",
            TAG_GATE_DELTA_HIGH: f"{verdict.high:.6f}",
            TAG_GATE_LAG: str(verdict.lag),
        }
    return tags


def judge(
    *,
    version: str,
    challenger: ModelBundle,
    production: tuple[str, ModelBundle] | None,
    candles: pd.DataFrame,
    settings: Settings,
) -> GateDecision:
    """The gate's decision for bundles already loaded, applying nothing: what `apply_gate` would
    decide for `challenger` (registered as `version`) against `production` (its version and
    bundle; None without one). `tbml backtest` gates its in-memory versions with it."""
    current = None if production is None else production[0]
    inputs = _inputs(version=version, current=current, settings=settings, force=False)
    gathered = _score(
        inputs,
        challenger,
        incumbent=None if production is None else (lambda: production[1]),
        candles=candles,
        metric=settings.promotion_metric,
        label=f"version {version}",
    )
    return _decision(decide(gathered.inputs), gathered, metric=settings.promotion_metric)


def _inputs(*, version: str, current: str | None, settings: Settings, force: bool) -> GateInputs:
    loss: Loss = "brier" if settings.promotion_metric == "brier" else "log_loss"
    return GateInputs(
        version=version,
        production=current,
        challenger_proof=UNPROVEN,
        force=force,
        min_rows=settings.gate_min_rows,
        margin=settings.promotion_margin,
        mode=settings.promotion_mode,
        loss=loss,
    )


def _gather(
    client: MlflowClient,
    *,
    name: str,
    version: str,
    candles: pd.DataFrame,
    settings: Settings,
    workdir: Path,
    force: bool,
) -> _Gathered:
    """Everything `decide` reads: both bundles scored where they can be, and the settings."""
    current = production_version(client, name=name)
    inputs = _inputs(version=version, current=current, settings=settings, force=force)
    try:
        challenger = download_bundle(client, name=name, version=version, dst=workdir / "new")
    except Exception as exc:
        if force:
            raise  # the operator is told, and nothing unloadable becomes production
        problem = f"its bundle cannot be downloaded or loaded ({describe_error(exc)})"
        return _Gathered(replace(inputs, challenger_problem=problem), note="")

    def incumbent() -> ModelBundle:
        assert current is not None
        return _load_incumbent(client, name=name, version=current, dst=workdir / "current")

    return _score(
        inputs,
        challenger,
        incumbent=incumbent,
        candles=candles,
        metric=settings.promotion_metric,
        label=f"{name} version {version}",
    )


def _score(
    inputs: GateInputs,
    challenger: ModelBundle,
    *,
    incumbent: Callable[[], ModelBundle] | None,
    candles: pd.DataFrame,
    metric: str,
    label: str,
) -> _Gathered:
    """Both bundles scored where they can be: the challenger on its own test window, production
    (loaded by `incumbent`, None without one) on the rows of it unseen by both."""
    current = inputs.production
    proof = proof_of(challenger.metadata)
    note = _baseline_note(challenger, metric, proof)
    inputs = replace(inputs, challenger_proof=proof, challenger_horizon=challenger.horizon)
    try:
        ensure_compatible(challenger.spec)
    except FeatureSpecMismatchError as exc:
        problem = f"its feature set is not the one this code computes and serves ({exc})"
        return _Gathered(replace(inputs, challenger_problem=problem), note=note)
    try:
        own = _score_own_window(challenger, candles)
    except Exception as exc:
        logger.warning("%s cannot be scored", label, exc_info=True)
        problem = f"it cannot be scored on its own test window ({describe_error(exc)})"
        return _Gathered(replace(inputs, challenger_problem=problem), note=note)
    inputs = replace(inputs, window_rows=len(own.timestamps))
    if current is None or incumbent is None:
        return _Gathered(inputs, note=note)
    try:
        old_bundle = incumbent()
    except Exception as exc:
        logger.warning("production version %s cannot be scored", current, exc_info=exc)
        return _Gathered(replace(inputs, production_problem=describe_error(exc)), note=note)
    learnt = (_fit_end(challenger), _fit_end(old_bundle))
    rows = unseen_rows(own.timestamps, learnt_through=learnt)
    inputs = replace(
        inputs,
        production_proof=proof_of(old_bundle.metadata),
        production_horizon=old_bundle.horizon,
        seen_until=max((t for t in learnt if t is not None), default=None),
        differences=np.empty(0),
    )
    if rows.empty or old_bundle.horizon != challenger.horizon:
        return _Gathered(inputs, note=note)
    try:
        old = score_bundle(old_bundle, candles=candles, timestamps=rows, horizon=old_bundle.horizon)
    except Exception as exc:
        logger.warning("production version %s cannot be scored", current, exc_info=exc)
        return _Gathered(replace(inputs, production_problem=describe_error(exc)), note=note)
    new = _subset(own, rows)
    differences = _row_losses(inputs.loss, new) - _row_losses(inputs.loss, old)
    return _Gathered(replace(inputs, differences=differences), note=note, new=new, old=old)


def _decision(answer: GateOutcome, gathered: _Gathered, *, metric: str) -> GateDecision:
    """The applied record of `answer`: its reason with the metric's values and the proof note."""
    inputs = gathered.inputs
    parts = [answer.reason]
    new_value = old_value = None
    if answer.verdict is not None and gathered.new is not None and gathered.old is not None:
        new, old = gathered.new, gathered.old
        new_value = classification_metrics(y_true=new.y, proba=new.proba)[metric]
        old_value = classification_metrics(y_true=old.y, proba=old.proba)[metric]
        direction = "lower" if metric in LOWER_IS_BETTER else "higher"
        parts.append(f"{metric} {new_value:.4f} vs {old_value:.4f} ({direction} is better)")
    if gathered.note:
        parts.append(gathered.note)
    passed = answer.outcome != REJECTED
    return GateDecision(
        promoted=passed,
        reason="; ".join(parts),
        metric=metric,
        challenger=new_value,
        incumbent=old_value,
        incumbent_version=inputs.production if inputs.production != inputs.version else None,
        rows=answer.rows,
        unproven=passed and inputs.challenger_proof == UNPROVEN,
        verdict=answer.verdict,
        verdict_metric=inputs.loss if answer.verdict is not None else None,
        alias=CHALLENGER_ALIAS if answer.outcome == CHALLENGER else PRODUCTION_ALIAS,
    )


def _score_own_window(bundle: ModelBundle, candles: pd.DataFrame) -> WindowScore:
    """The version's predictions on its whole test window, rebuilt from the candles, ties
    (an unchanged close over the horizon) dropped."""
    window = bundle.metadata.get("test_window")
    if not isinstance(window, dict):
        raise BundleError(f"its metadata has no test window (test_window is {window!r})")
    start, end = _utc(window["start"]), _utc(window["end"])
    timestamps = pd.DatetimeIndex(candles.index[(candles.index >= start) & (candles.index <= end)])
    if len(timestamps) != int(window["rows"]):
        raise BundleError(
            f"the candles hold {len(timestamps)} rows of its test window {start} .. {end}, "
            f"it was tested on {window['rows']}"
        )
    decided = _not_ties(candles, timestamps, horizon=bundle.horizon)
    return score_bundle(bundle, candles=candles, timestamps=decided, horizon=bundle.horizon)


def _not_ties(
    candles: pd.DataFrame, timestamps: pd.DatetimeIndex, *, horizon: int
) -> pd.DatetimeIndex:
    """`timestamps` less those whose close `horizon` candles later is the same (a tie)."""
    close = candles["close"].to_numpy(dtype=np.float64)
    positions = candles.index.get_indexer(timestamps)
    ahead = np.minimum(positions + horizon, len(close) - 1)
    known = positions + horizon < len(close)
    tie = known & (close[ahead] == close[positions])
    return pd.DatetimeIndex(timestamps[~tie])


def _fit_end(bundle: ModelBundle) -> pd.Timestamp | None:
    """The newest candle whose label the bundle's model learnt (None: unknown)."""
    value = bundle.metadata.get("fit_end")
    return None if value is None else _utc(value)


def _load_incumbent(client: MlflowClient, *, name: str, version: str, dst: Path) -> ModelBundle:
    """Production's bundle, checked as the service checks it before serving."""
    bundle = download_bundle(client, name=name, version=version, dst=dst)
    ensure_compatible(bundle.spec)
    zeros = np.zeros((1, bundle.sequence_length, len(bundle.spec.names)), dtype=np.float32)
    probability = bundle.predict_proba(zeros, scaled=True)
    if probability.shape != (1,) or not np.isfinite(probability).all():
        raise BundleError(f"its warm-up prediction gave {probability!r}")
    return bundle


def _subset(score: WindowScore, timestamps: pd.DatetimeIndex) -> WindowScore:
    positions = score.timestamps.get_indexer(timestamps)
    return WindowScore(timestamps=timestamps, y=score.y[positions], proba=score.proba[positions])


def _row_losses(loss: Loss, score: WindowScore) -> np.ndarray:
    """Per-row log loss, or per-row Brier score: the losses whose means the metrics are."""
    if loss == "brier":
        return brier_losses(score.proba, score.y)
    return log_losses(score.proba, score.y)


def _utc(value: object) -> pd.Timestamp:
    stamp = pd.Timestamp(value)  # type: ignore[arg-type]
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp


def _baseline_note(bundle: ModelBundle, metric: str, proof: Proof) -> str:
    test = bundle.metadata.get("test_metrics", {})
    strongest = bundle.metadata.get("strongest_baseline", "?")
    base = bundle.metadata.get("baseline_metrics", {}).get(strongest, {})
    numbers = f"{metric} {_number(test.get(metric))} vs {strongest} {_number(base.get(metric))}"
    if proof == PROVEN:
        return f"beats its strongest baseline ({numbers})"
    return (
        f"does not beat its strongest baseline ({numbers}): unproven, served as HOLD unless "
        "ML_SERVE_UNPROVEN is set"
    )


def _number(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"
