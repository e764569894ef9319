"""Time-bounded caches with hit and miss counts (prediction, feature and model-status caches).

Entries are keyed by everything that makes an answer stale (pair, model version, newest candle),
so a new candle or a new production version is never answered from an old entry; the TTL only
bounds how long an unchanged answer is reused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True)
class CacheHit(Generic[V]):
    value: V
    age_ms: int


class TTLCache(Generic[V]):
    """A dict with a time-to-live per entry, a size bound, and counters; thread-safe."""

    def __init__(self, *, name: str, ttl_ms: int, max_entries: int = 1024) -> None:
        self.name = name
        self.ttl_s = ttl_ms / 1000.0
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._data: dict[Hashable, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(
        self, key: Hashable, *, count_hit: bool = True, count_miss: bool = True
    ) -> CacheHit[V] | None:
        """The live entry for `key`, or None.

        The flags let a request that looks more than once (a quick look on the event loop,
        then again in the worker thread) count exactly one hit or one miss.
        """
        now = time.monotonic()
        with self._lock:
            entry = self._data.get(key)
            if entry is not None:
                stored, value = entry
                age = now - stored
                if age < self.ttl_s:
                    if count_hit:
                        self.hits += 1
                    return CacheHit(value, int(age * 1000))
                del self._data[key]
            if count_miss:
                self.misses += 1
            return None

    def note(self, *, hits: int = 0, misses: int = 0) -> None:
        """Count lookups made without counting (a probe that turned into an answer)."""
        with self._lock:
            self.hits += hits
            self.misses += misses

    def put(self, key: Hashable, value: V) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._data) >= self.max_entries and key not in self._data:
                self._evict(now)
            self._data[key] = (now, value)

    def _evict(self, now: float) -> None:
        expired = [k for k, (stored, _) in self._data.items() if now - stored >= self.ttl_s]
        for key in expired:
            del self._data[key]
        if len(self._data) >= self.max_entries:
            # Oldest insertion first: dicts keep insertion order.
            del self._data[next(iter(self._data))]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        now = time.monotonic()
        with self._lock:
            return sum(1 for stored, _ in self._data.values() if now - stored < self.ttl_s)

    def stats(self) -> dict[str, int]:
        return {"size": len(self), "hits": self.hits, "misses": self.misses}
