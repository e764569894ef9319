"""Which job the dispatcher starts next: highest priority, then oldest, if free to start."""

from __future__ import annotations

import time

from sqlalchemy import update

from pipelines.db import read_session, write_session
from pipelines.queue import store, transitions
from pipelines.queue.api import TrainingQueue
from pipelines.queue.clock import now_ms
from pipelines.queue.tables import TrainingJob
from pipelines.settings import Settings


def _next(settings: Settings) -> str | None:
    with read_session(settings.database_url) as session:
        job = store.select_next(session, now=now_ms())
        return job.id if job else None


def _enqueue(queue: TrainingQueue, pair: str, priority: int, model_type: str = "lstm") -> str:
    job_id = queue.enqueue(pair=pair, model_type=model_type, priority=priority).job_id
    time.sleep(0.002)  # distinct queued times
    return job_id


def test_next_job_is_the_highest_priority_then_the_oldest(
    queue: TrainingQueue, queue_settings: Settings
) -> None:
    old_low = _enqueue(queue, "BTC", 7)
    old_high = _enqueue(queue, "ETH", 2)
    new_high = _enqueue(queue, "XMR", 2)
    order = []
    while (job_id := _next(queue_settings)) is not None:
        order.append(job_id)
        queue.cancel(job_id=job_id)
    assert order == [old_high, new_high, old_low]


def test_next_job_skips_pairs_cooling_down(queue: TrainingQueue, queue_settings: Settings) -> None:
    cooling = _enqueue(queue, "BTC", 1)
    free = _enqueue(queue, "ETH", 9)
    with write_session(queue_settings.database_url) as session:
        transitions.start_cooldown(
            session, pair="BTC", model_type="lstm", job_id="x", now=now_ms(), length_ms=60_000
        )
    assert _next(queue_settings) == free
    queue.clear_cooldowns(pair="BTC", model_type="lstm")
    assert _next(queue_settings) == cooling


def test_next_job_waits_for_a_retry_backoff(queue: TrainingQueue, queue_settings: Settings) -> None:
    retrying = _enqueue(queue, "BTC", 1)
    with write_session(queue_settings.database_url) as session:
        session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == retrying)
            .values(available_at=now_ms() + 60_000)
        )
    assert _next(queue_settings) is None
    other = _enqueue(queue, "ETH", 5)
    assert _next(queue_settings) == other
