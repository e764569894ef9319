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

logger = logging.getLogger(__name__)

WATCH_CHORE = "candle-watch"
CLIENT_QUEUE = 64
SEND_TIMEOUT_S = 10.0
# Candles that arrived together, before the newest, predicted per look: a week of hourly
# candles (the drift window), about 2 ms each; older ones after a longer outage are not
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
    model_type)` is the predictor's blocking path for the newest candle (cache, history,
    staleness), `predict_past(pair, model_type, candles)` the same for the newest of `candles`
    (a candle that closed before the newest, recorded but not cached); `model_types(pair)` the
    (model type, version) pairs served for the pair now.

    Candles that arrive together (a feed catching up after a stall, a batch ingest) each get
    their prediction, oldest first, up to `CATCH_UP_MAX` per look: N new candles give N
    predictions per served model, on the stream and in the history.

    `challengers(pair)` gives the (model type, version) of the pair's challengers, and
    `predict_shadow(pair, model_type, candles)` a challenger's prediction for the newest of
    `candles`: each new candle gets one per challenger too, recorded in the history as shadow
    and never published (production serves; live outcomes decide between the two).
    """

    def __init__(
        self,
        *,
        pairs: Iterable[str],
        load: Callable[[str], Any],
        model_types: Callable[[str], list[tuple[str, str]]],
        predict: Callable[[str, str], dict[str, Any]],
        publish: Callable[[dict[str, Any]], None],
        predict_past: Callable[[str, str, Any], dict[str, Any]] | None = None,
        challengers: Callable[[str], list[tuple[str, str]]] | None = None,
        predict_shadow: Callable[[str, str, Any], dict[str, Any]] | None = None,
    ) -> None:
        self.pairs = tuple(pairs)
        self._load = load
        self._model_types = model_types
        self._predict = predict
        self._predict_past = predict_past
        self._publish = publish
        self._challengers = challengers
        self._predict_shadow = predict_shadow
        self._seen: dict[tuple[str, str], tuple[Any, str]] = {}
        self._seen_shadow: dict[tuple[str, str], tuple[Any, str]] = {}
        self.shadow_computed = 0
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
            for model_type, version in self._model_types(pair):
                key = (pair, model_type)
                seen = self._seen.get(key)
                if seen == (newest, version):
                    continue
                try:
                    if seen is not None and seen[1] == version and seen[0] < newest:
                        done += self._catch_up(pair, model_type, candles, since=seen[0])
                    body = self._predict(pair, model_type)
                except Exception as error:  # one pair's failure must not stop the others
                    failures[f"{pair}-{model_type}"] = str(error)
                    logger.warning("no prediction for %s %s: %s", pair, model_type, error)
                    continue
                self._seen[key] = (newest, version)
                self._publish(body)
                done += 1
            self._shadow(pair, candles, failures)
        self.computed += done
        self.last_errors = failures
        return done

    def _shadow(self, pair: str, candles: Any, failures: dict[str, str]) -> None:
        """Each challenger's prediction for the candles it has not predicted yet (recorded,
        not published); a new challenger starts at the newest candle."""
        if self._challengers is None or self._predict_shadow is None:
            return
        index = candles.index
        newest = index[-1]
        for model_type, version in self._challengers(pair):
            key = (pair, model_type)
            seen = self._seen_shadow.get(key)
            if seen == (newest, version):
                continue
            if seen is not None and seen[1] == version and seen[0] < newest:
                stamps = list(index[(index > seen[0]) & (index <= newest)][-CATCH_UP_MAX:])
            else:
                stamps = [newest]
            try:
                for stamp in stamps:
                    self._predict_shadow(pair, model_type, candles.loc[:stamp])
                    self.shadow_computed += 1
            except Exception as error:
                failures[f"{pair}-{model_type}-challenger"] = str(error)
                logger.warning("no shadow prediction for %s %s: %s", pair, model_type, error)
                continue
            self._seen_shadow[key] = (newest, version)

    def _catch_up(self, pair: str, model_type: str, candles: Any, *, since: Any) -> int:
        """Predict and publish the candles after `since` and before the newest, oldest first."""
        if self._predict_past is None:
            return 0
        index = candles.index
        missed = index[(index > since) & (index < index[-1])][-CATCH_UP_MAX:]
        for stamp in missed:
            self._publish(self._predict_past(pair, model_type, candles.loc[:stamp]))
        return len(missed)
