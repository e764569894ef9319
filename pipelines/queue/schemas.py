"""What the domain API returns: pydantic models that serialise to the REST JSON (camelCase).

Shapes follow the original service's README (`GET /api/training/queue`, `POST /api/train/...`);
fields it did not have are additions, never renames. Times are epoch milliseconds.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer
from pydantic.alias_generators import to_camel

# Who asked for a job: a user (api, cli), the first run (bootstrap), or the retraining policy
# (schedule: enough new data; stale: the production version's data is too old; drift: its live
# figures fell below the baselines). pipelines.queue.api.REQUESTERS is this list.
Requester = Literal["api", "cli", "bootstrap", "schedule", "stale", "drift"]


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True, frozen=True
    )

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON-ready dict the REST API sends."""
        return self.model_dump(mode="json")


class CanTrain(ApiModel):
    """Whether a training of a pair and model type could start now, and why not."""

    allowed: bool
    reason: str
    cooldown_remaining_minutes: int | None = None

    @model_serializer(mode="wrap")
    def _omit_missing_cooldown(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        # The original sends cooldownRemainingMinutes only when a cooldown is active.
        if data.get("cooldownRemainingMinutes", 0) is None:
            del data["cooldownRemainingMinutes"]
        return data


class AttemptView(ApiModel):
    """One attempt of a job."""

    attempt: int
    run_id: str | None
    started_at: int
    finished_at: int | None
    outcome: str
    exit_code: int | None
    error: str | None


class JobView(ApiModel):
    """A job with everything the table knows about it."""

    id: str
    pair: str
    model_type: str
    status: str
    priority: int
    params: dict[str, Any]
    # api | cli | bootstrap | schedule | stale | drift (pipelines.queue.api.REQUESTERS)
    requested_by: Requester
    attempts: int
    max_attempts: int
    queued_at: int
    available_at: int
    started_at: int | None
    finished_at: int | None
    duration: int | None
    run_id: str | None
    registered_model: str | None
    registered_version: str | None
    promotion: str | None
    promotion_reason: str | None
    beats_baseline: bool | None
    error: str | None
    cancel_reason: str | None
    cancel_requested: bool
    attempt_history: list[AttemptView]
    # Why the job exists (one sentence; the retraining policy's reason), if it was given.
    reason: str | None = None
    # End of the data its training used (its run's `data_range`), epoch ms, once known.
    data_end: int | None = None


class TrainingProgress(ApiModel):
    """How far a training has come, read from its MLflow run's per-epoch metrics."""

    # held_out: the model judged on the test window; refit: the same on every candle.
    phase: Literal["held_out", "refit"]
    epoch: int  # epochs finished in this phase
    epochs: int | None  # the most it may run (early stopping ends sooner)
    loss: float | None = None  # training loss of the latest epoch
    val_loss: float | None = None  # validation loss of the latest epoch (held_out only)


class ActiveJob(ApiModel):
    """A job that is training now."""

    id: str
    pair: str
    model_type: str
    status: str
    started_at: int
    duration: int
    attempt: int
    run_id: str | None
    cancel_requested: bool
    # The most epochs it may run (its `epochs` parameter or ML_EPOCHS).
    epochs: int | None = None
    progress: TrainingProgress | None = None


class QueuedJob(ApiModel):
    """A job waiting its turn; `queuePosition` is its place in dispatch order."""

    id: str
    pair: str
    model_type: str
    priority: int
    queue_position: int
    queued_for: int
    queued_at: int
    available_at: int
    attempts: int
    requested_by: Requester
    cooldown_remaining_minutes: int | None
    # Why the job exists (the retraining policy's reason), if it was given.
    reason: str | None = None


class ActiveJobs(ApiModel):
    """The `active` block of the queue status."""

    count: int
    jobs: list[ActiveJob]


class QueuedJobs(ApiModel):
    """The `queued` block of the queue status."""

    count: int
    jobs: list[QueuedJob]


class History(ApiModel):
    """Ended jobs: how many, and the most recent first."""

    total: int
    recent: list[JobView]


class CooldownView(ApiModel):
    """An active cooldown."""

    pair: str
    model_type: str
    cooldown_remaining_minutes: int
    ends_at: int


class PolicyDecisionView(ApiModel):
    """The retraining policy's latest decision for a pair and model type, and why."""

    pair: str
    model_type: str
    decided_at: int
    action: Literal["enqueued", "skipped", "off"]
    # The job's requester when it enqueued one (stale, schedule).
    requested_by: Requester | None
    reason: str
    job_id: str | None


class PolicyStatus(ApiModel):
    """Whether the retraining policy runs (`ML_RETRAIN_POLICY`) and its latest decisions."""

    enabled: bool
    decisions: list[PolicyDecisionView]


class QueueStatus(ApiModel):
    """The queue at one moment (the body of `queue` in `GET /api/training/queue`)."""

    active: ActiveJobs
    queued: QueuedJobs
    history: History
    cooldowns: list[CooldownView]
    paused: bool
    paused_reason: str | None
    max_concurrent: int
    cooldown_minutes: float
    # The retraining policy (docs/queue.md, "Retraining policy"): written by the lease holder,
    # shown by every replica.
    policy: PolicyStatus


class QueueStatusResponse(ApiModel):
    """`GET /api/training/queue`."""

    queue: QueueStatus


class EnqueueResult(ApiModel):
    """`POST /api/train/{pair}/{modelType}` (202)."""

    message: str
    job_id: str
    pair: str
    model_type: str
    priority: int
    can_train: CanTrain
    queue_status: QueueStatus
    timestamp: int


class CancelResult(ApiModel):
    """`DELETE /api/training/job/{jobId}`: `cancelling` while the scheduler kills a training."""

    message: str
    job_id: str
    status: Literal["cancelled", "cancelling"]
    reason: str
    timestamp: int


class EmergencyStopResult(ApiModel):
    """`POST /api/training/emergency-stop`."""

    message: str
    stopped_jobs: list[str]
    cancelled_jobs: list[str]
    paused: bool
    timestamp: int


class ResumeResult(ApiModel):
    """`POST /api/training/resume`."""

    message: str
    paused: bool
    timestamp: int


class ClearedCooldown(ApiModel):
    """A cooldown that clear-cooldowns removed."""

    pair: str
    model_type: str


class ClearCooldownsResult(ApiModel):
    """`POST /api/training/clear-cooldowns`."""

    message: str
    cleared: list[ClearedCooldown]
    timestamp: int
