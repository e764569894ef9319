"""Prediction history rows written off the request path, in batches, by one daemon thread.

A request that computed a prediction only appends its records to an in-memory queue; the
writer waits `delay_s` for more to accumulate, then inserts them in one transaction (under
load that is one insert per half second instead of one per prediction, and the inserts do not
compete with the requests for the interpreter). `flush()` writes at once and waits until
everything submitted so far is stored (tests, shutdown). A crash loses at most the rows of
the last moment, never an answer.

A batch the database refuses (it is down) goes back to the front of the queue and is retried
after an exponential backoff (capped), so an outage loses nothing until `MAX_PENDING` rows wait
(then the oldest go, counted in `dropped`). Each outcome is reported to `on_outcome` (health
shows the writer as failing meanwhile). The thread is supervised: should its loop itself raise,
it is restarted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from pipelines.periodic import backoff
from service.predictor import PredictionRecord

logger = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_PENDING = 100_000  # beyond this (the database is down for long) the oldest rows are dropped
RETRY_BASE_S = 0.5
RETRY_CAP_S = 30.0


class HistoryWriter:
    """Batches `PredictionRecord`s into `store(records)` calls from a background thread."""

    def __init__(
        self,
        *,
        store: Callable[[Sequence[PredictionRecord]], None],
        delay_s: float = 0.5,
        on_outcome: Callable[[BaseException | None, float | None], None] | None = None,
        retry_base_s: float = RETRY_BASE_S,
        retry_cap_s: float = RETRY_CAP_S,
    ) -> None:
        self._store = store
        self.delay_s = delay_s
        self._on_outcome = on_outcome
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        self.failures = 0
        self._flushing = 0
        self._pending: deque[PredictionRecord] = deque()
        self._cond = threading.Condition()
        self._submitted = 0
        self._done = 0
        self._stop = False
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def submit(self, records: Sequence[PredictionRecord]) -> None:
        """Queue records for storage; returns at once."""
        if not records:
            return
        with self._cond:
            was_empty = not self._pending
            self._pending.extend(records)
            self._submitted += len(records)
            self._drop_overflow()
            # Wake the writer only when it has something new to wait on: the first record of a
            # batch starts its delay, a full batch ends it. Waking it on every record would
            # cost the request path a thread switch each time.
            if was_empty or len(self._pending) >= MAX_BATCH:
                self._cond.notify_all()

    def _drop_overflow(self) -> None:
        # Under self._cond.
        for _ in range(max(len(self._pending) - MAX_PENDING, 0)):
            self._pending.popleft()
            self._done += 1
            self.dropped += 1

    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(
                target=self._supervise, name="history-writer", daemon=True
            )
            self._thread.start()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every record submitted before this call is stored (or dropped)."""
        with self._cond:
            target = self._submitted
            self._flushing += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self._done >= target, timeout=timeout)
            finally:
                self._flushing -= 1

    def stop(self, timeout: float = 30.0) -> None:
        """Store what is pending, then end the thread."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    def _supervise(self) -> None:
        while True:
            try:
                self._run()
                return
            except Exception as error:  # a bug in the loop must not end the history for good
                logger.exception("the history writer's loop failed; restarting it")
                self._report(error, self.retry_base_s)
                time.sleep(self.retry_base_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stop)
                if not self._pending:
                    return  # stopping with nothing left
                self._cond.wait_for(
                    lambda: self._stop or self._flushing > 0 or len(self._pending) >= MAX_BATCH,
                    timeout=self.delay_s,
                )
                batch = [self._pending.popleft() for _ in range(min(len(self._pending), MAX_BATCH))]
                stopping = self._stop
            try:
                self._store(batch)
            except Exception as error:  # the history must not take the writer down
                self._failed(batch, error, stopping=stopping)
                continue
            if self.failures:
                logger.info("prediction history writes recovered after %d failures", self.failures)
            self.failures = 0
            self._report(None, None)
            with self._cond:
                self._done += len(batch)
                self._cond.notify_all()

    def _failed(self, batch: list[PredictionRecord], error: Exception, *, stopping: bool) -> None:
        self.failures += 1
        delay = backoff(self.failures, base=self.retry_base_s, cap=self.retry_cap_s)
        logger.warning(
            "could not store %d prediction history rows (%d failures in a row), retrying in "
            "%.1f s: %s: %s",
            len(batch),
            self.failures,
            delay,
            type(error).__name__,
            str(error).splitlines()[0][:200] if str(error) else "",
        )
        self._report(error, delay)
        with self._cond:
            if stopping:  # shutting down: one more try was all there was time for
                self._done += len(batch)
                self.dropped += len(batch)
                self._cond.notify_all()
                return
            self._pending.extendleft(reversed(batch))
            self._drop_overflow()
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._stop, timeout=delay)

    def _report(self, error: BaseException | None, retry_in_s: float | None) -> None:
        if self._on_outcome is None:
            return
        try:
            self._on_outcome(error, retry_in_s)
        except Exception:
            logger.exception("the history writer's outcome callback failed")
