"""The app as a whole: OpenAPI and docs, and a real `tbml serve` process without TensorFlow."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipelines.settings import Settings
from tests.service.conftest import LiveServer, Trained, make_settings, serve_in_child


def test_openapi_and_docs_are_served(shared: LiveServer) -> None:
    schema = shared.client.get("/openapi.json").json()
    docs = shared.client.get("/docs")

    assert schema["info"]["title"] == "trading-bot-ml"
    for path in (
        "/api/health",
        "/api/predictions",
        "/api/predictions/{pair}",
        "/api/predictions/{pair}/history",
        "/api/features/{pair}",
        "/api/train/{pair}",
        "/api/train/{pair}/{model_type}",
        "/api/training/queue",
        "/api/training/job/{job_id}",
        "/api/training/emergency-stop",
        "/api/training/resume",
        "/api/training/clear-cooldowns",
        "/api/models/{pair}/status",
        "/api/storage/stats",
        "/api/storage/save",
        "/api/storage/cleanup",
        "/metrics",
    ):
        assert path in schema["paths"], path
    assert docs.status_code == 200
    assert "swagger-ui" in docs.text


def test_the_service_binds_loopback_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HOST", raising=False)
    monkeypatch.delenv("ML_HOST", raising=False)
    assert Settings(_env_file=None).host == "127.0.0.1"
    monkeypatch.setenv("HOST", "0.0.0.0")
    assert Settings(_env_file=None).host == "0.0.0.0"


@pytest.mark.slow
def test_tbml_serve_predicts_without_ever_importing_tensorflow(
    tmp_path: Path, trained: Trained
) -> None:
    child = serve_in_child(make_settings(tmp_path, trained), python=sys.executable)

    assert child.returncode == 0, child.stderr[-3000:]
    seen = json.loads(child.stdout.strip().splitlines()[-1])
    assert seen["answer"]["modelVersion"] == "1"
    assert seen["answer"]["fallback"] is False
    assert seen["heavy"] == []
    assert "on http://127.0.0.1:" in child.stderr
