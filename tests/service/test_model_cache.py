"""The production-model cache: hot swap under load, refusals, failed loads, local copies."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.model_cache import ModelCache
from tests.conftest import free_port
from tests.service.conftest import (
    LiveServer,
    Trained,
    edit_json,
    make_settings,
    register_variant,
    registry,
    set_production,
    wait_until,
)

REFRESH_MS = 500


def test_hot_swap_under_load_answers_every_request_from_the_old_or_the_new_version(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    settings = make_settings(tmp_path, trained, model_refresh_interval_ms=REFRESH_MS)
    server = serve(settings)
    models = server.state.models
    new = register_variant(settings, tmp_path)
    answers: list[tuple[int, Any, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                try:
                    response = client.get("/api/predictions/BTC")
                    version = response.json().get("modelVersion")
                    answers.append((response.status_code, version, models.refresh_count))
                except BaseException as exc:  # a failed request is the finding
                    errors.append(exc)
                    return

    client = threading.Thread(target=hammer)
    client.start()
    try:
        wait_until(lambda: len(answers) >= 20)
        refreshes_before = models.refresh_count
        set_production(settings, "BTC-lstm", new)
        moved_at = time.monotonic()
        wait_until(lambda: any(v == new for _, v, _ in answers), timeout=30)
        seen_after = time.monotonic() - moved_at
        count = len(answers)
        wait_until(lambda: len(answers) >= count + 20)
    finally:
        stop.set()
        client.join(timeout=30)

    assert errors == []
    assert {status for status, _, _ in answers} == {200}
    versions = [v for _, v, _ in answers]
    assert set(versions) == {"1", new}
    first_new = versions.index(new)
    # Atomic swap: once the new version answered, the old one never does again.
    assert set(versions[first_new:]) == {new}
    # Within one refresh: the refresh that saw the alias move (at most the one in flight when
    # it moved, then the next) swapped it in.
    assert answers[first_new][2] <= refreshes_before + 2
    assert seen_after < REFRESH_MS / 1000 * 2 + 10  # generous: a loaded machine is slow


def test_refused_feature_set_keeps_the_old_version_and_health_says_why(
    serve: Callable[..., LiveServer],
    tmp_path: Path,
    trained: Trained,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(tmp_path, trained)
    server = serve(settings)
    version = register_variant(
        settings, tmp_path, edit=lambda d: edit_json(d / "feature_spec.json", version="0" * 12)
    )
    set_production(settings, "BTC-lstm", version)
    server.state.models.refresh()

    health = server.client.get("/api/health").json()
    slot = health["models"]["BTC"]["lstm"]
    assert health["status"] == "degraded"
    assert slot["state"] == "refused"
    assert slot["version"] == "1"
    assert slot["failedVersion"] == version
    assert f"version {version} refused" in slot["message"]
    assert "000000000000" in slot["message"]
    assert "still serving version 1" in slot["message"]
    assert server.client.get("/api/predictions/BTC").json()["modelVersion"] == "1"
    refusals = [r for r in caplog.records if r.name == "service.model_cache"]
    assert any(
        r.levelname == "ERROR" and f"refusing BTC-lstm version {version}" in r.getMessage()
        for r in refusals
    )


def test_refused_version_without_an_old_one_falls_back_with_the_refusal(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    settings = make_settings(tmp_path, trained)
    version = register_variant(
        settings, tmp_path, edit=lambda d: edit_json(d / "feature_spec.json", version="0" * 12)
    )
    set_production(settings, "BTC-lstm", version)
    body = serve(settings).client.get("/api/predictions/BTC").json()

    assert body["fallback"] is True
    assert body["reason"].startswith(f"version {version} refused: model features version")


def test_version_that_fails_to_load_keeps_the_old_one_and_health_says_why(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    settings = make_settings(tmp_path, trained)
    server = serve(settings)
    version = register_variant(
        settings, tmp_path, edit=lambda d: (d / "model.onnx").write_bytes(b"not a model")
    )
    set_production(settings, "BTC-lstm", version)
    server.state.models.refresh()

    slot = server.client.get("/api/health").json()["models"]["BTC"]["lstm"]
    assert slot["state"] == "load_failed"
    assert slot["version"] == "1"
    assert slot["failedVersion"] == version
    assert f"version {version} failed to load" in slot["message"]
    assert server.client.get("/api/predictions/BTC").json()["modelVersion"] == "1"


def test_removing_the_production_alias_falls_back(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    settings = make_settings(tmp_path, trained)
    server = serve(settings)
    registry(settings).delete_registered_model_alias("BTC-lstm", "production")
    server.state.models.refresh()

    body = server.client.get("/api/predictions/BTC").json()

    assert body["fallback"] is True
    assert body["reason"] == "BTC-lstm has no version aliased production"


def test_trigger_refreshes_at_once_instead_of_at_the_next_poll(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    settings = make_settings(tmp_path, trained)  # polls every 10 minutes
    server = serve(settings)
    version = register_variant(settings, tmp_path)
    set_production(settings, "BTC-lstm", version)

    server.state.models.trigger()

    wait_until(lambda: server.state.models.get("BTC", "lstm").version == version, timeout=30)


@pytest.mark.slow
def test_finished_training_triggers_a_refresh(
    serve: Callable[..., LiveServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TBML_SMOKE_SECONDS", "0.1")
    monkeypatch.setenv("TBML_SMOKE_TRACK", "0")
    server = serve(
        run_scheduler=True,
        training_entry_point="smoke",
        queue_processing_interval_ms=200,
        scheduler_lease_ms=2_000,
    )
    refreshes = server.state.models.refresh_count
    job = server.client.post("/api/train/BTC/lstm").json()["jobId"]

    wait_until(
        lambda: server.client.get(f"/api/training/job/{job}").json()["status"] == "succeeded",
        timeout=120,
        interval=0.2,
    )

    # Polling is every 10 minutes here: only the training-finished callback can refresh.
    wait_until(lambda: server.state.models.refresh_count > refreshes, timeout=30)


def test_a_restart_serves_the_local_copy_when_the_registry_is_unreachable(
    tmp_path: Path, trained: Trained
) -> None:
    settings = make_settings(tmp_path, trained)
    slots = [("BTC", "lstm"), ("ETH", "lstm")]
    first = ModelCache(
        tracking_uri=settings.tracking_uri, cache_dir=tmp_path / "model-cache", slots=slots
    )
    assert len(first.refresh()) == 2

    nowhere = f"http://127.0.0.1:{free_port()}"  # a tracking server that is not running
    second = ModelCache(tracking_uri=nowhere, cache_dir=tmp_path / "model-cache", slots=slots)
    assert second.load_local() == 2
    second.refresh()

    assert second.get("BTC", "lstm").version == "1"
    status = second.status("BTC", "lstm")
    assert status.state == "registry_unreachable"
    assert status.version == "1"
    assert "unreachable" in status.message


def test_a_steady_refresh_asks_the_registry_once_and_still_sees_a_new_version(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    settings = make_settings(tmp_path, trained)
    server = serve(settings)
    models = server.state.models
    reader = models.reader
    calls: list[str] = []
    searched, asked = reader.alias_versions, reader.production

    def alias_versions() -> dict[str, dict[str, str]]:
        calls.append("search")
        return searched()

    def production(name: str) -> Any:
        calls.append(name)
        return asked(name)

    reader.alias_versions = alias_versions  # type: ignore[method-assign]
    reader.production = production  # type: ignore[method-assign]
    served = {key for key, status in models.statuses().items() if status.state == "loaded"}
    assert served  # the real registry's production versions, one per served slot

    models.refresh()
    assert calls == ["search"]  # nothing changed: one search, no per-slot lookup

    calls.clear()
    version = register_variant(settings, tmp_path)
    set_production(settings, "BTC-lstm", version)
    models.refresh()
    assert calls == ["search", "BTC-lstm"]  # only the slot whose version moved
    assert models.get("BTC", "lstm").version == version
