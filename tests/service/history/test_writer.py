"""The history writer: rows leave the request path and still all reach the database."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pandas as pd

from service.history.writer import HistoryWriter
from service.predictor import PredictionRecord


def _records(n: int) -> list[PredictionRecord]:
    stamp = pd.Timestamp("2023-12-30T18:00:00Z")
    return [
        PredictionRecord("BTC", "lstm", "1", stamp, 1, 0.6, "up", "HOLD", False, i)
        for i in range(n)
    ]


def test_every_submitted_record_is_stored_in_batches_by_flush() -> None:
    stored: list[list[PredictionRecord]] = []
    writer = HistoryWriter(store=lambda batch: stored.append(list(batch)))
    writer.start()
    try:
        for _ in range(50):
            writer.submit(_records(3))
        assert writer.flush(timeout=10)
    finally:
        writer.stop()

    assert sum(len(b) for b in stored) == 150
    assert [r.created_at for b in stored for r in b] == [i for _ in range(50) for i in range(3)]


def test_stop_stores_what_is_pending() -> None:
    gate = threading.Event()
    stored: list[PredictionRecord] = []

    def slow(batch: Sequence[PredictionRecord]) -> None:
        gate.wait(5)
        stored.extend(batch)

    writer = HistoryWriter(store=slow)
    writer.start()
    writer.submit(_records(2))
    writer.submit(_records(3))
    gate.set()
    writer.stop()

    assert len(stored) == 5


def test_a_failing_batch_is_retried_and_not_lost() -> None:
    calls: list[int] = []

    def flaky(batch: Sequence[PredictionRecord]) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("database is locked")

    outcomes: list[str | None] = []
    writer = HistoryWriter(
        store=flaky,
        retry_base_s=0.05,
        on_outcome=lambda error, _retry: outcomes.append(type(error).__name__ if error else None),
    )
    writer.start()
    try:
        writer.submit(_records(1))
        assert writer.flush(timeout=10)
        writer.submit(_records(2))
        assert writer.flush(timeout=10)
    finally:
        writer.stop()

    assert calls == [1, 1, 2]  # the refused batch went again, after its backoff
    assert writer.dropped == 0
    assert outcomes == ["RuntimeError", None, None]
