"""Prometheus metrics at `/metrics`: request latency, cache hits, queue length, model versions.

Each app has its own `CollectorRegistry` (tests build many apps in one process). Request
latency is observed by a pure ASGI middleware (cheaper than `BaseHTTPMiddleware`); everything
else is read from the service state at scrape time, so the request path does no extra work.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.exceptions import HTTPException

ASGIApp = Callable[..., Any]

# Buckets from 0.5 ms: a cached prediction is answered in about a millisecond.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class StateCollector(Collector):
    """Cache counters, queue length and served model versions, read when scraped."""

    def __init__(self, get_state: Callable[[], Any]) -> None:
        self._get_state = get_state

    def collect(self) -> Iterator[Metric]:
        state = self._get_state()
        if state is None:
            return
        hits = CounterMetricFamily("tbml_cache_hits", "Cache hits by cache", labels=["cache"])
        misses = CounterMetricFamily("tbml_cache_misses", "Cache misses by cache", labels=["cache"])
        for name, value in state.cache_hits().items():
            hits.add_metric([name], value)
        for name, value in state.cache_misses().items():
            misses.add_metric([name], value)
        yield hits
        yield misses
        versions = GaugeMetricFamily(
            "tbml_model_version",
            "Registry version served per pair and model type (0 = none)",
            labels=["pair", "model_type"],
        )
        for pair, model_type in state.models.slots:
            served = state.models.get(pair, model_type)
            versions.add_metric([pair, model_type], float(served.version) if served else 0.0)
        yield versions
        swaps = CounterMetricFamily("tbml_model_swaps", "Production models swapped in")
        swaps.add_metric([], state.models.swaps)
        yield swaps
        yield from _feed_metrics(state)
        if state.queue is not None:
            try:
                queue = state.queue.queue_status(history_limit=0).queue
            except Exception:
                return
            length = GaugeMetricFamily(
                "tbml_queue_jobs", "Training jobs by state", labels=["state"]
            )
            length.add_metric(["queued"], queue.queued.count)
            length.add_metric(["training"], queue.active.count)
            yield length


def _feed_metrics(state: Any) -> Iterator[Metric]:
    """Per pair: seconds since the newest candle closed, and the feed's consecutive failures."""
    from pipelines.candles.feed import feed_view

    try:
        feeds = feed_view(state.settings, state.store, now_ms=state.market_now_ms())
    except Exception:
        return
    lag = GaugeMetricFamily(
        "tbml_feed_lag_seconds",
        "Market time since the newest stored candle closed, per pair",
        labels=["pair"],
    )
    failures = GaugeMetricFamily(
        "tbml_feed_consecutive_failures", "Failed feed fetches in a row, per pair", labels=["pair"]
    )
    for pair, view in sorted(feeds.items()):
        if view.get("lagMs") is not None:
            lag.add_metric([pair], view["lagMs"] / 1000)
        failures.add_metric([pair], float(view.get("consecutiveFailures") or 0))
    yield lag
    yield failures
    if state.hub is not None:
        clients = GaugeMetricFamily("tbml_ws_connections", "Open /ws/predictions connections")
        clients.add_metric([], state.hub.connections)
        yield clients


class Metrics:
    """The registry and the latency histogram of one app."""

    def __init__(self, get_state: Callable[[], Any]) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "tbml_http_request_duration_seconds",
            "HTTP request latency by route template",
            labelnames=["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(StateCollector(get_state))


class LatencyMiddleware:
    """Observe each HTTP request's latency under its route template (`/api/predictions/{pair}`)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.latency.labels(scope["method"], template, str(status[0])).observe(
                time.perf_counter() - start
            )


# No route reads a body on these methods, so their requests skip the wrapping.
_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS"})


class BodyLimitMiddleware:
    """Refuse bodies over `limit` bytes with 413 before the app reads them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in _NO_BODY:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    size = 0
                if size > self.limit:
                    await _too_large(send, self.limit)
                    return
        received = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # An HTTPException, so that FastAPI's body parsing passes it on (it turns
                    # any other error into a 400) and the app's handler answers 413.
                    raise BodyTooLargeError(self.limit)
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError:
            if started:
                raise
            await _too_large(send, self.limit)


class BodyTooLargeError(HTTPException):
    """A request body (without a Content-Length, or a lying one) grew past the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_message(limit))


def too_large_message(limit: int) -> str:
    return f"request body over {limit} bytes (ML_MAX_BODY_BYTES)"


async def _too_large(send: Any, limit: int) -> None:
    body = orjson.dumps({"error": too_large_message(limit), "status": 413})
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
