"""Prediction history rows written off the request path, in batches, by one daemon thread.

A request that computed a prediction only appends its records to an in-memory queue; the
writer waits `delay_s` for more to accumulate, then inserts them in one transaction (under
load that is one insert per half second instead of one per prediction, and the inserts do not
compete with the requests for the interpreter). `flush()` writes at once and waits until
everything submitted so far is stored (tests, shutdown). A crash loses at most the rows of
the last moment, never an answer.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence

from service.predictor import PredictionRecord

logger = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_PENDING = 100_000  # beyond this (the database is down for long) the oldest rows are dropped


class HistoryWriter:
    """Batches `PredictionRecord`s into `store(records)` calls from a background thread."""

    def __init__(
        self, *, store: Callable[[Sequence[PredictionRecord]], None], delay_s: float = 0.5
    ) -> None:
        self._store = store
        self.delay_s = delay_s
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
            overflow = len(self._pending) - MAX_PENDING
            for _ in range(max(overflow, 0)):
                self._pending.popleft()
                self._done += 1
                self.dropped += 1
            # Wake the writer only when it has something new to wait on: the first record of a
            # batch starts its delay, a full batch ends it. Waking it on every record would
            # cost the request path a thread switch each time.
            if was_empty or len(self._pending) >= MAX_BATCH:
                self._cond.notify_all()

    def start(self) -> None:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
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
            try:
                self._store(batch)
            except Exception:  # the history must not take the writer down
                logger.exception("could not store %d prediction history rows", len(batch))
                self.dropped += len(batch)
            with self._cond:
                self._done += len(batch)
                self._cond.notify_all()
