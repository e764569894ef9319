"""`Chores`: periodic work that survives its failures, backs off, recovers and says so."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from pipelines.periodic import Chores, backoff


@pytest.fixture
def chores() -> Iterator[Chores]:
    instance = Chores(retry_base_s=0.05, retry_cap_s=0.2)
    yield instance
    instance.shutdown()


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_a_failing_chore_retries_sooner_than_its_interval_and_recovers(chores: Chores) -> None:
    calls: list[float] = []

    def flaky() -> None:
        calls.append(time.monotonic())
        if len(calls) <= 3:
            raise ConnectionError("postgresql://tbml:hunter2@db:5432/x is down")

    chores.add("flaky", flaky, interval_s=30, run_now=True)
    chores.start()
    wait_for(lambda: chores.statuses()["flaky"].consecutive_failures == 3)
    status = chores.statuses()["flaky"]
    assert chores.failing() == ["flaky"]
    assert status.last_error is not None
    assert "hunter2" not in status.last_error
    assert status.last_error.startswith("ConnectionError: ")
    assert status.next_retry is not None
    wait_for(lambda: not chores.statuses()["flaky"].failing)
    recovered = chores.statuses()["flaky"]
    assert recovered.last_success is not None
    assert recovered.consecutive_failures == 0
    assert chores.failing() == []
    # Three retries within seconds, although the interval is 30 s; each wait longer than the last.
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert len(calls) == 4
    assert gaps[0] < gaps[2] < 5


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff(n, base=1, cap=10) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    with pytest.raises(ValueError, match="failures must be at least 1, got 0"):
        backoff(0, base=1, cap=10)


def test_trigger_runs_a_chore_now_and_once_more_when_it_is_running(chores: Chores) -> None:
    started = threading.Event()
    release = threading.Event()
    runs: list[int] = []

    def slow() -> None:
        runs.append(1)
        started.set()
        release.wait(5)

    chores.add("slow", slow, interval_s=3600)
    chores.start()
    chores.trigger("slow")
    assert started.wait(5)
    chores.trigger("slow")  # while running: must not be lost
    chores.trigger("slow")  # nor run twice at once
    release.set()
    wait_for(lambda: len(runs) == 2)
    time.sleep(0.2)
    assert len(runs) == 2


def test_unknown_chore_and_bad_interval_are_refused_by_name(chores: Chores) -> None:
    with pytest.raises(KeyError, match="no chore 'nope'"):
        chores.trigger("nope")
    with pytest.raises(ValueError, match="interval_s of chore 'x' must be > 0, got 0"):
        chores.add("x", lambda: None, interval_s=0)


def test_recorded_outcomes_of_outside_threads_show_in_statuses(chores: Chores) -> None:
    chores.record("writer", OSError("disk full"), next_retry_s=1)
    assert chores.failing() == ["writer"]
    assert chores.statuses()["writer"].to_dict()["lastError"] == "OSError: disk full"
    chores.record("writer", None)
    assert chores.failing() == []
