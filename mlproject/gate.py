"""The promotion gate: whether a registered version may become production.

The gate: a version becomes production only if, on its own newest held-out window, it is at
least as good as the current production version scored on the same rows (both through their
ONNX bundles), by `settings.promotion_metric` and `settings.promotion_margin`. A rejected
version stays registered, tagged with the reason. With no production version the first version
is promoted; if it does not beat its strongest baseline it is tagged unproven, and the service
answers HOLD for it unless `ML_SERVE_UNPROVEN` is set.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlproject.metrics import LOWER_IS_BETTER, classification_metrics, is_better
from mlproject.scoring import score_bundle
from mlproject.tracking import set_production
from pipelines.features.spec import FeatureSpecMismatchError
from pipelines.modelbundle import BundleError, ModelBundle, download_bundle
from pipelines.settings import Settings
from pipelines.tracking import (
    TAG_PROMOTION,
    TAG_PROMOTION_REASON,
    TAG_UNPROVEN,
    production_version,
)

logger = logging.getLogger(__name__)

# Fewer gate rows than this after dropping those the production version trained on, and the
# whole window is used instead (with a note in the reason).
MIN_GATE_ROWS = 100


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided for a version, and the numbers behind it."""

    promoted: bool
    reason: str
    metric: str
    challenger: float | None = None
    incumbent: float | None = None
    incumbent_version: str | None = None
    rows: int = 0
    unproven: bool = False

    @property
    def outcome(self) -> str:
        return "promoted" if self.promoted else "rejected"


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
    with tempfile.TemporaryDirectory(prefix="tbml-gate-") as tmp:
        challenger = download_bundle(client, name=name, version=version, dst=Path(tmp) / "new")
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
    if decision.promoted:
        set_production(client, name=name, version=version)
    tags = {TAG_PROMOTION: decision.outcome, TAG_PROMOTION_REASON: decision.reason}
    if decision.promoted:
        tags[TAG_UNPROVEN] = str(decision.unproven).lower()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    logger.info("%s version %s %s: %s", name, version, decision.outcome, decision.reason)
    return decision


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
    metric, margin = settings.promotion_metric, settings.promotion_margin
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
    try:
        incumbent = download_bundle(client, name=name, version=current, dst=workdir / "current")
        timestamps, note = _gate_rows(challenger, incumbent, candles)
        horizon = challenger.horizon
        new = score_bundle(challenger, candles=candles, timestamps=timestamps, horizon=horizon)
        old = score_bundle(incumbent, candles=candles, timestamps=timestamps, horizon=horizon)
    except (BundleError, FeatureSpecMismatchError, MlflowException, OSError) as exc:
        return GateDecision(
            True,
            f"production version {current} cannot be scored by this code ({exc}), so it cannot "
            f"be served either; {proof}",
            metric,
            incumbent_version=current,
            unproven=unproven,
        )
    new_value = classification_metrics(y_true=new.y, proba=new.proba)[metric]
    old_value = classification_metrics(y_true=old.y, proba=old.proba)[metric]
    promoted = is_better(metric, new_value, old_value, margin=margin)
    direction = "lower" if metric in LOWER_IS_BETTER else "higher"
    verdict = "at least as good as" if promoted else "worse than"
    reason = (
        f"{metric} {new_value:.4f} is {verdict} production version {current}'s {old_value:.4f} "
        f"on the same {len(timestamps)} newest held-out rows ({direction} is better, margin "
        f"{margin:g}){note}; {proof}"
    )
    return GateDecision(
        promoted,
        reason,
        metric,
        challenger=new_value,
        incumbent=old_value,
        incumbent_version=current,
        rows=len(timestamps),
        unproven=unproven and promoted,
    )


def _gate_rows(
    challenger: ModelBundle, incumbent: ModelBundle, candles: pd.DataFrame
) -> tuple[pd.DatetimeIndex, str]:
    """The challenger's test rows, less those the production version learnt from (if enough)."""
    window = challenger.metadata["test_window"]
    start, end = pd.Timestamp(window["start"]), pd.Timestamp(window["end"])
    timestamps = pd.DatetimeIndex(candles.index[(candles.index >= start) & (candles.index <= end)])
    if len(timestamps) != int(window["rows"]):
        raise BundleError(
            f"the candles hold {len(timestamps)} rows of the test window {start} .. {end}, "
            f"the version was tested on {window['rows']}"
        )
    seen_until = incumbent.metadata.get("fit_end")
    note = ""
    if seen_until is not None and pd.Timestamp(seen_until) >= start:
        positions = candles.index.get_indexer(timestamps)
        window_starts = candles.index[np.maximum(positions - incumbent.sequence_length + 1, 0)]
        unseen = pd.DatetimeIndex(timestamps[window_starts > pd.Timestamp(seen_until)])
        if len(unseen) >= MIN_GATE_ROWS:
            return unseen, " (rows the production version trained on left out)"
        note = " (the production version trained on some of these rows)"
    if incumbent.horizon != challenger.horizon:
        note += (
            f" (production predicts {incumbent.horizon} candles ahead, scored on "
            f"{challenger.horizon})"
        )
    return timestamps, note


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
