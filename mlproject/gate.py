"""The promotion gate: whether a registered version (the challenger) may become production.

Passing it is admission, not yet promotion, with `ML_PROMOTION=shadow` (the default): a version
that passed a comparison with a production version that serves gets the alias `challenger`, and
live candles decide (`service.challenger`). The first version, a forced one, and one that
replaces a production version this code cannot score become production at once, as every
passed version does with `ML_PROMOTION=offline`.

The comparison. The challenger and the production version (the incumbent) are scored through
their ONNX bundles on the same rows and labels: the rows of the challenger's own held-out test
window (the newest) less those at or before the incumbent's `fit_end` (the last candle of a
label it learnt: a later row's outcome is new to it, as a live candle's is).
The verdict is a paired moving-block bootstrap (`pipelines.verdicts.paired_block_bootstrap`,
95 %, blocks of one day of candles) of the per-row loss differences, challenger minus
incumbent: the Brier score's when `ML_PROMOTION_METRIC` is brier, log loss for every other
metric (ROC AUC and the accuracies have no per-row form; their point estimates go in the reason,
the decision is the log-loss verdict). With m = `ML_PROMOTION_MARGIN` (in the verdict's units):

    rejected  when the whole interval lies above -m   (`verdict.worse(-m)`: low > -m)
    promoted  otherwise                               (low <= -m)

m = 0 (the default) is non-inferiority: a challenger is rejected only when it is significantly
worse, and a difference the rows cannot tell from noise promotes it, the newer version. m > 0
asks for an improvement of m to lie within the interval; m < 0 tolerates up to |m| worse. The
interval, its mean and the row count go in the version's tags (`TAG_GATE_*`) and the reason.

A refit challenger (metadata `refit`: its model learnt every candle through its `fit_end`, its
test window included) is compared through the predictions that justified it: those of its
run's held-out model on the same window (`verdict/predictions.csv`), after its bundle has been
scored there (it must load and predict). Rows are left out symmetrically: those at or before
the scored challenger model's last learnt candle (`held_out_fit_end` of a refit, `fit_end`
otherwise) or the incumbent's (its `fit_end`); a refit incumbent has learnt through its newest
candle, so only candles newer than that can be compared.

Rejected without a comparison, the reason saying why: anything that fails on the challenger's
side (its bundle does not load, its feature set is not the one this code computes and serves,
its test window is not in the candles, it does not predict on that window: a version is never
promoted unscored); a horizon other than the incumbent's; fewer than `ML_GATE_MIN_ROWS` rows
unseen by both versions (the gate never falls back to rows the incumbent learnt from).

Promoted without a comparison: with `force` (the operator's decision); with no production
version yet; and when the incumbent cannot be downloaded, checked as the service checks it before
serving, or scored by this code, after the challenger was scored on its own window: a production
version this code cannot score cannot be served either. A promoted version that does not beat
its strongest baseline is tagged unproven, and the service answers HOLD for it unless
`ML_SERVE_UNPROVEN` is set. A rejected version stays registered, tagged with the reason.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from mlproject.metrics import LOWER_IS_BETTER, classification_metrics
from mlproject.scoring import MODEL, WindowScore, score_bundle
from mlproject.trading import periods_per_year
from mlproject.verdict import OUTCOME, PREDICTIONS_ARTIFACT, TIMESTAMP
from pipelines.features.spec import FeatureSpecMismatchError, ensure_compatible
from pipelines.lifecycle.registry import set_challenger, set_production
from pipelines.modelbundle import BundleError, ModelBundle, download_bundle
from pipelines.redact import describe_error
from pipelines.settings import Settings
from pipelines.tracking import (
    CHALLENGER_ALIAS,
    PRODUCTION_ALIAS,
    TAG_PROMOTION,
    TAG_PROMOTION_REASON,
    TAG_UNPROVEN,
    production_version,
)
from pipelines.verdicts import PairedVerdict, log_losses, paired_block_bootstrap

logger = logging.getLogger(__name__)

# The gate's verdict on a version (written by every gating, removed when a later one has none).
TAG_GATE_ROWS = "tbml.gate_rows"  # rows compared, unseen by both versions
TAG_GATE_METRIC = "tbml.gate_metric"  # the per-row loss of the verdict: log_loss | brier
TAG_GATE_DELTA_MEAN = "tbml.gate_delta_mean"  # mean per-row loss, this version - production
TAG_GATE_DELTA_LOW = "tbml.gate_delta_low"  # 95 % paired block bootstrap interval
TAG_GATE_DELTA_HIGH = "tbml.gate_delta_high"
TAG_GATE_BLOCK = "tbml.gate_block"  # block length in rows
GATE_TAGS = (
    TAG_GATE_ROWS,
    TAG_GATE_METRIC,
    TAG_GATE_DELTA_MEAN,
    TAG_GATE_DELTA_LOW,
    TAG_GATE_DELTA_HIGH,
    TAG_GATE_BLOCK,
)


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided for a version, and the numbers behind it.

    `challenger` and `incumbent` are both versions' `metric` on the compared rows; `verdict` is
    the paired bootstrap of their per-row `verdict_metric` differences (challenger - incumbent);
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


def apply_gate(
    client: MlflowClient,
    *,
    name: str,
    version: str,
    candles: pd.DataFrame,
    settings: Settings,
    force: bool = False,
) -> GateDecision:
    """Decide whether `version` becomes production, act on it, and tag the version."""
    # A version that does not exist is an error, not a rejection (there is nothing to tag).
    existing = dict(client.get_model_version(name, version).tags)
    with tempfile.TemporaryDirectory(prefix="tbml-gate-") as tmp:
        try:
            challenger = download_bundle(client, name=name, version=version, dst=Path(tmp) / "new")
        except Exception as exc:
            if force:
                raise  # the operator is told, and nothing unloadable becomes production
            decision = GateDecision(
                False,
                f"its bundle cannot be downloaded or loaded ({describe_error(exc)}), and an "
                "unscored version is never promoted",
                settings.promotion_metric,
            )
        else:
            decision = _decide(
                client,
                name=name,
                version=version,
                challenger=challenger,
                candles=candles,
                settings=settings,
                workdir=Path(tmp),
                force=force,
            )
    if decision.promoted and decision.verdict is not None and settings.promotion_mode == "shadow":
        decision = replace(
            decision,
            alias=CHALLENGER_ALIAS,
            reason=f"{decision.reason}; admitted as the challenger (ML_PROMOTION=shadow): "
            f"production version {decision.incumbent_version} keeps serving until live "
            "candles decide",
        )
    if decision.alias == CHALLENGER_ALIAS:
        replaced = set_challenger(
            client, name=name, version=version, now_ms=int(time.time() * 1000)
        )
        if replaced is not None:
            decision = replace(
                decision, reason=f"{decision.reason}; it replaces challenger version {replaced}"
            )
    elif decision.promoted:
        set_production(client, name=name, version=version)
    tags = {TAG_PROMOTION: decision.outcome, TAG_PROMOTION_REASON: decision.reason}
    if decision.promoted:
        tags[TAG_UNPROVEN] = str(decision.unproven).lower()
    tags |= gate_tags(decision)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    for key in GATE_TAGS:
        if key in existing and key not in tags:  # an earlier gating's numbers, now stale
            client.delete_model_version_tag(name, version, key)
    logger.info("%s version %s %s: %s", name, version, decision.outcome, decision.reason)
    return decision


def gate_tags(decision: GateDecision) -> dict[str, str]:
    """The `TAG_GATE_*` tags of a decision: the row count once counted, the verdict if any."""
    tags = {} if decision.rows is None else {TAG_GATE_ROWS: str(decision.rows)}
    verdict = decision.verdict
    if verdict is not None:
        tags |= {
            TAG_GATE_METRIC: str(decision.verdict_metric),
            TAG_GATE_DELTA_MEAN: f"{verdict.mean:.6f}",
            TAG_GATE_DELTA_LOW: f"{verdict.low:.6f}",
            TAG_GATE_DELTA_HIGH: f"{verdict.high:.6f}",
            TAG_GATE_BLOCK: str(verdict.block),
        }
    return tags


def _decide(
    client: MlflowClient,
    *,
    name: str,
    version: str,
    challenger: ModelBundle,
    candles: pd.DataFrame,
    settings: Settings,
    workdir: Path,
    force: bool,
) -> GateDecision:
    metric = settings.promotion_metric
    unproven = not challenger.beats_baseline
    proof = _baseline_note(challenger, metric)
    if force:
        return GateDecision(
            True, f"promoted by the operator (--force); {proof}", metric, unproven=unproven
        )
    current = production_version(client, name=name)
    if current == version:
        return GateDecision(
            True, f"already the production version; {proof}", metric, unproven=unproven
        )
    if current is None:
        return GateDecision(True, f"no production version yet; {proof}", metric, unproven=unproven)
    rejected = GateDecision(False, "", metric, incumbent_version=current)

    # The challenger's side first: whatever fails here rejects it.
    try:
        ensure_compatible(challenger.spec)
    except FeatureSpecMismatchError as exc:
        return replace(
            rejected,
            reason=f"its feature set is not the one this code computes and serves ({exc}); {proof}",
        )
    try:
        own = _score_own_window(challenger, candles)
        if challenger.metadata.get("refit"):
            own = _held_out_score(client, name=name, version=version, own=own)
    except Exception as exc:
        logger.warning("%s version %s cannot be scored", name, version, exc_info=True)
        return replace(
            rejected,
            reason=f"it cannot be scored on its own test window ({describe_error(exc)}), and an "
            f"unscored version is never promoted; {proof}",
        )

    try:
        incumbent, seen_until = _load_incumbent(
            client, name=name, version=current, dst=workdir / "current"
        )
    except Exception as exc:
        return _replaces_unservable(current, exc, metric=metric, proof=proof, unproven=unproven)
    if incumbent.horizon != challenger.horizon:
        return replace(
            rejected,
            reason=f"its horizon ({challenger.horizon} candles ahead) differs from production "
            f"version {current}'s ({incumbent.horizon} candles ahead): losses on different "
            f"targets are not comparable; {proof}",
        )
    # Rows the scored challenger model learnt from cannot prove it better, as for production.
    candidates = _unseen_rows(own.timestamps, seen_until=_scored_fit_end(challenger))
    rows = _unseen_rows(candidates, seen_until=seen_until)
    left_out = len(own.timestamps) - len(rows)
    if len(rows) < settings.gate_min_rows:
        trained = f", production version {current} trained until {seen_until}" if left_out else ""
        return replace(
            rejected,
            rows=len(rows),
            reason=f"only {len(rows)} of the {len(own.timestamps)} rows of its test window are "
            f"unseen by both versions{trained}, fewer than ML_GATE_MIN_ROWS = "
            f"{settings.gate_min_rows}: too few to compare them; {proof}",
        )
    try:
        old = score_bundle(incumbent, candles=candles, timestamps=rows, horizon=incumbent.horizon)
    except Exception as exc:
        return _replaces_unservable(current, exc, metric=metric, proof=proof, unproven=unproven)
    new = _subset(own, rows)

    verdict_metric = "brier" if metric == "brier" else "log_loss"
    differences = _row_losses(verdict_metric, new) - _row_losses(verdict_metric, old)
    verdict = paired_block_bootstrap(differences, block=_rows_per_day(settings.timeframe))
    margin = settings.promotion_margin
    promoted = not verdict.worse(-margin)
    new_value = classification_metrics(y_true=new.y, proba=new.proba)[metric]
    old_value = classification_metrics(y_true=old.y, proba=old.proba)[metric]
    threshold = 0.0 - margin  # reads "+0" for the default margin, not "-0"
    if promoted:
        outcome = f"not significantly worse than production version {current} (the interval "
        outcome += f"reaches {threshold:+g} or below)"
    else:
        outcome = f"worse than production version {current} (the whole interval lies above "
        outcome += f"{threshold:+g})"
    note = f", {left_out} rows the production version trained on left out" if left_out else ""
    direction = "lower" if metric in LOWER_IS_BETTER else "higher"
    reason = (
        f"{outcome} on the same {len(rows)} newest held-out rows{note}: per-row {verdict_metric} "
        f"difference (this - production) {verdict.mean:+.4f}, 95 % interval "
        f"[{verdict.low:+.4f}, {verdict.high:+.4f}] (paired moving-block bootstrap, blocks of "
        f"{verdict.block} rows; ML_PROMOTION_MARGIN {margin:g}); {metric} {new_value:.4f} vs "
        f"{old_value:.4f} ({direction} is better); {proof}"
    )
    return GateDecision(
        promoted,
        reason,
        metric,
        challenger=new_value,
        incumbent=old_value,
        incumbent_version=current,
        rows=len(rows),
        unproven=unproven and promoted,
        verdict=verdict,
        verdict_metric=verdict_metric,
    )


def _score_own_window(challenger: ModelBundle, candles: pd.DataFrame) -> WindowScore:
    """The challenger's predictions on its whole test window, rebuilt from the candles."""
    window = challenger.metadata.get("test_window")
    if not isinstance(window, dict):
        raise BundleError(f"its metadata has no test window (test_window is {window!r})")
    start, end = _utc(window["start"]), _utc(window["end"])
    timestamps = pd.DatetimeIndex(candles.index[(candles.index >= start) & (candles.index <= end)])
    if len(timestamps) != int(window["rows"]):
        raise BundleError(
            f"the candles hold {len(timestamps)} rows of its test window {start} .. {end}, "
            f"it was tested on {window['rows']}"
        )
    return score_bundle(
        challenger, candles=candles, timestamps=timestamps, horizon=challenger.horizon
    )


def _held_out_score(
    client: MlflowClient, *, name: str, version: str, own: WindowScore
) -> WindowScore:
    """A refit challenger's scores: its held-out model's probabilities on the same rows."""
    run_id = client.get_model_version(name, version).run_id
    if not run_id:
        raise BundleError("it is a refit, and its version names no run holding its held-out scores")
    with tempfile.TemporaryDirectory(prefix="tbml-gate-held-out-") as tmp:
        frame = pd.read_csv(client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, tmp))
    stamps = pd.DatetimeIndex(pd.to_datetime(frame[TIMESTAMP], utc=True))
    positions = stamps.get_indexer(own.timestamps)
    if (positions < 0).any() or not np.array_equal(frame[OUTCOME].to_numpy()[positions], own.y):
        raise BundleError(
            f"the held-out predictions of run {run_id} ({PREDICTIONS_ARTIFACT}, {len(frame)} rows) "
            f"do not cover the {len(own.timestamps)} rows and outcomes of its test window"
        )
    proba = frame[MODEL].to_numpy(dtype=np.float64)[positions]
    return WindowScore(timestamps=own.timestamps, y=own.y, proba=proba)


def _scored_fit_end(challenger: ModelBundle) -> pd.Timestamp | None:
    """The last candle the model whose scores the gate compares learnt from."""
    key = "held_out_fit_end" if challenger.metadata.get("refit") else "fit_end"
    value = challenger.metadata.get(key)
    return None if value is None else _utc(value)


def _load_incumbent(
    client: MlflowClient, *, name: str, version: str, dst: Path
) -> tuple[ModelBundle, pd.Timestamp | None]:
    """Production's bundle, checked as the service checks it, and where its training ended."""
    bundle = download_bundle(client, name=name, version=version, dst=dst)
    ensure_compatible(bundle.spec)
    zeros = np.zeros((1, bundle.sequence_length, len(bundle.spec.names)), dtype=np.float32)
    probability = bundle.predict_proba(zeros, scaled=True)
    if probability.shape != (1,) or not np.isfinite(probability).all():
        raise BundleError(f"its warm-up prediction gave {probability!r}")
    fit_end = bundle.metadata.get("fit_end")
    return bundle, None if fit_end is None else _utc(fit_end)


def _unseen_rows(
    timestamps: pd.DatetimeIndex, *, seen_until: pd.Timestamp | None
) -> pd.DatetimeIndex:
    """The rows after `seen_until`: no label a model learnt from reaches them (a label of
    `fit_end`'s model ends at `fit_end` at the latest). Their input windows may hold candles it
    learnt, as every live prediction's does."""
    if seen_until is None:
        return timestamps
    return pd.DatetimeIndex(timestamps[timestamps > seen_until])


def _replaces_unservable(
    current: str, exc: Exception, *, metric: str, proof: str, unproven: bool
) -> GateDecision:
    logger.warning("production version %s cannot be scored", current, exc_info=exc)
    return GateDecision(
        True,
        f"production version {current} cannot be scored by this code ({describe_error(exc)}), "
        f"so it cannot be served either; this version was scored on its own test window; {proof}",
        metric,
        incumbent_version=current,
        unproven=unproven,
    )


def _subset(score: WindowScore, timestamps: pd.DatetimeIndex) -> WindowScore:
    positions = score.timestamps.get_indexer(timestamps)
    return WindowScore(timestamps=timestamps, y=score.y[positions], proba=score.proba[positions])


def _row_losses(metric: str, score: WindowScore) -> np.ndarray:
    """Per-row log loss, or per-row Brier score: the losses whose means the metrics are."""
    if metric == "brier":
        return (np.asarray(score.proba, dtype=np.float64) - score.y) ** 2
    return log_losses(score.proba, score.y)


def _rows_per_day(timeframe: str) -> int:
    """Bootstrap blocks of a day of candles keep a day's dependence between neighbouring rows."""
    return max(1, round(periods_per_year(timeframe) / 365))


def _utc(value: object) -> pd.Timestamp:
    stamp = pd.Timestamp(value)  # type: ignore[arg-type]
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp


def _baseline_note(bundle: ModelBundle, metric: str) -> str:
    test = bundle.metadata.get("test_metrics", {})
    strongest = bundle.metadata.get("strongest_baseline", "?")
    base = bundle.metadata.get("baseline_metrics", {}).get(strongest, {})
    numbers = f"{metric} {_number(test.get(metric))} vs {strongest} {_number(base.get(metric))}"
    if bundle.beats_baseline:
        return f"beats its strongest baseline ({numbers})"
    return (
        f"does not beat its strongest baseline ({numbers}): unproven, served as HOLD unless "
        "ML_SERVE_UNPROVEN is set"
    )


def _number(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"
