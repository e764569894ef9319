"""Errors of the queue's domain API; each maps to one HTTP status in the REST layer."""

from __future__ import annotations

from pipelines.queue.schemas import JobView


class QueueError(Exception):
    """Base of every error the domain API raises on purpose."""


class QueueValidationError(QueueError, ValueError):
    """A bad pair, model type, priority or training parameter (HTTP 400); nothing changed."""

    def __init__(self, message: str, *, field: str, value: object) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class DuplicateJobError(QueueError):
    """The pair and model type already have a queued or training job (HTTP 409)."""

    def __init__(self, existing: JobView) -> None:
        super().__init__(
            f"{existing.pair}:{existing.model_type} already has a {existing.status} job: "
            f"{existing.id}"
        )
        self.existing = existing


class UnknownJobError(QueueError, LookupError):
    """No job has this id (HTTP 404)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"unknown job id {job_id!r}")
        self.job_id = job_id


class JobNotCancellableError(QueueError):
    """The job has already ended (HTTP 409); its final state is unchanged."""

    def __init__(self, job: JobView) -> None:
        super().__init__(f"job {job.id} has already ended ({job.status}); nothing to cancel")
        self.job = job


class QueueFullError(QueueError):
    """The queue already holds its most queued jobs, `ML_MAX_QUEUED_JOBS` (HTTP 429)."""

    def __init__(self, *, queued: int, limit: int) -> None:
        super().__init__(
            f"the training queue is full: {queued} jobs queued, at most {limit} allowed "
            "(ML_MAX_QUEUED_JOBS); retry when some have started"
        )
        self.queued = queued
        self.limit = limit
