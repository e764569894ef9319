"""The queue's domain API: what `POST /api/train/...`, `/api/training/...` and `tbml queue` call.

It reads and writes the job table only; a scheduler (in this process or in `tbml worker`)
acts on what it finds there. A request is validated before anything is written, so a bad
request changes nothing. The optional `on_change` callback lets an in-process scheduler react
at once instead of at its next tick.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Literal, get_args

from sqlalchemy.exc import IntegrityError

from pipelines.db import read_session
from pipelines.queue import store, transitions
from pipelines.queue.clock import now_ms
from pipelines.queue.errors import (
    DuplicateJobError,
    JobNotCancellableError,
    QueueError,
    QueueValidationError,
    UnknownJobError,
)
from pipelines.queue.params import (
    PRIORITY_DEFAULT,
    validate_params,
    validate_priority,
    validate_target,
)
from pipelines.queue.schemas import (
    CancelResult,
    CanTrain,
    ClearCooldownsResult,
    ClearedCooldown,
    EmergencyStopResult,
    EnqueueResult,
    JobView,
    QueueStatusResponse,
    Requester,
    ResumeResult,
)
from pipelines.queue.tables import (
    QUEUED,
    TRAINING,
)
from pipelines.queue.views import COOLDOWN, PAUSED, can_train, load_job_view, queue_status
from pipelines.settings import Settings

logger = logging.getLogger(__name__)

EMERGENCY_STOP_REASON = "Emergency stop"
# Who may ask for a job (schemas.Requester): users (api, cli), the first run (bootstrap) and
# the retraining policy (schedule, stale, drift; pipelines.queue.policy).
REQUESTERS: tuple[str, ...] = get_args(Requester)
# A job id is `{PAIR}_{modelType}_{epoch ms}`; two requests in the same millisecond for
# different pairs differ by pair, and a clash of the same pair moves on by a millisecond.
_ID_TRIES = 5


class TrainingQueue:
    """Enqueue, cancel, stop, resume, clear cooldowns and inspect the training queue."""

    def __init__(self, settings: Settings, *, on_change: Callable[[], None] | None = None) -> None:
        self._settings = settings
        self._url = settings.database_url
        self._on_change = on_change

    def _changed(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:
                logger.exception("queue change callback failed")

    # --- reads -----------------------------------------------------------------------------

    def queue_status(self, *, history_limit: int = 10) -> QueueStatusResponse:
        """The queue now: active, queued (in dispatch order), history, cooldowns."""
        with read_session(self._url) as session:
            status = queue_status(
                session, settings=self._settings, now=now_ms(), history_limit=history_limit
            )
        return QueueStatusResponse(queue=status)

    def can_train(
        self, *, pair: str, model_type: str = "lstm", priority: int = PRIORITY_DEFAULT
    ) -> CanTrain:
        """Whether a training of this pair and model type would start now, and why not."""
        symbol, kind = validate_target(pair, model_type, pairs=self._settings.pairs)
        rank = validate_priority(priority)
        with read_session(self._url) as session:
            return can_train(session, pair=symbol, model_type=kind, priority=rank, now=now_ms())

    def get_job(self, *, job_id: str) -> JobView:
        """One job with its attempts."""
        with read_session(self._url) as session:
            job = store.get_job(session, job_id)
            if job is None:
                raise UnknownJobError(job_id)
            return load_job_view(session, job, now=now_ms())

    # --- enqueue ---------------------------------------------------------------------------

    def enqueue(
        self,
        *,
        pair: str,
        model_type: str = "lstm",
        params: Mapping[str, object] | None = None,
        priority: object = PRIORITY_DEFAULT,
        requested_by: str = "api",
        reason: str | None = None,
    ) -> EnqueueResult:
        """Queue a training; raise `DuplicateJobError` naming the job already active for it.

        Args:
            pair: A configured pair (`BTC`, `btc`, `BTC/USDT`).
            model_type: One of the model types.
            params: Parameters of the `train` entry point (epochs, batch_size, ...).
            priority: 1 (highest) to 10 (lowest).
            requested_by: Who asked: one of REQUESTERS (api, cli, bootstrap, schedule, stale,
                drift).
            reason: One sentence saying why the job exists, stored on it (None: not said).
        """
        symbol, kind = validate_target(pair, model_type, pairs=self._settings.pairs)
        rank = validate_priority(priority)
        checked = validate_params(params, settings=self._settings)
        if requested_by not in REQUESTERS:
            raise ValueError(
                f"requested_by {requested_by!r}: expected one of {', '.join(REQUESTERS)}"
            )
        why = (reason or "").strip() or None
        now = now_ms()
        with read_session(self._url) as session:
            verdict = can_train(session, pair=symbol, model_type=kind, priority=rank, now=now)
        job_id = self._insert(symbol, kind, checked, rank, requested_by, now, why)
        logger.info(
            "queued %s (priority %d, by %s)%s",
            job_id,
            rank,
            requested_by,
            f": {why}" if why else "",
        )
        self._changed()
        return EnqueueResult(
            message=_enqueue_message(symbol, kind, verdict),
            job_id=job_id,
            pair=symbol,
            model_type=kind,
            priority=rank,
            can_train=verdict,
            queue_status=self.queue_status().queue,
            timestamp=now,
        )

    def _insert(
        self,
        pair: str,
        model_type: str,
        params: dict[str, int | float],
        priority: int,
        requested_by: str,
        now: int,
        reason: str | None = None,
    ) -> str:
        for offset in range(_ID_TRIES):
            job_id = f"{pair}_{model_type}_{now + offset}"
            try:
                transitions.insert_job(
                    self._url,
                    job_id=job_id,
                    pair=pair,
                    model_type=model_type,
                    params=params,
                    priority=priority,
                    requested_by=requested_by,
                    max_attempts=self._settings.training_max_attempts,
                    now=now,
                    max_queued=self._settings.max_queued_jobs,
                    reason=reason,
                )
                return job_id
            except IntegrityError:
                # Either the pair's active-job index refused (a duplicate) or the id exists.
                with read_session(self._url) as session:
                    existing = store.find_active(session, pair=pair, model_type=model_type)
                    if existing is not None:
                        raise DuplicateJobError(
                            load_job_view(session, existing, now=now_ms())
                        ) from None
        raise QueueError(f"could not allocate a job id for {pair}:{model_type}; try again")

    # --- cancel, stop, resume --------------------------------------------------------------

    def cancel(self, *, job_id: str, reason: str | None = None) -> CancelResult:
        """Cancel a queued job now, or have the scheduler kill a training one (`cancelling`)."""
        why = (reason or "").strip() or "Cancelled by request"
        now = now_ms()
        outcome: Literal["cancelled", "cancelling"] = "cancelled"
        with read_session(self._url) as session:
            job = store.get_job(session, job_id)
            if job is None:
                raise UnknownJobError(job_id)
            status = job.status
            if status not in (QUEUED, TRAINING):
                raise JobNotCancellableError(load_job_view(session, job, now=now))
        if status == QUEUED and not transitions.cancel_queued(
            self._url, job_id=job_id, reason=why, now=now
        ):
            status = TRAINING  # it started between our read and our write
        if status == TRAINING:
            if not transitions.request_cancel(self._url, job_id=job_id, reason=why, now=now):
                return self.cancel(job_id=job_id, reason=reason)  # it ended meanwhile
            outcome = "cancelling"
        logger.info("job %s %s: %s", job_id, outcome, why)
        self._changed()
        message = (
            f"Training job {job_id} cancelled"
            if outcome == "cancelled"
            else f"Training job {job_id} is being stopped"
        )
        return CancelResult(
            message=message,
            job_id=job_id,
            status=outcome,
            reason=why,
            timestamp=now,
        )

    def emergency_stop(self, *, reason: str | None = None) -> EmergencyStopResult:
        """Kill the running training, cancel every queued job, pause dispatch until resume."""
        why = (reason or "").strip() or EMERGENCY_STOP_REASON
        now = now_ms()
        training, queued = transitions.emergency_stop(self._url, reason=why, now=now)
        logger.warning("emergency stop: stopping %s, cancelled %s", training, queued)
        self._changed()
        return EmergencyStopResult(
            message=f"Emergency stop: {len(training)} training stopped, {len(queued)} queued "
            "job(s) cancelled; dispatch paused until resume",
            stopped_jobs=training,
            cancelled_jobs=queued,
            paused=True,
            timestamp=now,
        )

    def resume(self) -> ResumeResult:
        """Let the scheduler dispatch again after an emergency stop."""
        now = now_ms()
        transitions.set_paused(self._url, paused=False, reason=None, now=now)
        logger.info("dispatch resumed")
        self._changed()
        return ResumeResult(message="Training dispatch resumed", paused=False, timestamp=now)

    def clear_cooldowns(
        self, *, pair: str | None = None, model_type: str | None = None
    ) -> ClearCooldownsResult:
        """Clear the cooldown of one pair (and model type), or every cooldown."""
        now = now_ms()
        symbol: str | None = None
        kind: str | None = None
        if pair is not None or model_type is not None:
            if pair is None:
                raise QueueValidationError(
                    "clear-cooldowns takes a pair with a model type, a pair alone, or nothing",
                    field="pair",
                    value=None,
                )
            symbol, kind = validate_target(pair, model_type or "lstm", pairs=self._settings.pairs)
        cleared = [
            ClearedCooldown(pair=p, model_type=m)
            for p, m in transitions.clear_cooldowns(
                self._url, pair=symbol, model_type=kind if model_type is not None else None, now=now
            )
        ]
        self._changed()
        what = ", ".join(f"{c.pair}:{c.model_type}" for c in cleared) or "none were active"
        return ClearCooldownsResult(
            message=f"Cleared {len(cleared)} cooldown(s): {what}", cleared=cleared, timestamp=now
        )


def _enqueue_message(pair: str, model_type: str, verdict: CanTrain) -> str:
    message = f"Training job queued for {pair}:{model_type}"
    if verdict.allowed:
        return message
    if verdict.reason == COOLDOWN:
        minutes = verdict.cooldown_remaining_minutes
        return f"{message}; it starts when the cooldown ends in {minutes} minute(s)"
    if verdict.reason.startswith(PAUSED):
        return f"{message}; it starts when dispatch is resumed"
    return f"{message}; it starts in its turn ({verdict.reason})"
