"""One scheduler's dispatcher: start the next job, watch its child, record how it ended.

`tick()` never waits for a training: it starts a child and returns, and later ticks (woken
as soon as the child exits) settle it. So the scheduler's single executor thread stays free
for retries and the other jobs while a training runs for an hour.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.exc import IntegrityError

from pipelines import tracking
from pipelines.db import read_session
from pipelines.lifecycle import registry
from pipelines.periodic import backoff
from pipelines.queue import runner, store, transitions
from pipelines.queue.clock import now_ms
from pipelines.queue.runner import Child
from pipelines.queue.schemas import JobView
from pipelines.queue.tables import CANCELLED, FAILED, INTERRUPTED, SUCCEEDED, TRAINING
from pipelines.queue.transitions import Ending
from pipelines.queue.views import load_job_view
from pipelines.redact import redact, secret_values
from pipelines.settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Running:
    """The attempt this scheduler's child is running."""

    job_id: str
    attempt: int
    max_attempts: int
    run_id: str
    child: Child
    started_ms: int = 0
    killed: bool = False
    timed_out: bool = False


def backoff_ms(settings: Settings, *, attempt: int) -> int:
    """Delay before retrying after failed attempt number `attempt`: doubling, capped."""
    return int(
        backoff(
            max(1, attempt),
            base=settings.training_retry_backoff_ms,
            cap=settings.training_retry_backoff_max_ms,
        )
    )


class Dispatcher:
    """Starts, watches and settles the trainings of one scheduler (one at a time)."""

    def __init__(
        self,
        settings: Settings,
        *,
        worker_id: str,
        holds_lease: Callable[[], bool],
        schedule_retry: Callable[[str, int], None],
        on_finished: Callable[[JobView], None],
        on_child_exit: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._url = settings.database_url
        self.worker_id = worker_id
        self._holds_lease = holds_lease
        self._schedule_retry = schedule_retry
        self._on_finished = on_finished
        self._on_child_exit = on_child_exit
        self._lock = threading.RLock()
        self._running: Running | None = None
        # Infrastructure failures per job in a row (they set the backoff, not the attempts).
        self._outages: dict[str, int] = {}

    @property
    def running(self) -> Running | None:
        """The attempt in progress here, if any."""
        return self._running

    def tick(self) -> None:
        """Settle a finished or cancelled child, then start the next job if the slot is free."""
        with self._lock:
            if not self._holds_lease():
                return
            if self._running is not None and not self._settle():
                return
            self.recover()
            self._start_next()

    # --- settling the running child --------------------------------------------------------

    def _settle(self) -> bool:
        """Finish the running attempt if its child ended or must be killed; True if done."""
        running = self._running
        assert running is not None
        code = running.child.process.poll()
        with read_session(self._url) as session:
            job = store.get_job(session, running.job_id)
        if code is not None and job is not None and job.cancel_requested_at is not None:
            running.killed = True  # it ended by itself after the cancel: still a cancel
        if code is None:
            if job is None or job.status != TRAINING or job.worker_id != self.worker_id:
                # A successor recovered this job while we lost the lease: end the child
                # and leave the row to whoever has it.
                logger.warning("job %s is no longer ours; killing its child", running.job_id)
                runner.stop_child(running.child, job_id=running.job_id)
                self._running = None
                return True
            overdue = now_ms() - running.started_ms > self._settings.training_timeout_ms
            if job.cancel_requested_at is None and not overdue:
                return False
            pids = runner.stop_child(running.child, job_id=running.job_id)
            if job.cancel_requested_at is None:
                running.timed_out = True
                logger.warning("job %s timed out: killed pids %s", running.job_id, pids)
            else:
                running.killed = True
                logger.info("job %s cancelled: killed pids %s", running.job_id, pids)
            code = running.child.process.returncode
        self._finish(running, code)
        self._running = None
        return True

    def _finish(self, running: Running, code: int | None) -> None:
        now = now_ms()
        if running.killed:
            self._finish_cancelled(running, code, now)
        elif code == 0:
            self._finish_succeeded(running, now)
        else:
            error = f"exit code {code}"
            if running.timed_out:
                error = f"timed out after {_duration(self._settings.training_timeout_ms)}"
            tail = runner.log_tail(running.child.log_path)
            self._finish_failed(
                running.job_id,
                attempt=running.attempt,
                max_attempts=running.max_attempts,
                run_id=running.run_id,
                error=f"{error}; log tail:\n{tail}" if tail else error,
                code=code,
            )

    def _finish_cancelled(self, running: Running, code: int | None, now: int) -> None:
        with read_session(self._url) as session:
            job = store.get_job(session, running.job_id)
            reason = (job.cancel_reason if job else None) or "cancelled"
        self._mlflow(tracking.force_status, self._settings, running.run_id, status="KILLED")
        self._mlflow(registry.undo_versions_of_run, self._settings, running.run_id)
        transitions.finish_attempt(
            self._url,
            job_id=running.job_id,
            worker_id=self.worker_id,
            attempt=running.attempt,
            ending=Ending(CANCELLED, code, reason),
            now=now,
        )
        self._notify(running.job_id)

    def _finish_succeeded(self, running: Running, now: int) -> None:
        try:
            report = tracking.read_report(self._settings, running.run_id)
        except Exception as error:
            # The training ran; the tracking store did not answer. Not the training's fault.
            self._finish_failed(
                running.job_id,
                attempt=running.attempt,
                max_attempts=running.max_attempts,
                run_id="",
                error=f"could not read the report: {error}",
                code=0,
                counted=False,
            )
            return
        self._mlflow(tracking.end_run, self._settings, running.run_id, status="FINISHED")
        transitions.finish_attempt(
            self._url,
            job_id=running.job_id,
            worker_id=self.worker_id,
            attempt=running.attempt,
            ending=Ending(SUCCEEDED, 0),
            now=now,
            report=report,
            cooldown_ms=self._settings.training_cooldown_ms,
        )
        logger.info("job %s attempt %d succeeded", running.job_id, running.attempt)
        self._notify(running.job_id)

    def _finish_failed(
        self,
        job_id: str,
        *,
        attempt: int,
        max_attempts: int,
        run_id: str,
        error: str,
        code: int | None,
        counted: bool = True,
    ) -> None:
        """Record a failed attempt and requeue the job while it may retry.

        `counted=False` is an infrastructure failure (the tracking store or the database did
        not answer): the attempt is not used up, and the backoff doubles over the outages of
        this job in a row instead.
        """
        now = now_ms()
        error = redact(error, secrets=secret_values(self._settings))
        report = None
        if run_id:
            self._mlflow(tracking.end_run, self._settings, run_id, status="FAILED")
            if counted:
                # The data it failed on (its `data_range`, if it got that far): the retraining
                # policy waits for new candles rather than retrain on the same ones.
                report = self._mlflow(tracking.read_report, self._settings, run_id)
        retry_at = None
        if not counted:
            outages = self._outages[job_id] = self._outages.get(job_id, 0) + 1
            retry_at = now + backoff_ms(self._settings, attempt=outages)
        elif attempt < max_attempts:
            retry_at = now + backoff_ms(self._settings, attempt=attempt)
        moved = transitions.finish_attempt(
            self._url,
            job_id=job_id,
            worker_id=self.worker_id,
            attempt=attempt,
            ending=Ending(FAILED, code, error),
            now=now,
            requeue_at=retry_at,
            report=report,
            cooldown_ms=None if retry_at is not None else self._settings.training_cooldown_ms,
            counted=counted,
        )
        if not moved:
            return
        if retry_at is not None:
            first_line = error.splitlines()[0] if error else "failed"
            logger.warning(
                "job %s attempt %d failed (%s)%s; retry at %d",
                job_id,
                attempt,
                first_line,
                "" if counted else ", not counted",
                retry_at,
            )
            self._schedule_retry(job_id, retry_at)
        else:
            logger.error("job %s failed after %d attempts", job_id, attempt)
            self._notify(job_id)

    # --- starting the next job -------------------------------------------------------------

    def _start_next(self) -> None:
        now = now_ms()
        with read_session(self._url) as session:
            paused, _ = store.pause_state(session)
            job = None if paused else store.select_next(session, now=now)
        if job is None:
            return
        try:
            attempt = transitions.claim(self._url, job_id=job.id, worker_id=self.worker_id, now=now)
        except IntegrityError:
            # The unique index on `training` refused: another training holds the slot.
            logger.warning("job %s not started: another job is training", job.id)
            return
        if attempt is None:
            return
        log_path = runner.log_dir(self._settings) / f"{job.id}.attempt-{attempt}.log"
        run_id = ""
        try:
            experiment_id, run_id = tracking.create_job_run(
                self._settings,
                job_id=job.id,
                attempt=attempt,
                pair=job.pair,
                model_type=job.model_type,
                requested_by=job.requested_by,
            )
            transitions.record_launch(
                self._url,
                job_id=job.id,
                worker_id=self.worker_id,
                attempt=attempt,
                run_id=run_id,
                log_path=str(log_path),
            )
            command = runner.build_command(
                self._settings,
                experiment_id=experiment_id,
                run_id=run_id,
                pair=job.pair,
                model_type=job.model_type,
                params=job.params,
            )
            child = runner.launch(
                self._settings, command=command, job_id=job.id, attempt=attempt, log_path=log_path
            )
        except Exception as error:
            logger.exception("job %s attempt %d could not start", job.id, attempt)
            # Nothing of the training ran: the tracking store, the database or the machine
            # failed, so the attempt does not count.
            self._finish_failed(
                job.id,
                attempt=attempt,
                max_attempts=job.max_attempts,
                run_id=run_id,
                error=f"could not start: {error}",
                code=None,
                counted=False,
            )
            return
        self._outages.pop(job.id, None)
        self._running = Running(job.id, attempt, job.max_attempts, run_id, child, now_ms())
        threading.Thread(
            target=self._watch, args=(child,), name=f"tbml-child-{child.pid}", daemon=True
        ).start()
        transitions.record_launch(
            self._url,
            job_id=job.id,
            worker_id=self.worker_id,
            attempt=attempt,
            pid=child.pid,
            pid_started_at=child.started_at,
        )

    def _watch(self, child: Child) -> None:
        child.process.wait()
        self._on_child_exit()

    # --- recovery and shutdown -------------------------------------------------------------

    def recover(self) -> list[str]:
        """Settle `training` rows that no child of ours runs: their scheduler is gone.

        Only the lease holder calls this, so such a row's scheduler crashed or lost the lease:
        its child (if alive) is killed, its run ended FAILED, the attempt recorded
        `interrupted`, and the job requeued while it has attempts left.
        """
        with self._lock:
            if self._running is not None:
                return []
            with read_session(self._url) as session:
                orphans = store.training_jobs(session)
            for job in orphans:
                self._recover(job.id)
            return [job.id for job in orphans]

    def _recover(self, job_id: str) -> None:
        with read_session(self._url) as session:
            job = store.get_job(session, job_id)
        if job is None or job.status != TRAINING or job.worker_id is None:
            return
        now = now_ms()
        killed = runner.kill_tree(job.pid, started_at=job.pid_started_at, job_id=job.id)
        runner.wait_gone(killed)
        requeue_at: int | None = None
        if job.cancel_requested_at is not None:
            if job.run_id:
                self._mlflow(tracking.force_status, self._settings, job.run_id, status="KILLED")
                self._mlflow(registry.undo_versions_of_run, self._settings, job.run_id)
            ending = Ending(CANCELLED, None, job.cancel_reason or "cancelled")
        else:
            if job.run_id:
                self._mlflow(tracking.end_run, self._settings, job.run_id, status="FAILED")
            ending = Ending(
                INTERRUPTED,
                None,
                f"interrupted: scheduler {job.worker_id} stopped during attempt {job.attempts}",
            )
            if job.attempts < job.max_attempts:
                requeue_at = now
        moved = transitions.finish_attempt(
            self._url,
            job_id=job.id,
            worker_id=job.worker_id,
            attempt=job.attempts,
            ending=ending,
            now=now,
            requeue_at=requeue_at,
        )
        if moved:
            logger.warning(
                "recovered job %s (%s, killed pids %s)%s",
                job.id,
                ending.error,
                sorted(p.pid for p in killed),
                ", requeued" if requeue_at is not None else "",
            )
            if requeue_at is None:
                self._notify(job.id)

    def abandon(self, reason: str) -> None:
        """Kill our running child and requeue its job as `interrupted` (shutdown, lost lease)."""
        with self._lock:
            running = self._running
            if running is None:
                return
            runner.stop_child(running.child, job_id=running.job_id)
            self._running = None
            now = now_ms()
            self._mlflow(tracking.end_run, self._settings, running.run_id, status="FAILED")
            requeue_at = now if running.attempt < running.max_attempts else None
            transitions.finish_attempt(
                self._url,
                job_id=running.job_id,
                worker_id=self.worker_id,
                attempt=running.attempt,
                ending=Ending(INTERRUPTED, running.child.process.returncode, reason),
                now=now,
                requeue_at=requeue_at,
            )
            logger.warning("job %s interrupted: %s", running.job_id, reason)

    # --- helpers ---------------------------------------------------------------------------

    def _notify(self, job_id: str) -> None:
        with read_session(self._url) as session:
            job = store.get_job(session, job_id)
            view = load_job_view(session, job, now=now_ms()) if job is not None else None
        if view is not None:
            self._on_finished(view)

    @staticmethod
    def _mlflow(fn: Callable[..., T], *args: object, **kwargs: object) -> T | None:
        """Call an MLflow helper; a tracking-store failure must not stop the job's bookkeeping."""
        try:
            return fn(*args, **kwargs)
        except Exception:
            logger.exception("MLflow call %s failed", getattr(fn, "__name__", fn))
            return None


def _duration(ms: int) -> str:
    """`6 h`, `90 s`, `1500 ms`: a timeout in words."""
    if ms % 3_600_000 == 0:
        return f"{ms // 3_600_000} h"
    if ms % 60_000 == 0:
        return f"{ms // 60_000} min"
    if ms % 1_000 == 0:
        return f"{ms // 1_000} s"
    return f"{ms} ms"
