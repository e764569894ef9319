"""The retraining policy's chore: gather each slot's facts, ask the trigger, queue what is due.

New candles arrive every hour (the feed, `tbml ingest`); a model trained a month ago has not
seen them. For each configured pair and enabled model type (a slot), the lease holder's
`retraining-policy` chore (pipelines.queue.runtime, every `ML_POLICY_INTERVAL`) gathers what
the decision needs and asks `pipelines.lifecycle.retraining.trigger`, the one rule that the
drift check and offline replays ask too (its docstring states it: stale, drift, schedule; never
while a challenger is being decided; never before the gate could compare a new version with
production on `ML_GATE_MIN_ROWS` rows production never learnt).

The facts: the pair's newest candle and its closes (from the candle store); the production
version with its data end, its `fit_end` and the last candle live candles validated it through
(`production_data_end`: from the API's model cache, or the registry, `registry_data_end`); the
newest data end of the slot's ended jobs, whatever became of them (a rejected challenger is not
retrained every cooldown on the same data); the slot's challenger (`challenger_of`). Jobs go
through the queue like any other (cooldowns, priorities, one training at a time); a slot that
already has a job queued or training is skipped. The latest decision per slot is kept in
`policy_decisions` (so every replica's `GET /api/training/queue` shows it) and logged only when
it changes.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from sqlalchemy import delete, func, select

from pipelines import tracking
from pipelines.candles.store import CandlesNotFoundError, CandleStore
from pipelines.candles.timeframes import timeframe_delta
from pipelines.db import read_session, write_session
from pipelines.lifecycle.registry import validated_through_of
from pipelines.lifecycle.retraining import Facts, Production, Rules, trigger
from pipelines.queue.api import TrainingQueue
from pipelines.queue.clock import now_ms
from pipelines.queue.errors import DuplicateJobError, QueueFullError
from pipelines.queue.tables import (
    POLICY_ENQUEUED,
    POLICY_OFF,
    POLICY_SKIPPED,
    TERMINAL_STATUSES,
    PolicyDecision,
    TrainingJob,
)
from pipelines.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

POLICY_OFF_REASON = "the retraining policy is off (ML_RETRAIN_POLICY=false)"

# (pair, model type) -> what the trigger needs of its production version, or None without one.
ProductionDataEnd = Callable[[str, str], "Production | None"]
# (pair, model type) -> the version holding the `challenger` alias, or None.
ChallengerOf = Callable[[str, str], "str | None"]


@dataclass(frozen=True)
class Decision:
    """What the policy did for one slot, and why."""

    pair: str
    model_type: str
    decided_at: int  # epoch ms
    action: str  # enqueued | skipped | off
    reason: str
    requested_by: str | None = None  # of the job it enqueued
    job_id: str | None = None

    @property
    def what(self) -> tuple[str, str | None, str, str | None]:
        """The decision without its time: what a change of decision compares."""
        return (self.action, self.requested_by, self.reason, self.job_id)


class RetrainingPolicy:
    """Evaluates every slot and queues the retrainings due; `evaluate()` once per interval."""

    def __init__(
        self,
        settings: Settings,
        queue: TrainingQueue,
        *,
        store: CandleStore,
        production_data_end: ProductionDataEnd,
        challenger_of: ChallengerOf | None = None,
    ) -> None:
        """`production_data_end`: a slot's production facts; `challenger_of`: a slot's
        challenger version (None: none ever)."""
        self._settings = settings
        self._queue = queue
        self._store = store
        self._production_data_end = production_data_end
        self._challenger_of = challenger_of
        self._url = settings.database_url

    def evaluate(self) -> list[Decision]:
        """Decide for every slot, queue what is due, record (and log changed) decisions."""
        now = now_ms()
        with read_session(self._url) as session:
            previous = {
                (row.pair, row.model_type): (row.action, row.requested_by, row.reason, row.job_id)
                for row in session.scalars(select(PolicyDecision))
            }
            trained = _trained_data_ends(session)
        decisions = []
        for pair in self._settings.pairs:
            closes, missing = self._closes(pair)
            for model_type in self._settings.enabled_models:
                decision = self._decide(
                    pair, model_type, now=now, closes=closes, missing=missing, trained=trained
                )
                decisions.append(decision)
                if _gist(decision.what) != _gist(previous.get((pair, model_type))):
                    logger.info(
                        "retraining policy, %s-%s: %s%s: %s",
                        pair,
                        model_type,
                        decision.action,
                        f" ({decision.requested_by}, job {decision.job_id})"
                        if decision.job_id
                        else "",
                        decision.reason,
                    )
        self._record(decisions)
        return decisions

    def rules(self, pair: str) -> Rules:
        """The trigger's settings for `pair`."""
        settings = self._settings
        return Rules(
            interval_hours=settings.retrain_interval_for(pair),
            max_age_hours=settings.model_max_age_hours,
            gate_min_rows=settings.gate_min_rows,
            horizon=settings.horizon,
            timeframe=timeframe_delta(settings.timeframe),
        )

    # --- one slot --------------------------------------------------------------------------

    def _closes(self, pair: str) -> tuple[pd.Series | None, str]:
        """The pair's closes (UTC time index, the newest last), or None and why there are none."""
        timeframe = self._settings.timeframe
        try:
            frame = self._store.load(pair, timeframe)
        except CandlesNotFoundError as error:
            return None, str(error)
        except Exception as error:  # a malformed file: say so on every slot of the pair
            return None, f"could not read the candles of {pair} at {timeframe}: {error}"
        if frame.empty:
            return None, f"no candles for {pair} at {timeframe}: the store's files are empty"
        closes = frame["close"]
        index = pd.DatetimeIndex(closes.index)
        closes.index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
        return closes, ""

    def _decide(
        self,
        pair: str,
        model_type: str,
        *,
        now: int,
        closes: pd.Series | None,
        missing: str,
        trained: dict[tuple[str, str], int],
    ) -> Decision:
        def skipped(reason: str) -> Decision:
            return Decision(pair, model_type, now, POLICY_SKIPPED, reason)

        if not self._settings.retrain_policy:
            return Decision(pair, model_type, now, POLICY_OFF, POLICY_OFF_REASON)
        if closes is None:
            return skipped(missing)
        name = f"{pair}-{model_type}"
        try:
            production = self._production_data_end(pair, model_type)
        except Exception as error:
            return skipped(f"could not read the production version of {name}: {error}")
        try:
            challenger = self._challenger_of(pair, model_type) if self._challenger_of else None
        except Exception as error:
            return skipped(f"could not read the challenger of {name}: {error}")
        last_training = trained.get((pair, model_type))
        want = trigger(
            Facts(
                name=name,
                newest=closes.index[-1],
                production=production,
                last_training_end=None
                if last_training is None
                else pd.Timestamp(last_training, unit="ms", tz="UTC"),
                challenger=challenger,
                closes=closes,
            ),
            self.rules(pair),
        )
        if want.requested_by is None:
            return skipped(want.reason)
        try:
            result = self._queue.enqueue(
                pair=pair,
                model_type=model_type,
                priority=want.priority,
                requested_by=want.requested_by,
                reason=want.reason,
            )
        except (DuplicateJobError, QueueFullError) as error:
            return skipped(f"not queued: {error} (due: {want.reason})")
        return Decision(
            pair,
            model_type,
            now,
            POLICY_ENQUEUED,
            want.reason,
            requested_by=want.requested_by,
            job_id=result.job_id,
        )

    # --- bookkeeping -----------------------------------------------------------------------

    def _record(self, decisions: list[Decision]) -> None:
        """Upsert each slot's decision; forget slots no longer configured."""
        slots = {(d.pair, d.model_type) for d in decisions}
        with write_session(self._url) as session:
            for old in list(session.scalars(select(PolicyDecision))):
                if (old.pair, old.model_type) not in slots:
                    session.execute(
                        delete(PolicyDecision).where(
                            PolicyDecision.pair == old.pair,
                            PolicyDecision.model_type == old.model_type,
                        )
                    )
            for decision in decisions:
                row = session.get(PolicyDecision, (decision.pair, decision.model_type))
                if row is None:
                    row = PolicyDecision(pair=decision.pair, model_type=decision.model_type)
                    session.add(row)
                row.decided_at = decision.decided_at
                row.action = decision.action
                row.requested_by = decision.requested_by
                row.reason = decision.reason
                row.job_id = decision.job_id


def registry_data_end(settings: Settings) -> ProductionDataEnd:
    """`production_data_end` read from the MLflow registry (MLflow is imported on first use):
    the same facts the API reads from its model cache.

    The version behind the `production` alias of `{PAIR}-{model type}`: the end of its run's
    `data_range` tag, the `fit_end` of its bundle's metadata (read once per version: it never
    changes; None for a version without a bundle or without one) and its
    `tbml.validated_through` tag; None when the model or the alias does not exist. A version
    whose run has no (or a malformed) `data_range` raises ValueError naming it.
    """
    fit_ends: dict[tuple[str, str], pd.Timestamp | None] = {}

    def production_data_end(pair: str, model_type: str) -> Production | None:
        client = tracking.client_for(settings)
        name = tracking.registered_model_name(pair, model_type)
        version = tracking.production_version(client, name=name)
        if version is None:
            return None
        model_version = client.get_model_version(name, version)
        run_id = model_version.run_id
        if not run_id:
            raise ValueError(f"{name} version {version} has no run: its data end is unknown")
        data_range = client.get_run(run_id).data.tags.get(tracking.TAG_DATA_RANGE)
        if data_range is None:
            raise ValueError(
                f"{name} version {version}: its run {run_id} has no "
                f"{tracking.TAG_DATA_RANGE!r} tag, so its data end is unknown"
            )
        if (name, version) not in fit_ends:
            fit_ends[name, version] = _bundle_fit_end(client, model_version)
        validated = validated_through_of(model_version.tags or {})
        through = None if validated is None else pd.Timestamp(validated, unit="ms", tz="UTC")
        return Production(
            version=version,
            data_end=_utc(tracking.parse_data_end(data_range)),
            fit_end=fit_ends[name, version],
            validated_through=through,
        )

    return production_data_end


def _bundle_fit_end(client: MlflowClient, model_version: Any) -> pd.Timestamp | None:
    """The `fit_end` in the metadata of a version's bundle (its logged model's artifacts), or
    None when the version has no bundle or its metadata no `fit_end`."""
    import json

    from mlflow.artifacts import download_artifacts

    from pipelines.modelbundle import METADATA_FILE, PYFUNC_ARTIFACTS_DIR, logged_model_id

    model_id = logged_model_id(model_version.source, getattr(model_version, "model_id", None))
    if model_id is None:
        return None
    location = client.get_logged_model(model_id).artifact_location.rstrip("/")
    with tempfile.TemporaryDirectory() as folder:
        local = download_artifacts(
            artifact_uri=f"{location}/{PYFUNC_ARTIFACTS_DIR}/{METADATA_FILE}",
            dst_path=folder,
            tracking_uri=client.tracking_uri,
        )
        metadata = json.loads(Path(local).read_text())
    fit_end = metadata.get("fit_end")
    return None if not fit_end else _utc(fit_end)


def registry_challenger(settings: Settings) -> ChallengerOf:
    """`challenger_of` read from the MLflow registry (MLflow is imported on first use)."""

    def challenger_of(pair: str, model_type: str) -> str | None:
        client = tracking.client_for(settings)
        name = tracking.registered_model_name(pair, model_type)
        return tracking.aliased_version(client, name=name, alias=tracking.CHALLENGER_ALIAS)

    return challenger_of


def last_training_end(url: str, pair: str, model_type: str) -> pd.Timestamp | None:
    """The newest data end of the slot's ended jobs (whatever their outcome), as the retraining
    trigger's `Facts.last_training_end` reads it; None before any."""
    with read_session(url) as session:
        end = _trained_data_ends(session).get((pair, model_type))
    return None if end is None else pd.Timestamp(end, unit="ms", tz="UTC")


def _trained_data_ends(session: Session) -> dict[tuple[str, str], int]:
    """The newest `data_end` of each slot's ended jobs (whatever their outcome)."""
    rows = session.execute(
        select(TrainingJob.pair, TrainingJob.model_type, func.max(TrainingJob.data_end))
        .where(TrainingJob.status.in_(TERMINAL_STATUSES), TrainingJob.data_end.is_not(None))
        .group_by(TrainingJob.pair, TrainingJob.model_type)
    )
    return {(pair, model_type): int(end) for pair, model_type, end in rows if end is not None}


def _utc(moment: object) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)  # type: ignore[arg-type]
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _gist(what: tuple[str, str | None, str, str | None] | None) -> object:
    """A decision without its figures: "16 h of new candles" and "17 h of new candles" are the
    same decision, logged once."""
    if what is None:
        return None
    action, requested_by, reason, job_id = what
    return (action, requested_by, re.sub(r"[0-9][0-9.:TZ-]*", "#", reason), job_id)
