"""`Chores`: the one mechanism for a process's periodic background work.

Each chore is a job of an in-memory APScheduler 3 `BackgroundScheduler` (coalesce,
`max_instances=1`: a chore never overlaps itself, and runs missed while busy run once). A chore
survives its exceptions: a failure is recorded (its type and a short, redacted message), the
next try comes after an exponential backoff (capped), and the first success returns it to its
interval. `statuses()` is what health shows; `failing()` says whether it is degraded.

What stays outside, and why:
- the dispatcher's own APScheduler (`pipelines.queue.runtime`), whose SQLAlchemy job store keeps
  the dispatcher tick, retries and scheduled retrainings across restarts, and which runs only
  while this process holds the dispatch lease (an in-memory scheduler cannot do either);
- the history writer (`service.history.writer`), a queue consumer rather than a periodic job: it
  stays a thread, and reports its state here through `record()`.
- the dispatcher's per-child watcher thread, which only waits for one training process to end.

One `Chores` per owner: the API process's (`service.state`: database check and migration, model
refresh, outcome filler, retention) and each `TrainingScheduler`'s (lease renewal, takeover), so
`tbml worker` runs the same mechanism without the service.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pipelines.redact import describe_error

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChoreStatus:
    """One chore's state: times in epoch ms, `None` when it has not happened."""

    name: str
    interval_s: float | None
    last_success: int | None = None
    last_error: str | None = None
    last_error_at: int | None = None
    consecutive_failures: int = 0
    next_retry: int | None = None

    @property
    def failing(self) -> bool:
        """Whether its latest run failed."""
        return self.consecutive_failures > 0

    def to_dict(self) -> dict[str, Any]:
        """The health answer's entry (camelCase)."""
        return {
            "state": "failing" if self.failing else "ok",
            "intervalSeconds": self.interval_s,
            "lastSuccess": self.last_success,
            "lastError": self.last_error,
            "lastErrorAt": self.last_error_at,
            "consecutiveFailures": self.consecutive_failures,
            "nextRetry": self.next_retry,
        }


def backoff(failures: int, *, base: float, cap: float) -> float:
    """The wait before try `failures + 1`: `base * 2**(failures - 1)`, at most `cap` (in the
    unit of `base` and `cap`: the chores' seconds, the queue's retry milliseconds)."""
    if failures < 1:
        raise ValueError(f"failures must be at least 1, got {failures}")
    return float(min(cap, base * 2 ** min(failures - 1, 30)))


class Chores:
    """Named periodic chores of one process: `add` them, `start()`, `shutdown()` at exit."""

    def __init__(
        self, *, retry_base_s: float = 1.0, retry_cap_s: float = 60.0, max_workers: int = 4
    ) -> None:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        if retry_base_s <= 0 or retry_cap_s < retry_base_s:
            raise ValueError(
                f"retry_base_s must be > 0 and retry_cap_s >= it, got {retry_base_s}, {retry_cap_s}"
            )
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        # A chore still running when its next interval comes is skipped: expected for the fast
        # ones (the feed, the candle watch), so APScheduler's warning about it is not logged.
        quiet = logging.getLogger("pipelines.periodic.apscheduler")
        quiet.setLevel(logging.ERROR)
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=max_workers)},
            timezone=UTC,
            logger=quiet,
        )
        self._lock = threading.Lock()
        self._status: dict[str, ChoreStatus] = {}
        self._jobs: set[str] = set()
        self._running: set[str] = set()
        self._again: set[str] = set()

    def add(
        self,
        name: str,
        action: Callable[[], object],
        *,
        interval_s: float,
        run_now: bool = False,
        retry_cap_s: float | None = None,
    ) -> None:
        """Run `action()` every `interval_s` (and at once when `run_now`).

        A failure retries after the backoff (at most `retry_cap_s`, default the instance's),
        never later than the chore's own interval would.
        """
        from apscheduler.triggers.interval import IntervalTrigger

        if interval_s <= 0:
            raise ValueError(f"interval_s of chore {name!r} must be > 0, got {interval_s}")
        with self._lock:
            if name in self._jobs:
                raise ValueError(f"chore {name!r} exists already")
            recorded = self._status.get(name)  # an outcome recorded before (a first try)
            self._status[name] = (
                replace(recorded, interval_s=interval_s)
                if recorded
                else ChoreStatus(name=name, interval_s=interval_s)
            )
            self._jobs.add(name)
        cap = min(retry_cap_s or self.retry_cap_s, max(interval_s, self.retry_base_s))
        first = datetime.now(UTC) if run_now else datetime.now(UTC) + timedelta(seconds=interval_s)
        self._scheduler.add_job(
            self._run,
            trigger=IntervalTrigger(seconds=interval_s, timezone=UTC),
            args=[name, action, interval_s, cap],
            id=name,
            name=name,
            next_run_time=first,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )

    def trigger(self, name: str) -> None:
        """Run chore `name` now (if it is running, once more as soon as it ends)."""
        if name not in self._jobs:
            raise KeyError(f"no chore {name!r}; known: {sorted(self._jobs)}")
        with self._lock:
            if name in self._running:
                self._again.add(name)  # `_run` reschedules it when the current run ends
                return
        try:
            self._scheduler.modify_job(name, next_run_time=datetime.now(UTC))
        except Exception:
            logger.debug("trigger of %s ignored: the chores are stopping", name, exc_info=True)

    def start(self) -> None:
        """Start running the chores (idempotent)."""
        if not self._scheduler.running:
            self._scheduler.start()

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop the chores; with `wait`, let a running one finish first."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)

    def record(
        self, name: str, error: BaseException | None, *, next_retry_s: float | None = None
    ) -> None:
        """Record an outcome of `name` (chores recorded from outside, such as a thread's)."""
        now = int(time.time() * 1000)
        with self._lock:
            old = self._status.get(name) or ChoreStatus(name=name, interval_s=None)
            if error is None:
                new = replace(old, last_success=now, consecutive_failures=0, next_retry=None)
            else:
                new = replace(
                    old,
                    last_error=describe_error(error),
                    last_error_at=now,
                    consecutive_failures=old.consecutive_failures + 1,
                    next_retry=None if next_retry_s is None else now + int(next_retry_s * 1000),
                )
            self._status[name] = new

    def statuses(self) -> dict[str, ChoreStatus]:
        """Every chore's state, by name."""
        with self._lock:
            return dict(self._status)

    def failing(self) -> list[str]:
        """The names of the chores whose latest run failed."""
        return sorted(name for name, status in self.statuses().items() if status.failing)

    def _run(self, name: str, action: Callable[[], object], interval_s: float, cap: float) -> None:
        with self._lock:
            self._running.add(name)
            self._again.discard(name)
        try:
            self._run_once(name, action, interval_s, cap)
        finally:
            with self._lock:
                self._running.discard(name)
                again = name in self._again
                self._again.discard(name)
            if again:
                self._reschedule(name, 0)

    def _run_once(
        self, name: str, action: Callable[[], object], interval_s: float, cap: float
    ) -> None:
        try:
            action()
        except Exception as error:  # a chore must outlive any one failure
            failures = self.statuses()[name].consecutive_failures + 1
            delay = backoff(failures, base=self.retry_base_s, cap=cap)
            logger.warning(
                "chore %s failed (%d in a row), retrying in %.1f s: %s",
                name,
                failures,
                delay,
                describe_error(error),
                exc_info=failures == 1,
            )
            self.record(name, error, next_retry_s=delay)
            self._reschedule(name, delay)
            return
        was_failing = self.statuses()[name].failing
        self.record(name, None)
        if was_failing:
            logger.info("chore %s recovered", name)
            self._reschedule(name, interval_s)

    def _reschedule(self, name: str, delay_s: float) -> None:
        try:
            self._scheduler.modify_job(
                name, next_run_time=datetime.now(UTC) + timedelta(seconds=delay_s)
            )
        except Exception:
            logger.debug("reschedule of %s ignored: the chores are stopping", name, exc_info=True)
