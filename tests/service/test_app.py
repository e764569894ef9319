"""The app as a whole: OpenAPI and docs, and a real `tbml serve` process without TensorFlow."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.settings import Settings
from tests.service.conftest import LiveServer, Trained, make_settings


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


# Started by `tbml serve` in a thread of a fresh interpreter; prints what it saw, then exits.
CHILD = """
import json, os, sys, threading, time
import httpx
from tbml.cli import app

port = sys.argv[1]
args = ["serve", "--port", port, "--no-scheduler", "--log-level", "warning"]
threading.Thread(target=lambda: app(args, standalone_mode=False), daemon=True).start()
base = f"http://127.0.0.1:{port}"
deadline = time.monotonic() + 120
while True:
    try:
        if httpx.get(base + "/api/health").status_code == 200:
            break
    except httpx.HTTPError:
        if time.monotonic() > deadline:
            raise
    time.sleep(0.1)
answer = httpx.get(base + "/api/predictions/BTC").json()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"tensorflow", "keras", "tf2onnx"})
print(json.dumps({"answer": answer, "heavy": heavy}), flush=True)
os._exit(0)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
def test_tbml_serve_predicts_without_ever_importing_tensorflow(
    tmp_path: Path, trained: Trained
) -> None:
    settings = make_settings(tmp_path, trained)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ML_", "MLFLOW_", "TRADING_"))
    }
    env.update(
        {
            "ML_DATA_DIR": str(settings.data_dir),
            "ML_BUNDLED_DATA_DIR": str(settings.bundled_data_dir),
            "MLFLOW_TRACKING_URI": settings.tracking_uri,
            "ML_ARTIFACT_ROOT": str(settings.artifact_root),
            "ML_DATABASE_URL": settings.database_url,
        }
    )
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(_free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert child.returncode == 0, child.stderr[-3000:]
    seen = json.loads(child.stdout.strip().splitlines()[-1])
    assert seen["answer"]["modelVersion"] == "1"
    assert seen["answer"]["fallback"] is False
    assert seen["heavy"] == []
    assert "on http://127.0.0.1:" in child.stderr
