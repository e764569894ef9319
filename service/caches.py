"""Time-bounded caches with hit and miss counts (prediction, feature and model-status caches).

Entries are keyed by everything that makes an answer stale (pair, model version, newest candle),
so a new candle or a new production version is never answered from an old entry; the TTL only
bounds how long an unchanged answer is reused. Storage, expiry and eviction are cachetools'
`TTLCache` (expired entries go first, then the least recently used); this module adds the
counters, the age of a hit, and the lock cachetools leaves to its callers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import cachetools

V = TypeVar("V")


@dataclass(frozen=True)
class CacheHit(Generic[V]):
    value: V
    age_ms: int


class TTLCache(Generic[V]):
    """A cache with a time-to-live per entry, a size bound, and counters; thread-safe."""

    def __init__(self, *, name: str, ttl_ms: int, max_entries: int = 1024) -> None:
        if ttl_ms < 0:
            raise ValueError(f"cache {name!r}: ttl_ms {ttl_ms} is negative (0 caches nothing)")
        if max_entries < 1:
            raise ValueError(f"cache {name!r}: max_entries {max_entries} must be at least 1")
        self.name = name
        self.ttl_s = ttl_ms / 1000.0
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        # Values carry their insertion time: cachetools keeps only the expiry, and a hit
        # reports its age (`cacheAge`).
        self._data: cachetools.TTLCache[Hashable, tuple[float, V]] = cachetools.TTLCache(
            maxsize=max_entries, ttl=self.ttl_s, timer=time.monotonic
        )
        self._lock = threading.Lock()

    def get(
        self, key: Hashable, *, count_hit: bool = True, count_miss: bool = True
    ) -> CacheHit[V] | None:
        """The live entry for `key`, or None.

        The flags let a request that looks more than once (a quick look on the event loop,
        then again in the worker thread) count exactly one hit or one miss.
        """
        with self._lock:
            entry = self._data.get(key)
            if entry is not None:
                stored, value = entry
                if count_hit:
                    self.hits += 1
                return CacheHit(value, int((time.monotonic() - stored) * 1000))
            if count_miss:
                self.misses += 1
            return None

    def note(self, *, hits: int = 0, misses: int = 0) -> None:
        """Count lookups made without counting (a probe that turned into an answer)."""
        with self._lock:
            self.hits += hits
            self.misses += misses

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            self._data[key] = (time.monotonic(), value)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        with self._lock:
            self._data.expire()
            return len(self._data)

    def stats(self) -> dict[str, int]:
        size = len(self)
        with self._lock:
            return {"size": size, "hits": self.hits, "misses": self.misses}
