"""`/metrics` for Prometheus, and the request-body limit (both in service/metrics.py)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import LiveServer

LIMIT = 4096


def test_metrics_expose_latency_cache_counters_queue_length_and_versions(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    for _ in range(3):
        server.client.get("/api/predictions/BTC")
    server.client.post("/api/train/ETH")

    response = server.client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    route = (("method", "GET"), ("route", "/api/predictions/{pair}"), ("status", "200"))
    assert samples[("tbml_http_request_duration_seconds_count", route)] == 3
    bucket = (("le", "+Inf"), *route)
    assert samples[("tbml_http_request_duration_seconds_bucket", bucket)] == 3
    # The three requests are one miss and two hits at least; the candle watcher computes the
    # newest candle's prediction through the same cache, adding its own hit or miss. The
    # exported counters are the cache's own.
    hits = samples[("tbml_cache_hits_total", (("cache", "predictions"),))]
    misses = samples[("tbml_cache_misses_total", (("cache", "predictions"),))]
    assert hits >= 2
    assert misses >= 1
    assert (hits, misses) == (
        server.state.prediction_cache.hits,
        server.state.prediction_cache.misses,
    )
    assert samples[("tbml_queue_jobs", (("state", "queued"),))] == 1
    assert samples[("tbml_queue_jobs", (("state", "training"),))] == 0
    assert samples[("tbml_model_version", (("model_type", "lstm"), ("pair", "BTC")))] == 1
    assert samples[("tbml_model_version", (("model_type", "lstm"), ("pair", "XMR")))] == 0


@pytest.fixture
def limited(serve: Callable[..., LiveServer]) -> LiveServer:
    return serve(max_body_bytes=LIMIT)


def test_oversized_body_is_413_naming_the_setting(limited: LiveServer) -> None:
    response = limited.client.post(
        "/api/predictions/BTC",
        content=b'{"candles": [' + b" " * (LIMIT + 10) + b"]}",
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 413
    assert response.json() == {
        "error": f"request body over {LIMIT} bytes (ML_MAX_BODY_BYTES)",
        "status": 413,
    }


def test_oversized_body_without_content_length_is_413(limited: LiveServer) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"candles": ['
        for _ in range(10):
            yield b" " * 1024
        yield b"]}"

    response = limited.client.post(
        "/api/predictions/BTC", content=chunks(), headers={"content-type": "application/json"}
    )

    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert "ML_MAX_BODY_BYTES" in response.json()["error"]


def test_oversized_training_request_is_413_and_queues_nothing(limited: LiveServer) -> None:
    response = limited.client.post(
        "/api/train/BTC/lstm",
        content=b'{"epochs": 1' + b" " * LIMIT + b"}",
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 413
    queue = limited.client.get("/api/training/queue").json()["queue"]
    assert queue["queued"]["count"] == 0


def test_body_under_the_limit_passes(limited: LiveServer) -> None:
    response = limited.client.post("/api/train/BTC/lstm", json={"epochs": 1})

    assert response.status_code == 202


def test_server_answers_413_before_reading_a_huge_declared_body(limited: LiveServer) -> None:
    # The client declares 1 GB and sends nothing: the answer must not wait for the body.
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/predictions/BTC HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
        )
        answer = sock.recv(4096)

    assert answer.startswith(b"HTTP/1.1 413")
