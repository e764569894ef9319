"""Champion and challenger: the chore that lets live candles decide which of two versions serves.

A version that passes the offline gate while another is production gets the registry alias
`challenger` (`ML_PROMOTION=shadow`, the default; `mlproject.gate`). The service loads it beside
production (`ModelCache.challenger`), predicts with it on every new candle and records those
predictions as shadow (`CandleWatcher`), never serving them unasked.

The decision is `pipelines.lifecycle.challenger.decide`: this module gathers its inputs (both
versions' realised rows from the history, their proofs and the challenger's
`tbml.challenger_since` from the model cache, the settings) and applies its answer through
`pipelines.lifecycle.registry`: a promoted challenger gets the `production` alias, a retired
one loses `challenger`, the numbers go in tags, and the version that serves afterwards is
marked validated through the last candle compared (`mark_validated`), so its age counts from
that live evidence. A challenger retired for lack of rows in time validates nothing.

The policy chore (`challenger-policy`, every `ML_CHALLENGER_INTERVAL`) acts on the registry
through MLflow's client, re-reading both aliases first: a replica that decided the same a
moment earlier, or an operator who moved an alias, is not overridden.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from pipelines.lifecycle.challenger import Action, Rules, decide
from pipelines.lifecycle.intervals import PairedVerdict
from pipelines.lifecycle.proof import PROVEN, UNPROVEN, Proof
from pipelines.settings import Settings
from pipelines.tracking import (
    TAG_CHALLENGER_OUTCOME,
    TAG_CHALLENGER_REASON,
    TAG_LIVE_DELTA_HIGH,
    TAG_LIVE_DELTA_LOW,
    TAG_LIVE_DELTA_MEAN,
    TAG_LIVE_ROWS,
    TAG_PROMOTION,
    TAG_PROMOTION_REASON,
)
from service.history.store import PredictionHistory, RealisedRows
from service.model_cache import ModelCache, ServedModel

logger = logging.getLogger(__name__)

CHALLENGER_CHORE = "challenger-policy"


@dataclass(frozen=True)
class LiveComparison:
    """A challenger against production on the realised candles both predicted."""

    pair: str
    model_type: str
    production_version: str
    challenger_version: str
    rows: int
    needed: int
    decision: Action
    reason: str
    challenger_log_loss: float | None = None
    production_log_loss: float | None = None
    verdict: PairedVerdict | None = None  # of challenger loss - production loss, per row
    hours: float | None = None  # how long it has been the challenger
    last_candle_ms: int | None = None  # the newest candle a decided comparison used

    @property
    def state(self) -> Literal["better", "worse", "undecided", "waiting"]:
        """What the rows say so far (the decision waits for enough of them)."""
        if self.verdict is None:
            return "waiting"
        state = self.verdict.state
        return "better" if state == "better" else "worse" if state == "worse" else "undecided"

    def tags(self) -> dict[str, str]:
        """The live numbers as version tags."""
        tags = {TAG_LIVE_ROWS: str(self.rows)}
        if self.verdict is not None:
            tags |= {
                TAG_LIVE_DELTA_MEAN: f"{self.verdict.mean:.6f}",
                TAG_LIVE_DELTA_LOW: f"{self.verdict.low:.6f}",
                TAG_LIVE_DELTA_HIGH: f"{self.verdict.high:.6f}",
            }
        return tags

    def to_json(self) -> dict[str, Any]:
        verdict = self.verdict
        return {
            "productionVersion": self.production_version,
            "challengerVersion": self.challenger_version,
            "rows": self.rows,
            "needed": self.needed,
            "challengerLogLoss": self.challenger_log_loss,
            "productionLogLoss": self.production_log_loss,
            "deltaMean": None if verdict is None else verdict.mean,
            "low": None if verdict is None else verdict.low,
            "high": None if verdict is None else verdict.high,
            "verdict": self.state,
            "decision": self.decision,
            "reason": self.reason,
            "hours": None if self.hours is None else round(self.hours, 2),
        }


def _proof(model: ServedModel) -> Proof:
    return UNPROVEN if model.unproven else PROVEN


def compare(
    realised: list[RealisedRows],
    *,
    production: ServedModel,
    challenger: ServedModel,
    settings: Settings,
    now_ms: int | None = None,
) -> LiveComparison:
    """The decision for one slot now, from the history's realised rows of its pair."""
    by_version = {(r.model_type, r.model_version): r for r in realised}
    kind = production.model_type
    now = int(time.time() * 1000) if now_ms is None else now_ms
    hours = None if challenger.since_ms is None else max(0.0, (now - challenger.since_ms) / 3.6e6)
    decision = decide(
        challenger=by_version.get((kind, challenger.version)),
        production=by_version.get((kind, production.version)),
        challenger_proof=_proof(challenger),
        production_proof=_proof(production),
        hours=hours,
        rules=Rules(
            min_outcomes=settings.challenger_min_outcomes,
            max_hours=settings.challenger_max_hours,
            margin=settings.promotion_margin,
        ),
        production_version=production.version,
    )
    return LiveComparison(
        pair=production.pair,
        model_type=kind,
        production_version=production.version,
        challenger_version=challenger.version,
        rows=decision.rows,
        needed=decision.needed,
        decision=decision.action,
        reason=decision.reason,
        challenger_log_loss=decision.challenger_log_loss,
        production_log_loss=decision.production_log_loss,
        verdict=decision.verdict,
        hours=hours,
        last_candle_ms=decision.last_candle_ms,
    )


@dataclass
class ChallengerPolicy:
    """The `challenger-policy` chore: compare each challenger with production, and act."""

    settings: Settings
    history: PredictionHistory
    models: ModelCache

    def comparisons(self) -> dict[tuple[str, str], LiveComparison]:
        """Each slot's challenger compared now (no action taken)."""
        found: dict[tuple[str, str], LiveComparison] = {}
        realised_by_pair: dict[str, list[RealisedRows]] = {}
        for challenger in self.models.challengers():
            production = self.models.get(challenger.pair, challenger.model_type)
            if production is None:
                continue
            if challenger.pair not in realised_by_pair:
                realised_by_pair[challenger.pair] = self.history.realised_rows(pair=challenger.pair)
            found[(challenger.pair, challenger.model_type)] = compare(
                realised_by_pair[challenger.pair],
                production=production,
                challenger=challenger,
                settings=self.settings,
            )
        return found

    def check(self) -> list[LiveComparison]:
        """One look: returns the comparisons acted on (promoted or retired)."""
        acted = []
        for key, comparison in self.comparisons().items():
            if comparison.decision == "waiting":
                continue
            challenger = self.models.challenger(*key)
            if challenger is None:
                continue
            if self._act(challenger.name, comparison):
                acted.append(comparison)
                logger.info(
                    "%s version %s %s: %s",
                    challenger.name,
                    comparison.challenger_version,
                    "promoted" if comparison.decision == "promote" else "retired",
                    comparison.reason,
                )
        if acted:
            self.models.trigger()
        return acted

    def _act(self, name: str, comparison: LiveComparison) -> bool:
        """Promote or retire through MLflow's client; False when the aliases moved meanwhile."""
        from pipelines.lifecycle.registry import mark_validated, retire_challenger, set_production
        from pipelines.tracking import (
            CHALLENGER_ALIAS,
            aliased_version,
            client_for,
            production_version,
        )

        client = client_for(self.settings)
        version = comparison.challenger_version
        if aliased_version(client, name=name, alias=CHALLENGER_ALIAS) != version or (
            production_version(client, name=name) != comparison.production_version
        ):
            return False  # decided elsewhere meanwhile: the next refresh shows what holds
        tags = comparison.tags() | {TAG_CHALLENGER_REASON: comparison.reason}
        promote = comparison.decision == "promote"
        if comparison.last_candle_ms is not None:  # decided on live rows, not timed out
            # Before the aliases move: a cache that loads the version serving next (or re-reads
            # it when the challenger alias goes) sees the mark with it.
            serving = version if promote else comparison.production_version
            mark_validated(client, name=name, version=serving, through_ms=comparison.last_candle_ms)
        if promote:
            set_production(client, name=name, version=version)
            tags |= {
                TAG_CHALLENGER_OUTCOME: "promoted",
                TAG_PROMOTION: "promoted",
                TAG_PROMOTION_REASON: f"promoted on live candles: {comparison.reason}",
            }
            for key, value in tags.items():
                client.set_model_version_tag(name, version, key, value)
        else:
            retire_challenger(
                client, name=name, version=version, tags=tags | {TAG_CHALLENGER_OUTCOME: "retired"}
            )
        return True
