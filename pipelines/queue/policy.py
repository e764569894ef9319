"""The retraining policy: which pair's model to retrain, when, and one sentence saying why.

New candles arrive every hour (the feed, `tbml ingest`); a model trained a month ago has not
seen them. For each configured pair and enabled model type (a slot), the lease holder's
`retraining-policy` chore (pipelines.queue.runtime, every `ML_POLICY_INTERVAL`) asks:

- **stale**: the production version's training data ends more than `ML_MODEL_MAX_AGE_HOURS`
  before the newest candle in the store, and no training of the slot has used newer data
  since: queue a retraining at priority 4 (`requestedBy: stale`);
- **schedule**: at least `retrain_interval_for(pair)` hours (`ML_RETRAIN_INTERVAL_HOURS`,
  24 by default) of candles exist after the last training's data end: queue one at the lowest
  priority (`requestedBy: schedule`; `stale` if production is stale as well);
- otherwise nothing, and never when no candle arrived since the last training of the slot,
  whatever became of it: a rejected challenger is not retrained every cooldown on the same data.

"The last training's data end" is the later of the production version's (its run's
`data_range` tag) and the newest `data_end` of the slot's ended jobs. Jobs go through the queue
like any other (cooldowns, priorities, one training at a time); a slot that already has a job
queued or training is skipped. The latest decision per slot is kept in `policy_decisions` (so
every replica's `GET /api/training/queue` shows it) and logged only when it changes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
from sqlalchemy import delete, func, select

from pipelines import tracking
from pipelines.candles.store import CandlesNotFoundError, CandleStore
from pipelines.db import read_session, write_session
from pipelines.queue.api import TrainingQueue
from pipelines.queue.clock import now_ms
from pipelines.queue.errors import DuplicateJobError, QueueFullError
from pipelines.queue.params import PRIORITY_LOWEST
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
    from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

# A stale production version goes before users' default (5); a scheduled one after everything.
PRIORITY_STALE = 4
PRIORITY_SCHEDULE = PRIORITY_LOWEST
STALE = "stale"
SCHEDULE = "schedule"
NO_PRODUCTION = "no production version: bootstrap or train it first"
POLICY_OFF_REASON = "the retraining policy is off (ML_RETRAIN_POLICY=false)"

# (pair, model type) -> (production version, end of its training data), or None without one.
ProductionDataEnd = Callable[[str, str], "tuple[str, pd.Timestamp] | None"]
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


@dataclass(frozen=True)
class _Want:
    """What the rules call for: a requester (None: nothing to queue) and the reason."""

    requested_by: str | None
    reason: str
    priority: int = PRIORITY_SCHEDULE


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
        """`challenger_of`: a slot's challenger version (a slot with one is not retrained:
        a new version would supersede it before live candles decide); None: none ever."""
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
            newest, missing = self._newest_candle(pair)
            for model_type in self._settings.enabled_models:
                decision = self._decide(
                    pair, model_type, now=now, newest=newest, missing=missing, trained=trained
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

    # --- one slot --------------------------------------------------------------------------

    def _newest_candle(self, pair: str) -> tuple[pd.Timestamp | None, str]:
        """The time of the pair's newest candle, or None and why there is none."""
        timeframe = self._settings.timeframe
        try:
            frame = self._store.load(pair, timeframe)
        except CandlesNotFoundError as error:
            return None, str(error)
        except Exception as error:  # a malformed file: say so on every slot of the pair
            return None, f"could not read the candles of {pair} at {timeframe}: {error}"
        if frame.empty:
            return None, f"no candles for {pair} at {timeframe}: the store's files are empty"
        return _utc(frame.index[-1]), ""

    def _decide(
        self,
        pair: str,
        model_type: str,
        *,
        now: int,
        newest: pd.Timestamp | None,
        missing: str,
        trained: dict[tuple[str, str], int],
    ) -> Decision:
        def skipped(reason: str) -> Decision:
            return Decision(pair, model_type, now, POLICY_SKIPPED, reason)

        if not self._settings.retrain_policy:
            return Decision(pair, model_type, now, POLICY_OFF, POLICY_OFF_REASON)
        if newest is None:
            return skipped(missing)
        name = f"{pair}-{model_type}"
        try:
            production = self._production_data_end(pair, model_type)
        except Exception as error:
            return skipped(f"could not read the production version of {name}: {error}")
        if production is None:
            return skipped(NO_PRODUCTION)
        version, production_end = production[0], _utc(production[1])
        last_end = production_end
        if (pair, model_type) in trained:
            last_end = max(last_end, pd.Timestamp(trained[pair, model_type], unit="ms", tz="UTC"))
        want = self._rule(
            pair,
            name,
            version=version,
            production_end=production_end,
            last_end=last_end,
            newest=newest,
        )
        if want.requested_by is None:
            return skipped(want.reason)
        try:
            challenger = self._challenger_of(pair, model_type) if self._challenger_of else None
        except Exception as error:
            return skipped(f"could not read the challenger of {name}: {error}")
        if challenger is not None:
            return skipped(
                f"{name} challenger version {challenger} is being decided on live candles "
                f"(ML_CHALLENGER_MIN_OUTCOMES): a new version now would supersede it (due: "
                f"{want.reason})"
            )
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

    def _rule(
        self,
        pair: str,
        name: str,
        *,
        version: str,
        production_end: pd.Timestamp,
        last_end: pd.Timestamp,
        newest: pd.Timestamp,
    ) -> _Want:
        """The policy's rules for one slot (see the module docstring)."""
        max_age = self._settings.model_max_age_hours
        interval = self._settings.retrain_interval_for(pair)
        new_hours = _hours(newest - last_end)
        age_hours = _hours(newest - production_end)
        since = f"since the last training's data end {_when(last_end)}"
        if new_hours <= 0:
            return _Want(None, f"{name}: no new candles {since} (the newest is {_when(newest)})")
        stale = age_hours > max_age
        stale_words = (
            f"{name} production version {version} is stale: its data ends "
            f"{_when(production_end)}, {_h(age_hours)} before the newest candle "
            f"(ML_MODEL_MAX_AGE_HOURS={max_age:g})"
        )
        if stale and last_end <= production_end:
            return _Want(STALE, stale_words, PRIORITY_STALE)
        due_words = (
            f"{_h(new_hours)} of new candles {since} (retrains every {interval:g} h of new data, "
            "ML_RETRAIN_INTERVAL_HOURS)"
        )
        if new_hours >= interval:
            if stale:
                return _Want(STALE, f"{stale_words}, and {due_words}", PRIORITY_STALE)
            return _Want(SCHEDULE, f"{name}: {due_words}", PRIORITY_SCHEDULE)
        waiting = (
            f"{_h(new_hours)} of new candles {since}; it retrains once there are "
            f"{interval:g} h (ML_RETRAIN_INTERVAL_HOURS)"
        )
        if stale:
            return _Want(
                None,
                f"{stale_words}, but a training used data to {_when(last_end)} since: {waiting}",
            )
        return _Want(None, f"{name}: {waiting}")

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
    """`production_data_end` read from the MLflow registry (MLflow is imported on first use).

    The version behind the `production` alias of `{PAIR}-{model type}`, and the end of its
    run's `data_range` tag; None when the model or the alias does not exist. A version whose
    run has no (or a malformed) `data_range` raises ValueError naming it.
    """

    def production_data_end(pair: str, model_type: str) -> tuple[str, pd.Timestamp] | None:
        client = tracking.client_for(settings)
        name = tracking.registered_model_name(pair, model_type)
        version = tracking.production_version(client, name=name)
        if version is None:
            return None
        run_id = client.get_model_version(name, version).run_id
        if not run_id:
            raise ValueError(f"{name} version {version} has no run: its data end is unknown")
        data_range = client.get_run(run_id).data.tags.get(tracking.TAG_DATA_RANGE)
        if data_range is None:
            raise ValueError(
                f"{name} version {version}: its run {run_id} has no "
                f"{tracking.TAG_DATA_RANGE!r} tag, so its data end is unknown"
            )
        return version, pd.Timestamp(tracking.parse_data_end(data_range))

    return production_data_end


def registry_challenger(settings: Settings) -> ChallengerOf:
    """`challenger_of` read from the MLflow registry (MLflow is imported on first use)."""

    def challenger_of(pair: str, model_type: str) -> str | None:
        client = tracking.client_for(settings)
        name = tracking.registered_model_name(pair, model_type)
        return tracking.aliased_version(client, name=name, alias=tracking.CHALLENGER_ALIAS)

    return challenger_of


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


def _hours(delta: pd.Timedelta) -> float:
    return float(delta / pd.Timedelta(hours=1))


def _h(hours: float) -> str:
    return f"{round(hours, 1):g} h"


def _when(moment: pd.Timestamp) -> str:
    """`2023-12-30T23:00Z`: minutes are the finest a candle needs."""
    return moment.strftime("%Y-%m-%dT%H:%MZ")


def _gist(what: tuple[str, str | None, str, str | None] | None) -> object:
    """A decision without its figures: "16 h of new candles" and "17 h of new candles" are the
    same decision, logged once."""
    if what is None:
        return None
    action, requested_by, reason, job_id = what
    return (action, requested_by, re.sub(r"[0-9][0-9.:TZ-]*", "#", reason), job_id)
