"""The TTL cache behind the prediction, feature and model-status caches."""

from __future__ import annotations

import threading
import time

import pytest

from service.caches import TTLCache


def test_entry_is_served_until_its_ttl_then_dropped() -> None:
    cache: TTLCache[str] = TTLCache(name="t", ttl_ms=100)
    cache.put("k", "v")

    hit = cache.get("k")
    assert hit is not None
    assert hit.value == "v"
    assert 0 <= hit.age_ms < 100
    time.sleep(0.12)
    assert cache.get("k") is None
    assert len(cache) == 0
    assert cache.stats() == {"size": 0, "hits": 1, "misses": 1}


def test_lookups_that_are_told_not_to_count_leave_the_counters_alone() -> None:
    cache: TTLCache[int] = TTLCache(name="t", ttl_ms=10_000)
    assert cache.get("a", count_miss=False) is None
    cache.put("a", 1)
    assert cache.get("a", count_hit=False) is not None

    assert (cache.hits, cache.misses) == (0, 0)


def test_full_cache_evicts_expired_entries_first_then_the_oldest() -> None:
    cache: TTLCache[int] = TTLCache(name="t", ttl_ms=10_000, max_entries=3)
    for key in "abc":
        cache.put(key, 1)
    cache.put("d", 1)

    assert cache.get("a") is None
    assert all(cache.get(k) is not None for k in "bcd")
    assert len(cache) == 3


def test_zero_ttl_caches_nothing() -> None:
    cache: TTLCache[int] = TTLCache(name="t", ttl_ms=0)
    cache.put("a", 1)

    assert cache.get("a") is None


def test_least_recently_used_entry_is_evicted_when_full() -> None:
    cache: TTLCache[int] = TTLCache(name="t", ttl_ms=10_000, max_entries=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") is not None
    cache.put("c", 3)

    assert cache.get("b") is None
    assert cache.get("a") is not None
    assert cache.get("c") is not None


def test_hit_reports_the_age_of_the_entry() -> None:
    cache: TTLCache[int] = TTLCache(name="t", ttl_ms=10_000)
    cache.put("a", 1)
    time.sleep(0.05)

    hit = cache.get("a")
    assert hit is not None
    assert 50 <= hit.age_ms < 10_000


def test_concurrent_writers_and_readers_count_every_lookup() -> None:
    cache: TTLCache[int] = TTLCache(name="t", ttl_ms=10_000, max_entries=64)
    rounds, workers = 2_000, 8

    def work(offset: int) -> None:
        for i in range(rounds):
            key = (offset + i) % 100
            if cache.get(key) is None:
                cache.put(key, i)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert cache.hits + cache.misses == rounds * workers
    assert len(cache) <= 64


@pytest.mark.parametrize(("ttl_ms", "max_entries", "named"), [(-1, 10, "ttl_ms -1"), (10, 0, "0")])
def test_bad_bounds_are_refused_naming_the_value(ttl_ms: int, max_entries: int, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        TTLCache(name="t", ttl_ms=ttl_ms, max_entries=max_entries)
