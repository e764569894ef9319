"""New candle -> new predictions, at once, pushed: the candle watcher and the prediction hub.

Every API process runs the watcher as a chore (`candle-watch`, every
`ML_CANDLE_WATCH_INTERVAL`): it looks at each pair's newest candle in the shared candle store (a
`stat` per file while nothing changed) and, when it changed or a new version is served,
computes every served model's prediction for that candle once (cached and recorded in the
history, once per version and candle) and publishes it. The feed in this process (when it holds
the lease) triggers the chore as soon as it appended, so a replica without the feed notices new
candles within one watch interval and a process with it at once.

The hub fans published predictions out to `/ws/predictions` clients. Each client has a small
queue of its own: a slow client loses its oldest pending messages (never blocks another), and one
that does not take a message within `SEND_TIMEOUT_S` is disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipelines.candles.store import CandlesNotFoundError
from pipelines.tracking import CHALLENGER_ALIAS, PRODUCTION_ALIAS

logger = logging.getLogger(__name__)

WATCH_CHORE = "candle-watch"
CLIENT_QUEUE = 64
SEND_TIMEOUT_S = 10.0
# Candles that arrived together, before the newest, predicted per look: a week of hourly
# candles, about 2 ms each; older ones after a longer outage are not
# predicted (nobody was told them, and a week of outcomes is what the live figures need).
CATCH_UP_MAX = 168


def message(body: dict[str, Any]) -> bytes:
    """A pushed prediction: the JSON of `GET /api/predictions/{pair}`."""
    return orjson.dumps({**body, "responseTime": 0.0, "timestamp": int(time.time() * 1000)})


@dataclass(eq=False)
class Subscriber:
    """One connected client: the pairs it asked for and its pending messages."""

    pairs: frozenset[str]
    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(CLIENT_QUEUE))
    dropped: int = 0

    def offer(self, data: bytes) -> None:
        """Queue `data`; when full, the oldest pending message goes (counted in `dropped`)."""
        while True:
            try:
                self.queue.put_nowait(data)
                return
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    self.queue.get_nowait()
                    self.dropped += 1


class PredictionHub:
    """The set of WebSocket subscribers; `publish` may be called from any thread."""

    def __init__(self, *, max_connections: int) -> None:
        self.max_connections = max_connections
        self._subscribers: set[Subscriber] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.published = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop that owns the subscribers (the app's, at start-up)."""
        self._loop = loop

    @property
    def connections(self) -> int:
        return len(self._subscribers)

    def subscribe(self, pairs: Iterable[str]) -> Subscriber | None:
        """A new subscriber, or None when `max_connections` are open (on the event loop)."""
        if len(self._subscribers) >= self.max_connections:
            return None
        subscriber = Subscriber(pairs=frozenset(pairs))
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def publish(self, body: dict[str, Any]) -> None:
        """Send `body` to every subscriber of its pair (thread-safe, returns at once)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        data = message(body)
        pair = str(body.get("pair"))
        self.published += 1
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown)
            loop.call_soon_threadsafe(self._fan_out, pair, data)

    def _fan_out(self, pair: str, data: bytes) -> None:
        for subscriber in list(self._subscribers):
            if pair in subscriber.pairs:
                subscriber.offer(data)

    def stats(self) -> dict[str, int]:
        return {
            "connections": len(self._subscribers),
            "maxConnections": self.max_connections,
            "published": self.published,
            "dropped": sum(s.dropped for s in self._subscribers),
        }


class CandleWatcher:
    """Computes and publishes each served model's prediction once per new candle or version.

    `load(pair)` gives the pair's candles (the store's cached frame); `predict(pair,
    model_type, alias)` is the predictor's blocking path for the newest candle (cache, history,
    staleness), `predict_past(pair, model_type, candles, alias)` the same for the newest of
    `candles` (a candle that closed before the newest, recorded but not cached);
    `model_types(pair)` the (model type, version) pairs served for the pair now, and
    `challengers(pair)` those of its challengers.

    Candles that arrive together (a feed catching up after a stall, a batch ingest) each get
    their prediction, oldest first, up to `CATCH_UP_MAX` per look: N new candles give N
    predictions per served model, on the stream and in the history. A challenger gets the same
    predictions, recorded in the history as shadow and never published (production serves;
    live outcomes decide between the two).
    """

    def __init__(
        self,
        *,
        pairs: Iterable[str],
        load: Callable[[str], Any],
        model_types: Callable[[str], list[tuple[str, str]]],
        predict: Callable[[str, str, str], dict[str, Any]],
        publish: Callable[[dict[str, Any]], None],
        predict_past: Callable[[str, str, Any, str], dict[str, Any]] | None = None,
        challengers: Callable[[str], list[tuple[str, str]]] | None = None,
    ) -> None:
        self.pairs = tuple(pairs)
        self._load = load
        self._model_types = model_types
        self._challengers = challengers
        self._predict = predict
        self._predict_past = predict_past
        self._publish = publish
        # (pair, model type, alias) -> (newest candle predicted, version that predicted it)
        self._seen: dict[tuple[str, str, str], tuple[Any, str]] = {}
        self.computed = 0
        self.last_errors: dict[str, str] = {}

    def check(self) -> int:
        """One look at every pair; returns how many predictions were computed and published."""
        done = 0
        failures: dict[str, str] = {}
        for pair in self.pairs:
            try:
                candles = self._load(pair)
            except CandlesNotFoundError as error:
                failures[pair] = str(error)
                continue
            newest = candles.index[-1]
            slots = [(kind, version, PRODUCTION_ALIAS) for kind, version in self._model_types(pair)]
            if self._challengers is not None:
                slots += [
                    (kind, version, CHALLENGER_ALIAS) for kind, version in self._challengers(pair)
                ]
            for model_type, version, alias in slots:
                key = (pair, model_type, alias)
                seen = self._seen.get(key)
                if seen == (newest, version):
                    continue
                served = alias == PRODUCTION_ALIAS
                try:
                    if seen is not None and seen[1] == version and seen[0] < newest:
                        done += self._catch_up(
                            pair, model_type, candles, since=seen[0], alias=alias
                        )
                    body = self._predict(pair, model_type, alias)
                except Exception as error:  # one pair's failure must not stop the others
                    slot = f"{pair}-{model_type}" + ("" if served else f"-{alias}")
                    failures[slot] = str(error)
                    logger.warning("no prediction for %s: %s", slot, error)
                    continue
                self._seen[key] = (newest, version)
                if served:
                    self._publish(body)
                    done += 1
        self.computed += done
        self.last_errors = failures
        return done

    def _catch_up(self, pair: str, model_type: str, candles: Any, *, since: Any, alias: str) -> int:
        """Predict the candles after `since` and before the newest, oldest first; publish those
        of production. Returns how many were published."""
        if self._predict_past is None:
            return 0
        index = candles.index
        missed = index[(index > since) & (index < index[-1])][-CATCH_UP_MAX:]
        for stamp in missed:
            body = self._predict_past(pair, model_type, candles.loc[:stamp], alias)
            if alias == PRODUCTION_ALIAS:
                self._publish(body)
        return len(missed) if alias == PRODUCTION_ALIAS else 0
