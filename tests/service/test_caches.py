"""The TTL cache behind the prediction, feature and model-status caches."""

from __future__ import annotations

import time

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
