"""The dispatch lease (a database row) and the database's own one-training rule."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from pipelines.db import SQLITE_BUSY_TIMEOUT_S, write_session
from pipelines.queue import lease, transitions
from pipelines.queue.api import TrainingQueue
from pipelines.queue.clock import now_ms
from pipelines.queue.tables import TrainingJob
from pipelines.settings import Settings


def test_only_one_scheduler_holds_the_lease_until_it_expires(queue_settings: Settings) -> None:
    url = queue_settings.database_url
    now = now_ms()
    assert lease.acquire(url, holder="a", ttl_ms=1_000, now=now)
    assert not lease.acquire(url, holder="b", ttl_ms=1_000, now=now + 500)
    assert lease.acquire(url, holder="a", ttl_ms=1_000, now=now + 600)  # renewal
    assert not lease.acquire(url, holder="b", ttl_ms=1_000, now=now + 1_500)
    assert lease.acquire(url, holder="b", ttl_ms=1_000, now=now + 1_600)  # a's expired
    assert lease.current(url).holder == "b"
    assert not lease.acquire(url, holder="a", ttl_ms=1_000, now=now + 1_700)


def test_a_second_scheduler_takes_the_lease_only_once_it_has_expired(
    queue_settings: Settings,
) -> None:
    url = queue_settings.database_url
    assert lease.acquire(url, holder="a", ttl_ms=60_000)
    assert not lease.acquire(url, holder="b", ttl_ms=60_000)  # not expired: refused
    assert lease.acquire(url, holder="a", ttl_ms=300)  # a's renewal, now expiring soon
    assert not lease.acquire(url, holder="b", ttl_ms=60_000)
    expires_at = lease.current(url).expires_at
    while lease.database_now(url) <= expires_at:
        time.sleep(0.05)
    assert lease.acquire(url, holder="b", ttl_ms=60_000)  # expired: taken
    assert lease.current(url).holder == "b"
    assert not lease.acquire(url, holder="a", ttl_ms=60_000)


def test_lease_times_come_from_the_database_clock_not_the_hosts(
    queue_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = queue_settings.database_url
    before = lease.database_now(url)
    assert lease.acquire(url, holder="a", ttl_ms=60_000)
    assert before + 60_000 <= lease.current(url).expires_at <= lease.database_now(url) + 60_000
    # A host whose clock runs an hour ahead still sees a's lease as unexpired.
    skewed = time.time() + 3600
    monkeypatch.setattr(time, "time", lambda: skewed)
    monkeypatch.setattr(time, "time_ns", lambda: int(skewed * 1e9))
    assert not lease.acquire(url, holder="b", ttl_ms=60_000)
    assert lease.current(url).holder == "a"


def test_sqlite_busy_timeout_is_under_a_third_of_the_default_lease() -> None:
    default_lease_ms = Settings.model_fields["scheduler_lease_ms"].default
    assert default_lease_ms / 3 > SQLITE_BUSY_TIMEOUT_S * 1000


def test_lease_ttl_must_be_positive(queue_settings: Settings) -> None:
    with pytest.raises(ValueError, match="ttl_ms must be > 0, got 0"):
        lease.acquire(queue_settings.database_url, holder="a", ttl_ms=0)


def test_released_lease_is_free_at_once(queue_settings: Settings) -> None:
    url = queue_settings.database_url
    now = now_ms()
    assert lease.acquire(url, holder="a", ttl_ms=60_000, now=now)
    assert not lease.release(url, holder="b")
    assert lease.release(url, holder="a")
    assert lease.acquire(url, holder="b", ttl_ms=60_000, now=now + 1)


def test_many_schedulers_racing_for_the_lease_give_one_holder(queue_settings: Settings) -> None:
    url = queue_settings.database_url
    now = now_ms()
    winners: list[str] = []
    barrier = threading.Barrier(20)

    def race(name: str) -> None:
        barrier.wait()
        if lease.acquire(url, holder=name, ttl_ms=60_000, now=now):
            winners.append(name)

    threads = [threading.Thread(target=race, args=(f"s{i}",)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert lease.current(url).holder == winners[0]


def test_a_scheduler_without_the_lease_cannot_claim_a_job(
    queue: TrainingQueue, queue_settings: Settings
) -> None:
    url = queue_settings.database_url
    job_id = queue.enqueue(pair="BTC").job_id
    assert lease.acquire(url, holder="holder", ttl_ms=60_000, now=now_ms())
    assert transitions.claim(url, job_id=job_id, worker_id="intruder", now=now_ms()) is None
    assert transitions.claim(url, job_id=job_id, worker_id="holder", now=now_ms()) == 1


def test_a_paused_queue_cannot_be_claimed(queue: TrainingQueue, queue_settings: Settings) -> None:
    url = queue_settings.database_url
    queue.emergency_stop()
    job_id = queue.enqueue(pair="BTC").job_id
    assert lease.acquire(url, holder="holder", ttl_ms=60_000, now=now_ms())
    assert transitions.claim(url, job_id=job_id, worker_id="holder", now=now_ms()) is None
    queue.resume()
    assert transitions.claim(url, job_id=job_id, worker_id="holder", now=now_ms()) == 1


def test_the_database_refuses_a_second_training_job(
    queue: TrainingQueue, queue_settings: Settings
) -> None:
    url = queue_settings.database_url
    first = queue.enqueue(pair="BTC").job_id
    second = queue.enqueue(pair="ETH").job_id
    assert lease.acquire(url, holder="holder", ttl_ms=60_000, now=now_ms())
    assert transitions.claim(url, job_id=first, worker_id="holder", now=now_ms()) == 1
    with pytest.raises(IntegrityError):
        transitions.claim(url, job_id=second, worker_id="holder", now=now_ms())
    # Even a raw UPDATE that skips our code is refused by the partial unique index.
    with pytest.raises(IntegrityError), write_session(url) as session:
        session.execute(
            update(TrainingJob).where(TrainingJob.id == second).values(status="training")
        )
