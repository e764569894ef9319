"""Champion and challenger: live candles decide which of two versions serves.

A version that passes the offline gate while another is production gets the registry alias
`challenger` (`ML_PROMOTION=shadow`, the default; `mlproject.gate`). The service loads it beside
production (`ModelCache.challenger`), predicts with it on every new candle and records those
predictions as shadow (`CandleWatcher`), never serving them unasked. Once outcomes are known,
the two versions have predicted the same candles, and this module compares them there:

- the rows: every realised candle that both versions predicted (one row per candle and
  version, from the store's candles only: the history never holds client-posted candles);
- the verdict: the paired moving-block bootstrap (`pipelines.verdicts`, 95 %, blocks of a day of
  candles) of per-row log-loss differences, challenger minus production;
- with m = `ML_PROMOTION_MARGIN`, as the offline gate decides:
  - fewer than `ML_CHALLENGER_MIN_OUTCOMES` rows: waiting, unless the challenger has been one
    for more than `ML_CHALLENGER_MAX_HOURS` (wall clock since its `tbml.challenger_since` tag):
    then it is retired, not having won in time;
  - enough rows and the whole interval above -m (`verdict.worse(-m)`): significantly worse,
    retired (the alias removed, tagged why);
  - enough rows otherwise: not worse, promoted (the `production` alias moves to it, the old
    version is archived; the numbers go in its tags).

The policy chore (`challenger-policy`, every `ML_CHALLENGER_INTERVAL`) acts on the registry
through MLflow's client, re-reading both aliases first: a replica that decided the same a
moment earlier, or an operator who moved an alias, is not overridden.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from pipelines.candles.timeframes import timeframe_delta
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
from pipelines.verdicts import PairedVerdict, log_losses, paired_block_bootstrap
from service.history.store import PredictionHistory, RealisedRows
from service.model_cache import ModelCache, ServedModel

logger = logging.getLogger(__name__)

CHALLENGER_CHORE = "challenger-policy"
Decision = Literal["waiting", "promote", "retire"]


@dataclass(frozen=True)
class LiveComparison:
    """A challenger against production on the realised candles both predicted."""

    pair: str
    model_type: str
    production_version: str
    challenger_version: str
    rows: int
    needed: int
    decision: Decision
    reason: str
    challenger_log_loss: float | None = None
    production_log_loss: float | None = None
    verdict: PairedVerdict | None = None  # of challenger loss - production loss, per row
    hours: float | None = None  # how long it has been the challenger

    @property
    def state(self) -> Literal["better", "worse", "undecided", "waiting"]:
        """What the rows say so far (the decision waits for enough of them)."""
        if self.verdict is None:
            return "waiting"
        if self.verdict.better():
            return "better"
        return "worse" if self.verdict.worse() else "undecided"

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


def rows_per_day(timeframe: str) -> int:
    """Bootstrap blocks of a day of candles (24 for hourly ones)."""
    return max(1, round(86_400 / timeframe_delta(timeframe).total_seconds()))


def compare(
    realised: list[RealisedRows],
    *,
    production: ServedModel,
    challenger: ServedModel,
    settings: Settings,
    now_ms: int | None = None,
) -> LiveComparison:
    """The comparison and the decision it calls for (see the module docstring)."""
    by_version = {(r.model_type, r.model_version): r for r in realised}
    kind = production.model_type
    needed = settings.challenger_min_outcomes
    now = int(time.time() * 1000) if now_ms is None else now_ms
    hours = None if challenger.since_ms is None else max(0.0, (now - challenger.since_ms) / 3.6e6)
    old = by_version.get((kind, production.version))
    new = by_version.get((kind, challenger.version))
    times = np.zeros(0, dtype=np.int64)
    if old is not None and new is not None:
        times = np.intersect1d(old.candle_time, new.candle_time)
        # Both versions predicted the same target only when their horizons agree.
        times = times[_same_horizon(old, new, times)]
    rows = int(times.size)
    waiting = LiveComparison(
        pair=production.pair,
        model_type=kind,
        production_version=production.version,
        challenger_version=challenger.version,
        rows=rows,
        needed=needed,
        decision="waiting",
        reason=f"{rows} of the {needed} realised outcomes both versions predicted "
        "(ML_CHALLENGER_MIN_OUTCOMES)",
        hours=hours,
    )
    if rows < needed or old is None or new is None:
        if hours is not None and hours > settings.challenger_max_hours:
            return replace(
                waiting,
                decision="retire",
                reason=f"it has been the challenger for {hours:.0f} h, more than "
                f"ML_CHALLENGER_MAX_HOURS = {settings.challenger_max_hours:g}, with {rows} of "
                f"the {needed} realised outcomes (ML_CHALLENGER_MIN_OUTCOMES) needed to decide",
            )
        return waiting
    new_losses = log_losses(_at(new, times), _outcomes(new, times))
    old_losses = log_losses(_at(old, times), _outcomes(old, times))
    block = rows_per_day(settings.timeframe)
    verdict = paired_block_bootstrap(new_losses - old_losses, block=block)
    margin = settings.promotion_margin
    numbers = (
        f"on the {rows} realised candles both versions predicted: log loss "
        f"{float(new_losses.mean()):.4f} vs production version {production.version}'s "
        f"{float(old_losses.mean()):.4f}, per-row difference {verdict.mean:+.4f}, 95 % interval "
        f"[{verdict.low:+.4f}, {verdict.high:+.4f}] (paired moving-block bootstrap, blocks of "
        f"{verdict.block}; ML_PROMOTION_MARGIN {margin:g})"
    )
    worse = verdict.worse(-margin)
    outcome = "significantly worse than production " if worse else "not worse than production "
    return replace(
        waiting,
        decision="retire" if worse else "promote",
        reason=outcome + numbers,
        challenger_log_loss=float(new_losses.mean()),
        production_log_loss=float(old_losses.mean()),
        verdict=verdict,
    )


def _positions(rows: RealisedRows, times: np.ndarray) -> np.ndarray:
    return np.searchsorted(rows.candle_time, times)


def _at(rows: RealisedRows, times: np.ndarray) -> np.ndarray:
    return rows.probability[_positions(rows, times)]


def _outcomes(rows: RealisedRows, times: np.ndarray) -> np.ndarray:
    return rows.outcome[_positions(rows, times)]


def _same_horizon(old: RealisedRows, new: RealisedRows, times: np.ndarray) -> np.ndarray:
    return old.horizon[_positions(old, times)] == new.horizon[_positions(new, times)]


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
        from pipelines.lifecycle.registry import retire_challenger, set_production
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
        if comparison.decision == "promote":
            set_production(client, name=name, version=version)
            tags |= {
                TAG_CHALLENGER_OUTCOME: "promoted",
                TAG_PROMOTION: "promoted",
                TAG_PROMOTION_REASON: f"promoted on live candles: {comparison.reason}",
            }
            for key, value in tags.items():
                client.set_model_version_tag(name, version, key, value)
            return True
        retire_challenger(
            client, name=name, version=version, tags=tags | {TAG_CHALLENGER_OUTCOME: "retired"}
        )
        return True
